"""Recovery copies of corrections: a crash, a closed viewer or a deleted layer loses nothing a clinician painted."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil

import numpy as np
import pytest

from napari_sevnet import recovery
from napari_sevnet.io import load_case
from napari_sevnet.phantom import write_phantom

KEY = "0123456789abcdef0123456789abcdef"


def test_a_copy_comes_back_for_the_same_unchanged_scans_only(tmp_path, recovery_folder):
    case = load_case(write_phantom(tmp_path, seed=4, shape=(32, 40, 32)))
    regions = case.regions.copy()
    regions[:, 3:6, 3:6, 3:6] = True
    recovery.save(KEY, regions, case_id=case.case_id, name=f"{case.case_id} (run 2)", paths=case.paths)
    (found,) = recovery.pending(case.paths)
    assert found.key == KEY and found.name == "phantom_0004 (run 2)"
    np.testing.assert_array_equal(found.regions(), regions)
    assert recovery.pending({**case.paths, "seg": tmp_path / "elsewhere_seg.nii.gz"}), "the mask file is not what identifies the scans"

    other = load_case(write_phantom(tmp_path / "b", seed=5, shape=(32, 40, 32)))
    assert recovery.pending(other.paths) == [], "another case's scans"
    flair = case.paths["flair"]
    stat = flair.stat()
    os.utime(flair, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert recovery.pending(case.paths) == [], "a scan rewritten since: the copy may not fit it"
    os.utime(flair, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert len(recovery.pending(case.paths)) == 1

    # the patient's folder moved (or renamed) since: the same files, found where they are now
    moved = tmp_path / "archive" / "patient 4"
    moved.parent.mkdir()
    folder = flair.parent.rename(moved)
    moved_paths = {role: folder / path.name for role, path in case.paths.items()}
    assert [r.key for r in recovery.pending(moved_paths)] == [KEY], "a moved folder finds its copy"
    shutil.copytree(folder, tmp_path / "copied", copy_function=shutil.copy)  # a plain copy (new times: maybe not the same scans) does not
    assert recovery.pending({role: tmp_path / "copied" / path.name for role, path in case.paths.items()}) == []
    folder.rename(flair.parent)

    record = recovery_folder / f"{KEY}.json"
    data = json.loads(record.read_text())
    data["saved_at"] = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=recovery.KEEP_DAYS + 1)).isoformat()
    record.write_text(json.dumps(data))
    assert recovery.pending(case.paths) == [] and not record.exists(), f"dropped after {recovery.KEEP_DAYS} days"

    recovery.save(KEY, regions, case_id=case.case_id, name="x", paths=case.paths)
    recovery.discard(KEY)
    recovery.flush()
    assert recovery.pending(case.paths) == [] and not list(recovery_folder.iterdir())


def test_sevnet_recovery_lists_the_copies_writes_one_as_a_mask_without_napari_and_discards_them(tmp_path, recovery_folder, capsys):
    """A copy holds a clinician's corrections and names the patient's scans: listed, rescued as a NIfTI when napari will not
    start, deleted on purpose; every refusal names the file and the problem."""
    import nibabel as nib

    from napari_sevnet.cli import recovery_main
    from napari_sevnet.io import read_segmentation

    case = load_case(write_phantom(tmp_path / "cases", seed=4, shape=(32, 40, 32)))
    regions = case.regions.copy()
    regions[:, 3:6, 3:6, 3:6] = True
    recovery.save(KEY, regions, case_id=case.case_id, name=f"{case.case_id} (run 2)", paths=case.paths,
                  interactions={"brush": {"edits": 3, "voxels": 81, "undone": 0}, "learned click": {"edits": 2, "voxels": 900, "undone": 1}})
    other = "fedcba9876543210fedcba9876543210"
    recovery.save(other, case.regions, case_id=case.case_id, name=f"{case.case_id} (run 3)", paths=case.paths)
    assert recovery_main([]) == 0
    listed = capsys.readouterr().out
    assert f"2 recovery copies in {recovery_folder}" in listed
    assert "01234567" in listed and "phantom_0004 (run 2)" in listed and "5 edit(s) (brush 3, learned click 2)" in listed and "scans: as they were" in listed

    out = tmp_path / "rescued" / "mask.nii.gz"
    assert recovery_main(["--save", "012345", "-o", str(out)]) == 0
    rescued, _ = read_segmentation(out, case.grid, case.reference)
    np.testing.assert_array_equal(rescued, regions)
    assert np.allclose(nib.load(out).affine, nib.load(case.reference).affine), "on the scans' own grid"
    assert recovery_main(["--save", "012345", "-o", str(out)]) == 2 and "already exists; refusing to overwrite" in capsys.readouterr().err
    assert recovery_main(["--save", "0123", "-o", str(out)]) == 2 and "'0123' is not a copy's key" in capsys.readouterr().err

    flair = case.paths["flair"]
    stat = flair.stat()
    os.utime(flair, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert recovery_main(["--save", "012345", "-o", str(out), "--overwrite"]) == 0
    assert f"its flair scan {flair.resolve()} changed after the copy was made" in capsys.readouterr().err, "written, with a warning"
    os.utime(flair, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    t1 = case.paths["t1"]
    t1.rename(t1.with_name("moved.nii.gz"))
    assert recovery_main(["--save", "012345", "-o", str(tmp_path / "again.nii.gz")]) == 2
    assert "are gone from where the copy was made" in capsys.readouterr().err and not (tmp_path / "again.nii.gz").exists()
    t1.with_name("moved.nii.gz").rename(t1)

    assert recovery_main(["--discard", "abcdef"]) == 2 and "no recovery copy's key starts with abcdef" in capsys.readouterr().err
    assert recovery_main(["--discard", "0123456"]) == 0 and "discarded 01234567" in capsys.readouterr().out
    assert [r.key for r in recovery.pending(case.paths)] == [other] and out.is_file(), "the other copy and the rescued mask stay"
    assert recovery_main(["--discard-all"]) == 0 and not list(recovery_folder.iterdir())
    assert recovery_main([]) == 0 and "no recovery copies" in capsys.readouterr().out


@pytest.mark.skipif(os.name != "posix", reason="folder modes are POSIX")
def test_the_copies_sit_in_folders_only_the_user_can_read(tmp_path, monkeypatch):
    """A copy names the scans' paths (often the patient's name) and holds the mask: not for other users of the machine."""
    case = load_case(write_phantom(tmp_path / "cases", seed=4, shape=(32, 40, 32)))
    monkeypatch.setenv("SEVNET_CACHE_DIR", str(tmp_path / "cache" / "napari-sevnet"))
    monkeypatch.delenv("SEVNET_RECOVERY_DIR")
    recovery.save(KEY, case.regions, case_id=case.case_id, name="x", paths=case.paths)
    for folder in (tmp_path / "cache", tmp_path / "cache" / "napari-sevnet", recovery.recovery_dir()):
        assert folder.is_dir() and folder.stat().st_mode & 0o077 == 0, oct(folder.stat().st_mode)
    assert recovery.pending(case.paths), "and the copy is read back from there"


def test_a_models_result_comes_back_with_its_output_provenance_and_tally(tmp_path, recovery_folder):
    from napari_sevnet.layers import LayerInfo

    case = load_case(write_phantom(tmp_path, seed=4, shape=(32, 40, 32)))
    rng = np.random.default_rng(0)
    result = LayerInfo(case_id=case.case_id, grid=case.grid, paths=case.paths, checkpoint="/models/m.json", device="cpu",
                       thresholds={"WT": np.float32(0.4), "TC": 0.5, "ET": 0.5}, sequences=("t1", "t1ce", "t2", "flair"),
                       prediction=case.regions, probabilities=rng.random((3, 32, 40, 32)).astype(np.float16),
                       attention={"enc1": np.array([0.2, 0.7], np.float32)}, run=2, warnings=("trained on synthetic phantoms only",))
    tally = {"click": {"edits": 2, "voxels": 130, "undone": 1}, "brush": {"edits": 1, "voxels": 9, "undone": 0}}
    entropy = rng.random((32, 40, 32)).astype(np.float32)
    recovery.save(KEY, case.regions, case_id=case.case_id, name="x", paths=case.paths, result=result, interactions=tally, uncertainty=entropy)
    output = recovery_folder / f"{KEY}{recovery.MODEL_SUFFIX}"
    written = output.stat().st_mtime_ns
    recovery.save(KEY, case.regions, case_id=case.case_id, name="x", paths=case.paths, result=result, interactions=tally)
    assert output.stat().st_mtime_ns == written, "the model's output does not change with the edits: written once"

    (found,) = recovery.pending(case.paths)
    info = found.info(case.case_id, case.grid, case.paths)
    assert info.group == KEY and found.interactions == tally
    assert (info.checkpoint, info.device, info.sequences) == ("/models/m.json", "cpu", result.sequences)
    assert info.thresholds == pytest.approx({"WT": 0.4, "TC": 0.5, "ET": 0.5})
    np.testing.assert_array_equal(info.prediction, case.regions)
    np.testing.assert_array_equal(info.probabilities, result.probabilities)
    np.testing.assert_array_equal(info.attention["enc1"], result.attention["enc1"])
    assert info.warnings == result.warnings
    layers, message = recovery.recovered_layers(case.case_id, case.grid, case.paths, case.spacing, case.shape)
    assert "made with the warning: trained on synthetic phantoms only" in message, "what may make it wrong is said again"
    assert [layer.name for layer in layers] == [f"{case.case_id} {r} (recovered)" for r in ("WT", "TC", "ET")] + [f"{case.case_id} WT uncertainty (recovered)"]
    np.testing.assert_allclose(layers[3].data, entropy, atol=1e-3)  # where the model was unsure, as the run showed it
    assert LayerInfo.from_layer(layers[3]).group == KEY

    output.write_bytes(b"damaged")  # the provenance still comes back; the clicks fall back to what they can do without
    info = recovery.pending(case.paths)[0].info(case.case_id, case.grid, case.paths)
    assert info.checkpoint == "/models/m.json" and info.probabilities is None

    recovery.save("f" * 32, case.regions, case_id=case.case_id, name="y", paths=case.paths, result=LayerInfo(paths=case.paths))
    mask_from_files = next(r for r in recovery.pending(case.paths) if r.key == "f" * 32)
    assert mask_from_files.model is None and mask_from_files.info(case.case_id, case.grid, case.paths).prediction is None
    assert mask_from_files.uncertainty() is None
    recovery.discard(KEY)
    recovery.flush()
    assert not output.exists()


@pytest.mark.qt
def test_corrections_survive_a_closed_viewer_and_go_once_saved_or_their_recovered_layers_deleted(qtbot, make_napari_viewer, tmp_path, monkeypatch):
    from napari_sevnet.layers import LayerInfo

    warnings = []
    monkeypatch.setattr("napari.utils.notifications.show_warning", warnings.append)
    folder = write_phantom(tmp_path / "cases", seed=4, shape=(48, 56, 48))
    viewer = make_napari_viewer()
    layers = viewer.open(str(folder), plugin="napari-sevnet")
    wt, et = layers[4], layers[6]
    spot = (24, 3, 3)
    assert not wt.data[spot]
    et.paint(spot, 1)  # a correction: ET there (and so TC and WT)
    recovery.flush()
    group = LayerInfo.from_layer(wt).group
    viewer.layers.clear()  # closed without exporting or saving (a crash would do the same)
    viewer.close()

    viewer = make_napari_viewer()
    opened = viewer.open(str(folder), plugin="napari-sevnet")
    names = [layer.name for layer in opened]
    recovered = [layer for layer in opened if "(recovered)" in layer.name]
    assert len(recovered) == 3 and names[-3] == "phantom_0004 WT (recovered)", names
    assert all(np.asarray(layer.data)[spot] for layer in recovered), "the painted voxel is back, nested"
    assert warnings and "neither exported nor saved were recovered (phantom_0004 (file) of " in warnings[-1]
    assert LayerInfo.from_layer(recovered[0]).group == group, "further edits update the same copy"
    assert not [layer for layer in viewer.open(str(folder), plugin="napari-sevnet") if "(recovered)" in layer.name], "not added twice to one viewer"

    viewer.layers.selection = set(recovered)
    out = tmp_path / "corrected_seg.nii.gz"
    assert viewer.layers.save(str(out), selected=True, plugin="napari-sevnet") == [str(out)]
    recovery.flush()
    paths = load_case(folder).paths
    assert recovery.pending(paths) == [], "saved: the copy has done its work"

    recovered[2].paint((24, 5, 5), 1)  # edited after the save: a copy again
    recovery.flush()
    assert len(recovery.pending(paths)) == 1
    for layer in [layer for layer in viewer.layers if "(file)" in layer.name]:
        viewer.layers.remove(layer)  # the other results' layers deleted (by mistake, perhaps): their copies stay
    recovery.flush()
    assert len(recovery.pending(paths)) == 1
    for layer in recovered:
        viewer.layers.remove(layer)  # the recovered result deleted, all three layers: not wanted
    recovery.flush()
    assert recovery.pending(paths) == []


@pytest.mark.qt
def test_a_recovery_folder_that_cannot_be_written_is_said_once_not_logged_away(qtbot, make_napari_viewer, tmp_path, monkeypatch):
    warnings = []
    monkeypatch.setattr("napari.utils.notifications.show_warning", warnings.append)
    blocked = tmp_path / "not_a_folder"
    blocked.write_text("a file where the folder should be")
    monkeypatch.setenv("SEVNET_RECOVERY_DIR", str(blocked))
    viewer = make_napari_viewer()
    et = viewer.open(str(write_phantom(tmp_path / "cases", seed=4, shape=(48, 56, 48))), plugin="napari-sevnet")[6]
    for x in (3, 5):
        et.paint((24, x, 3), 1)
        recovery.flush()
    qtbot.waitUntil(lambda: bool(warnings), timeout=10_000)
    qtbot.wait(200)
    assert len(warnings) == 1 and "cannot be kept as a recovery copy" in warnings[0] and "SEVNET_RECOVERY_DIR" in warnings[0]
