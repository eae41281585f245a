"""Export of corrected cases into a fine-tuning dataset: layout, manifest, versions, safety."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_sevnet import export as ex
from napari_sevnet.errors import InputError
from napari_sevnet.io import load_case
from napari_sevnet.phantom import write_phantom
from napari_sevnet.regions import REGIONS
from training.data import discover_cases


@pytest.fixture()
def case(phantom_dir):
    return load_case(phantom_dir / "phantom_0000")


def model_output(case):
    """A 'model output' that misses a slab of the tumour and adds a blob elsewhere."""
    model = case.regions.copy()
    z = np.nonzero(case.regions[0].any(axis=(1, 2)))[0]
    model[:, z[0] : z[0] + 3] = False
    model[0, 2:5, 2:5, 2:5] = True
    return model


def snapshot(dataset: Path) -> dict:
    """Every visible file's bytes (the lock file and staging folders are not the user's data)."""
    if not dataset.exists():
        return {}
    return {
        str(p.relative_to(dataset)): p.read_bytes()
        for p in sorted(dataset.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(dataset).parts)
    }


def test_export_writes_a_brats_case_and_manifest(case, tmp_path, random_checkpoint):
    model = model_output(case)
    result = ex.export_case(case, case.regions, tmp_path / "ds", model_regions=model, checkpoint=random_checkpoint, annotator="dr x", note="slab fixed")
    folder = tmp_path / "ds" / "phantom_0000"
    assert result.folder == folder and result.version == 1
    for m in ("t1", "t1ce", "t2", "flair"):  # source voxels and affine unchanged: the very bytes
        assert (folder / f"phantom_0000_{m}.nii.gz").read_bytes() == case.paths[m].read_bytes()
    again = load_case(folder)
    assert np.array_equal(again.regions, case.regions)
    assert np.allclose(again.grid.affine, case.grid.affine)

    manifest = ex.read_manifest(tmp_path / "ds")
    (record,) = manifest["cases"]
    assert record["annotator"] == "dr x" and record["note"] == "slab fixed"
    assert record["source"]["files"]["t1"]["sha256"] == ex.sha256_of(case.paths["t1"])
    assert record["checkpoint"]["weights_sha256"] == ex.sha256_of(random_checkpoint.with_suffix(".safetensors"))
    wt = record["edits"]["WT"]
    assert wt["removed_voxels"] == 27
    assert wt["added_voxels"] == int((case.regions[0] & ~model[0]).sum()) > 0
    assert 0.5 < wt["dice_model_vs_corrected"] < 1.0
    assert json.loads((folder / ex.RECORD_NAME).read_text(encoding="utf-8")) == record
    assert [c.case_id for c in discover_cases([tmp_path / "ds"])] == ["phantom_0000"]


def test_a_case_without_t1ce_is_exported_without_one_and_found_for_training_as_such(tmp_path):
    folder = write_phantom(tmp_path / "src", seed=3, shape=(24, 28, 24))
    (folder / f"{folder.name}_t1ce.nii.gz").unlink()
    partial = load_case(folder, allow_missing=True)
    result = ex.export_case(partial, partial.regions, tmp_path / "ds")
    assert not (result.folder / f"{folder.name}_t1ce.nii.gz").exists(), "no volume of zeros standing for a scan never taken"
    assert result.record["sequences"] == ["t1", "t2", "flair"] and "t1ce" not in result.record["files"]
    again = load_case(result.folder, allow_missing=True)
    assert again.missing == ("t1ce",) and np.array_equal(again.regions, partial.regions)
    (ref,) = discover_cases([tmp_path / "ds"])
    assert ref.missing == ("t1ce",)


def test_re_export_adds_a_version_and_replace_removes_the_old_ones(case, tmp_path):
    ds = tmp_path / "ds"
    ex.export_case(case, case.regions, ds)
    smaller = case.regions.copy()
    smaller[:, :, :, : case.shape[2] // 2] = False
    second = ex.export_case(case, smaller, ds)
    assert second.version == 2 and second.folder.name == "phantom_0000_v2"
    assert (ds / "phantom_0000").is_dir(), "version 1 is kept"
    (ref,) = discover_cases([ds])
    assert ref.folder.name == "phantom_0000_v2", "training uses the newest version only"

    third = ex.export_case(case, case.regions, ds, replace=True)
    assert third.version == 3 and third.record["replaces"] == [1, 2]
    assert not (ds / "phantom_0000").exists() and not (ds / "phantom_0000_v2").exists()
    assert [(r["case_id"], r["version"]) for r in ex.read_manifest(ds)["cases"]] == [("phantom_0000", 3)]
    assert ex.export_case(case, case.regions, ds).version == 4, "a replaced version number is never reused"


def test_another_patient_under_a_case_id_already_in_the_dataset_is_refused(case, phantom_dir, tmp_path):
    """Two clinic folders both called 'scans': the second patient would become the first's newest version, the one that trains."""
    ds = tmp_path / "ds"
    ex.export_case(case, case.regions, ds, case_id="scans")
    other = load_case(phantom_dir / "phantom_0001")
    before = snapshot(ds)
    with pytest.raises(InputError, match="shares none of them, so it is another patient.*--case-id"):
        ex.export_case(other, other.regions, ds, case_id="scans")
    assert snapshot(ds) == before
    assert ex.export_case(other, other.regions, ds, case_id="scans_b").version == 1


def test_a_withdrawn_case_leaves_training_keeps_its_files_and_can_be_restored(case, phantom_dir, tmp_path):
    """A wrong patient exported, or a mask found wrong later: take it out of training without losing the record."""
    from napari_sevnet.worklist import exported_cases

    ds = tmp_path / "ds"
    ex.export_case(case, case.regions, ds, case_id="scans")
    assert ex.read_manifest(ds)["format_version"] == 1, "an older napari-sevnet reads a dataset without withdrawals"
    other = load_case(phantom_dir / "phantom_0001")
    ex.export_case(other, other.regions, ds)
    smaller = case.regions.copy()
    smaller[:, :, :, : case.shape[2] // 2] = False
    ex.export_case(case, smaller, ds, case_id="scans")  # version 2
    files = snapshot(ds)

    assert [r["version"] for r in ex.withdraw(ds, "scans", version=2, note="half the tumour missing")] == [2]
    assert {r.case_id: r.folder.name for r in discover_cases([ds])} == {"phantom_0001": "phantom_0001", "scans": "scans"}, "the newest version left trains"
    assert ex.withdraw(ds, "scans", version=2) == [], "withdrawing twice changes nothing"
    ex.withdraw(ds, "scans")
    assert [r.case_id for r in discover_cases([ds])] == ["phantom_0001"]
    manifest = ex.read_manifest(ds)
    assert manifest["format_version"] == 2 and len(manifest["cases"]) == 3
    assert next(r for r in manifest["cases"] if r["version"] == 2)["withdrawn"]["note"] == "half the tumour missing"
    assert {p: b for p, b in snapshot(ds).items() if p != "dataset.json"} == {p: b for p, b in files.items() if p != "dataset.json"}, "no file is deleted"
    assert not exported_cases(ds).holds("phantom_0000", case.paths), "the worklist no longer counts it as done"

    # the right patient under the id the wrong one had is no longer refused
    assert ex.export_case(other, other.regions, ds, case_id="scans").version == 3
    ex.withdraw(ds, "scans", version=3)
    assert [r["version"] for r in ex.restore(ds, "scans", version=1)] == [1]
    assert {r.case_id: r.folder.name for r in discover_cases([ds])}["scans"] == "scans"
    with pytest.raises(InputError, match="lists no case 'nobody'.*phantom_0001, scans"):
        ex.withdraw(ds, "nobody")
    with pytest.raises(InputError, match=r"case scans has no version 9 \(it has \[1, 2, 3\]\)"):
        ex.restore(ds, "scans", version=9)
    with pytest.raises(InputError, match="has no dataset.json"):
        ex.withdraw(tmp_path, "scans")


def test_a_model_gone_since_it_made_the_result_stops_a_command_line_export_but_not_the_docks(case, tmp_path):
    gone = tmp_path / "deleted_run" / "best.json"
    with pytest.raises(InputError, match="checkpoint not found"):  # sevnet-export --checkpoint with a typo: said
        ex.export_case(case, case.regions, tmp_path / "ds", checkpoint=gone)
    result = ex.export_case(case, case.regions, tmp_path / "ds", checkpoint=gone, checkpoint_gone_ok=True)
    record = json.loads((result.folder / ex.RECORD_NAME).read_text(encoding="utf-8"))
    assert record["checkpoint"] == {"path": str(gone.resolve()), "weights_sha256": None, "architecture": None, "gone_at_export": True}


def test_a_listed_case_whose_files_are_gone_stops_training_with_its_name(case, tmp_path):
    """Skipping it would train without a correction someone made, and say nothing."""
    ds = tmp_path / "ds"
    ex.export_case(case, case.regions, ds)
    (ds / "phantom_0000" / "phantom_0000_seg.nii.gz").unlink()
    with pytest.raises(InputError, match=r"phantom_0000: is listed in .*dataset.json but cannot be read \(its mask.*--withdraw phantom_0000 -d"):
        discover_cases([ds])
    ex.withdraw(ds, "phantom_0000")
    with pytest.raises(InputError, match=r"every case its dataset.json lists is withdrawn \(phantom_0000\).*--restore"):
        discover_cases([ds])  # not "no labelled BraTS cases found" in a dataset that holds one


def test_withdraw_and_restore_from_the_command_line(case, tmp_path, capsys):
    from napari_sevnet.cli import export_main

    ds = tmp_path / "ds"
    ex.export_case(case, case.regions, ds)
    assert export_main(["--withdraw", "phantom_0000", "-d", str(ds), "--note", "wrong patient"]) == 0
    assert capsys.readouterr().out.splitlines() == ["withdrew phantom_0000 version 1", "training leaves phantom_0000 out"]
    assert export_main(["--restore", "phantom_0000", "-d", str(ds)]) == 0
    assert capsys.readouterr().out.splitlines() == ["restored phantom_0000 version 1", "training uses phantom_0000 version 1 (phantom_0000)"]
    assert export_main(["--withdraw", "nobody", "-d", str(ds)]) == 2
    assert "lists no case 'nobody'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        export_main(["--withdraw", "phantom_0000", str(ds), "-d", str(ds)])
    with pytest.raises(SystemExit):
        export_main(["-d", str(ds)])


@pytest.mark.parametrize("case_id", ["../evil", "/tmp/evil", "a/b", "..", ".hidden", "a\\b", "runs", "x" * 101, "é"])
def test_case_ids_cannot_escape_the_dataset(case, tmp_path, case_id):
    ds = tmp_path / "ds"
    with pytest.raises(InputError, match="not a valid case id"):
        ex.export_case(case, case.regions, ds, case_id=case_id)
    assert not ds.exists() or snapshot(ds) == {}
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["ds"])


def test_a_case_whose_own_id_cannot_name_a_folder_asks_for_one(case, tmp_path):
    """A clinic's folder is often the patient's name: the message says where to give the dataset's id instead."""
    from dataclasses import replace

    named = replace(case, case_id="Patient Müller é")
    with pytest.raises(InputError, match=r"It is the case's own id.*sevnet-export --case-id, the Export dock's Case id"):
        ex.export_case(named, case.regions, tmp_path / "ds")
    assert ex.export_case(named, case.regions, tmp_path / "ds", case_id="P0001").case_id == "P0001"


def test_foreign_folders_and_broken_manifests_are_refused(case, tmp_path):
    foreign = tmp_path / "my_things"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(InputError, match="not empty and has no dataset.json"):
        ex.export_case(case, case.regions, foreign)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]

    ds = tmp_path / "ds"
    ex.export_case(case, case.regions, ds)
    (ds / ex.MANIFEST_NAME).write_text("{not json", encoding="utf-8")
    with pytest.raises(InputError, match="dataset.json.*unreadable"):
        ex.export_case(case, case.regions, ds)
    with pytest.raises(InputError, match="labels"):
        ds2 = tmp_path / "ds2"
        ex.export_case(case, case.regions, ds2, label_convention="2023")
        ex.export_case(case, case.regions, ds2, label_convention="2021")


def test_a_version_committed_before_a_crash_is_adopted_by_the_next_export(case, tmp_path, monkeypatch):
    """Killed between the folder rename and the manifest write: the next export completes the manifest."""
    ds = tmp_path / "ds"
    ex.export_case(case, case.regions, ds)

    def die(*args):
        raise SystemExit("killed")

    monkeypatch.setattr(ex, "_commit_record", die)
    with pytest.raises(SystemExit):
        ex.export_case(case, case.regions, ds)
    monkeypatch.undo()
    assert [r["version"] for r in ex.read_manifest(ds)["cases"]] == [1]
    assert (ds / "phantom_0000_v2").is_dir()
    third = ex.export_case(case, case.regions, ds)
    assert third.version == 3
    assert [r["version"] for r in ex.read_manifest(ds)["cases"]] == [1, 2, 3]


def test_a_write_error_leaves_the_dataset_as_it_was(case, tmp_path, monkeypatch):
    ds = tmp_path / "ds"
    ex.export_case(case, case.regions, ds)
    before = snapshot(ds)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ex.shutil, "copyfile", disk_full)
    with pytest.raises(InputError, match="No space left on device"):
        ex.export_case(case, case.regions, ds)
    assert snapshot(ds) == before
    assert not [p for p in ds.iterdir() if p.name.startswith(ex.STAGING_PREFIX)]


def test_kill_9_during_an_export_leaves_dataset_and_manifest_as_before(tmp_path):
    source = write_phantom(tmp_path / "src", seed=3, shape=(128, 160, 160))
    ds = tmp_path / "ds"
    code = "import sys; from napari_sevnet.cli import export_main; sys.exit(export_main(sys.argv[1:]))"
    args = [sys.executable, "-c", code, str(source), str(source / f"{source.name}_seg.nii.gz"), "-d", str(ds)]
    assert subprocess.run(args, capture_output=True).returncode == 0
    before = snapshot(ds)
    assert before, "the first export wrote the dataset"

    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not any(p.name.startswith(ex.STAGING_PREFIX) for p in ds.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, "the export ended before it could be killed mid-way"
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert snapshot(ds) == before

    assert subprocess.run(args, capture_output=True).returncode == 0, "the dataset is still usable"
    assert not [p for p in ds.iterdir() if p.name.startswith(ex.STAGING_PREFIX)], "the killed export's leftovers are gone"
    assert [r["version"] for r in ex.read_manifest(ds)["cases"]] == [1, 2]


def test_decathlon_cases_are_split_into_brats_files(tmp_path, case):
    from napari_sevnet.io import MODALITIES, MSD_CHANNELS

    src = tmp_path / "msd"
    src.mkdir()
    channels = [case.grid.from_canonical(case.image[MODALITIES.index(c)]) for c in MSD_CHANNELS]
    nib.save(nib.Nifti1Image(np.stack(channels, -1).astype(np.float32), case.grid.affine), src / "BRATS_001.nii.gz")
    msd = load_case(src / "BRATS_001.nii.gz")
    result = ex.export_case(msd, case.regions, tmp_path / "ds")
    again = load_case(result.folder)
    assert np.array_equal(again.image, msd.image)
    assert np.allclose(again.grid.affine, msd.grid.affine)


def test_export_cli(case, tmp_path, phantom_dir):
    from napari_sevnet.cli import export_main
    from napari_sevnet.io import write_mask

    model_mask = write_mask(model_output(case), case.grid, tmp_path / "model_seg.nii.gz")
    folder = phantom_dir / "phantom_0000"
    code = export_main([str(folder), str(case.paths["seg"]), "-d", str(tmp_path / "ds"), "--model-mask", str(model_mask), "--annotator", "A"])
    assert code == 0
    record = ex.read_manifest(tmp_path / "ds")["cases"][0]
    assert record["annotator"] == "A" and record["edits"]["WT"]["removed_voxels"] == 27

    other = phantom_dir / "phantom_0001" / "phantom_0001_seg.nii.gz"  # same shape, so try a wrong-shape mask
    wrong = tmp_path / "wrong_seg.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((10, 10, 10), np.uint8), np.eye(4)), wrong)
    before = snapshot(tmp_path / "ds")
    result = subprocess.run([str(Path(sys.executable).parent / "sevnet-export"), str(folder), str(wrong), "-d", str(tmp_path / "ds")], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "wrong_seg.nii.gz" in result.stderr and "shape" in result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(tmp_path / "ds") == before
    assert other.exists()
    assert set(REGIONS) == set(record["edits"])

    # a correction painted in ITK-SNAP with its one default label: not taken as necrosis alone (WT = TC, no ET) into training
    painted = tmp_path / "corrected.nii.gz"
    nib.save(nib.Nifti1Image((np.asanyarray(nib.load(case.paths["seg"]).dataobj) > 0).astype(np.uint8), nib.load(case.paths["seg"]).affine), painted)
    result = subprocess.run([str(Path(sys.executable).parent / "sevnet-export"), str(folder), str(painted), "-d", str(tmp_path / "ds")], capture_output=True, text=True)
    assert result.returncode == 2 and "corrected.nii.gz: label map holds label 1 alone" in result.stderr and "--mask-labels" in result.stderr
    assert snapshot(tmp_path / "ds") == before
    named = tmp_path / "painted" / f"{case.case_id}_seg.nii.gz"  # the same under a BraTS name, which says its convention
    named.parent.mkdir()
    named.write_bytes(painted.read_bytes())
    result = subprocess.run([str(Path(sys.executable).parent / "sevnet-export"), str(folder), str(named), "-d", str(tmp_path / "ds")], capture_output=True, text=True)
    assert result.returncode == 2 and "holds label 1 alone, read by its BraTS name as necrosis" in result.stderr and "--mask-labels 2021" in result.stderr
    assert snapshot(tmp_path / "ds") == before
    assert export_main([str(folder), str(painted), "-d", str(tmp_path / "ds"), "--mask-labels", "2021"]) == 0, "said to be necrosis alone: taken as such"
