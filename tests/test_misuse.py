"""Misuse a careful or careless user commits: never silently wrong, never a lost file, never a traceback.

Inputs outside the model's assumptions (``tests/corpus.py`` WARNED_KINDS),
command lines that would drop an input or overwrite a reference, hand-edited
datasets whose paths lead outside, training configs and checkpoints that used
to end in a traceback.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_sevnet.errors import InputError
from napari_sevnet.inference import Predictor
from napari_sevnet.io import load_case, read_segmentation
from napari_sevnet.phantom import write_phantom
from tests.corpus import WARNED_KINDS, make_warned_case

BIN = Path(sys.executable).parent
SHAPE = (32, 40, 32)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def predict_cli(*args, cwd=None):
    result = subprocess.run([str(BIN / "sevnet-predict"), *map(str, args)], capture_output=True, text=True, timeout=300, cwd=cwd)
    assert "Traceback" not in result.stderr, result.stderr
    return result


# ------------------------------------------------------------------ inputs outside the model's assumptions


@pytest.mark.parametrize("kind", list(WARNED_KINDS))
def test_an_input_unlike_the_training_data_is_said_so_by_the_library_and_the_cli(tmp_path, kind, random_checkpoint):
    case = load_case(make_warned_case(tmp_path / "cases", kind))
    result = Predictor(random_checkpoint, "cpu").predict(case.image, spacing=case.spacing)
    said = " ".join([*case.warnings, *result.warnings, *result.notes])  # reading the files', then the model's
    assert pytest.importorskip("re").search(WARNED_KINDS[kind], said), said
    assert result.regions.shape[1:] == case.shape, "the mask lies on the case's own grid"
    out = tmp_path / "out"
    cli = predict_cli(case.paths["t1"].parent, "-o", out, "--checkpoint", random_checkpoint)
    assert cli.returncode == 0 and kind in cli.stderr
    report = json.loads((out / f"{kind}_report.json").read_text(encoding="utf-8"))
    assert pytest.importorskip("re").search(WARNED_KINDS[kind], " ".join(report["warnings"] + report["notes"]))


def test_a_half_mm_case_is_segmented_like_the_same_case_at_1_mm(tmp_path):
    from napari_sevnet.checkpoint import phantom_checkpoint
    from napari_sevnet.metrics import dice

    folder = write_phantom(tmp_path / "one", seed=5, shape=(48, 56, 48))
    fine = tmp_path / "half"
    fine.mkdir()
    for path in folder.glob("*.nii.gz"):  # the same head at 0.5 mm: every voxel split in 8
        img = nib.load(path)
        data = np.asanyarray(img.dataobj).repeat(2, 0).repeat(2, 1).repeat(2, 2)
        nib.save(nib.Nifti1Image(data, np.diag([0.5, 0.5, 0.5, 1.0]) @ img.affine), fine / path.name)
    predictor = Predictor(phantom_checkpoint(), "cpu")
    coarse, half = load_case(folder), load_case(fine)
    at_1mm = predictor.predict(coarse.image, spacing=coarse.spacing)
    at_half = predictor.predict(half.image, spacing=half.spacing)
    assert at_half.notes and at_half.regions.shape[1:] == half.shape
    back, truth = at_half.regions[:, ::2, ::2, ::2], coarse.regions
    for i in range(3):  # as good as the same head at the model's own spacing
        assert dice(back[i], truth[i]) >= dice(at_1mm.regions[i], truth[i]) - 0.05, i


def test_a_corrected_mask_in_another_voxel_order_is_read_onto_the_scan(tmp_path):
    folder = write_phantom(tmp_path, seed=2, shape=SHAPE)
    case = load_case(folder)
    seg = folder / f"{folder.name}_seg.nii.gz"
    ras = tmp_path / "corrected_ras.nii.gz"
    nib.save(nib.as_closest_canonical(nib.load(seg)), ras)  # what another viewer may write: same world, RAS voxel order
    assert not np.array_equal(nib.load(ras).affine, nib.load(seg).affine)
    regions, _ = read_segmentation(ras, case.grid, case.paths["t1"], "2021")
    np.testing.assert_array_equal(regions, case.regions)


def test_another_cases_mask_or_the_follow_up_as_its_own_baseline_is_refused(tmp_path, capsys):
    """BraTS cases share one grid, so only the files (its name, what lies beside it) tell that a mask belongs to another case."""
    from napari_sevnet.cli import export_main, measure_main

    mine, other = (write_phantom(tmp_path, seed=seed, shape=SHAPE) for seed in (1, 2))
    wrong = other / f"{other.name}_seg.nii.gz"
    assert export_main([str(mine), str(wrong), "-d", str(tmp_path / "ds")]) == 2
    assert measure_main([str(mine), str(wrong)]) == 2
    err = capsys.readouterr().err
    assert err.count(f"the mask of case {other.name} (beside it: {other.name}_flair.nii.gz), but the case is {mine.name}") == 2, err
    assert not (tmp_path / "ds").exists()
    predictions = tmp_path / "pred"  # sevnet-predict's output of the other case
    predictions.mkdir()
    shutil.copy(wrong, predictions)
    (predictions / f"{other.name}_report.json").write_text("{}")
    assert measure_main([str(mine), str(predictions / wrong.name)]) == 2
    assert f"beside it: {other.name}_report.json" in capsys.readouterr().err
    for name in ("corrected.nii.gz", "corrected_seg.nii.gz"):  # a user's own name is taken at its word
        shutil.copy(wrong, tmp_path / name)
        assert measure_main([str(mine), str(tmp_path / name)]) == 0
    # nor is the follow-up its own baseline ("stable disease" by construction)
    own = str(mine / f"{mine.name}_seg.nii.gz")
    assert measure_main([str(mine), own, "--baseline", str(mine), own]) == 2
    assert measure_main([str(mine), own, "--baseline", str(other), own]) == 2
    assert capsys.readouterr().err.count("the baseline is the follow-up itself") == 2


def test_a_decathlon_mask_given_to_export_keeps_its_labels(tmp_path):
    from napari_sevnet.cli import export_main

    folder = write_phantom(tmp_path / "src", seed=2, shape=SHAPE)
    case = load_case(folder)
    images, labels = tmp_path / "msd" / "imagesTr", tmp_path / "msd" / "labelsTr"
    images.mkdir(parents=True), labels.mkdir(parents=True)
    stack = np.stack([nib.load(case.paths[m]).get_fdata() for m in ("flair", "t1", "t1ce", "t2")], -1)
    affine = nib.load(case.paths["t1"]).affine
    nib.save(nib.Nifti1Image(stack.astype(np.float32), affine), images / "BRATS_001.nii.gz")
    from napari_sevnet.regions import regions_to_labels

    msd = case.grid.from_canonical(regions_to_labels(case.regions, "msd"))
    nib.save(nib.Nifti1Image(msd, affine), labels / "BRATS_001.nii.gz")
    assert export_main([str(images / "BRATS_001.nii.gz"), str(labels / "BRATS_001.nii.gz"), "-d", str(tmp_path / "ds")]) == 0
    exported = load_case(tmp_path / "ds" / "BRATS_001")
    np.testing.assert_array_equal(exported.regions, case.regions)  # necrosis and edema not swapped
    other = tmp_path / "corrected.nii.gz"
    nib.save(nib.Nifti1Image(msd, affine), other)  # a 1/2/3 file that names nothing, for a BraTS case
    with pytest.raises(InputError, match="Decathlon"):
        read_segmentation(other, case.grid, case.paths["t1"])


# ------------------------------------------------------------------ command lines


@pytest.fixture
def cases(tmp_path):
    return [write_phantom(tmp_path / "cases", seed=seed, shape=SHAPE) for seed in range(3)]


def test_earlier_predictions_beside_the_cases_are_not_taken_for_a_case(cases, random_checkpoint):
    root = cases[0].parent
    assert predict_cli(root, "-o", root / "pred", "--checkpoint", random_checkpoint).returncode == 0
    again = predict_cli(root, "-o", root / "pred2", "--checkpoint", random_checkpoint)
    assert again.returncode == 0 and "pred:" not in again.stderr, again.stderr
    assert sorted(p.name for p in (root / "pred2").glob("*_seg.nii.gz")) == sorted(f"{c.name}_seg.nii.gz" for c in cases)
    (root / "pred" / "notes_t1.nii.gz").write_bytes(b"")  # a folder with anything but masks is still reported
    assert predict_cli(root, "-o", root / "pred3", "--checkpoint", random_checkpoint).returncode == 1


def test_a_repeated_output_option_is_refused(cases, tmp_path, random_checkpoint):
    odd = cases[0].parent / "-oB"
    shutil.copytree(cases[0], odd)
    result = predict_cli("-oB", cases[1], "-o", tmp_path / "out", "--checkpoint", random_checkpoint, cwd=odd.parent)
    assert result.returncode == 2 and "given twice" in result.stderr and "after --" in result.stderr
    assert not (tmp_path / "out").exists() and not (odd.parent / "B").exists()
    ok = predict_cli("-o", tmp_path / "out", "--checkpoint", random_checkpoint, "--", "-oB", cwd=odd.parent)
    assert ok.returncode == 0 and (tmp_path / "out" / f"{cases[0].name}_seg.nii.gz").is_file()


def test_outputs_never_go_into_an_input_case_folder(cases, random_checkpoint):
    reference = cases[0] / f"{cases[0].name}_seg.nii.gz"
    before = digest(reference)
    for extra in ([], ["--overwrite"]):
        result = predict_cli(cases[0], "-o", cases[0], "--checkpoint", random_checkpoint, *extra)
        assert result.returncode == 2 and "input case" in result.stderr
    assert digest(reference) == before and not list(cases[0].glob("*_report.json"))


def test_two_inputs_with_one_case_id_are_refused_naming_both(tmp_path, random_checkpoint):
    a = write_phantom(tmp_path / "site_a", seed=1, shape=SHAPE, case_id="case7")
    b = write_phantom(tmp_path / "site_b", seed=2, shape=SHAPE, case_id="case7")
    result = predict_cli(a, b, "-o", tmp_path / "out", "--overwrite", "--checkpoint", random_checkpoint)
    assert result.returncode == 2 and "site_a" in result.stderr and "site_b" in result.stderr


def test_a_patient_folder_of_visit_folders_is_named_one_level_too_high(tmp_path):
    patient = tmp_path / "patients" / "patient_7"
    for visit, seed in (("2024-01", 1), ("2024-06", 2)):
        write_phantom(patient, seed=seed, shape=SHAPE, case_id=visit)
    with pytest.raises(InputError, match=r"patient_7: holds no scans itself but case folders \(2024-01, 2024-06\): open one of them"):
        load_case(patient)


def test_overwrite_leaves_no_stale_maps(cases, tmp_path, random_checkpoint):
    out = tmp_path / "out"
    assert predict_cli(cases[0], "-o", out, "--probabilities", "--checkpoint", random_checkpoint).returncode == 0
    assert len(list(out.glob("*_prob_*.nii.gz"))) == 3
    assert predict_cli(cases[0], "-o", out, "--overwrite", "--checkpoint", random_checkpoint).returncode == 0
    assert not list(out.glob("*_prob_*.nii.gz")) and json.loads((out / f"{cases[0].name}_report.json").read_text(encoding="utf-8"))["maps"] == {}
    assert predict_cli(cases[0], "-o", out, "--overwrite", "--labels", "2023", "--checkpoint", random_checkpoint).returncode == 0
    assert [p.name for p in out.glob(f"{cases[0].name}*seg.nii.gz")] == [f"{cases[0].name}-seg.nii.gz"], "one result per case, not two"


def test_two_runs_into_one_folder_at_once_never_replace_each_others_outputs(cases, tmp_path, random_checkpoint):
    out = tmp_path / "out"
    cmd = [str(BIN / "sevnet-predict"), *map(str, cases), "-o", str(out), "--checkpoint", str(random_checkpoint)]
    runs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errors = [run.communicate(timeout=300)[1] for run in runs]
    written = sorted(p.name for p in out.glob("*_report.json"))
    assert written == sorted(f"{c.name}_report.json" for c in cases)
    refused = sum(e.count("already exists") for e in errors)
    assert refused == len(cases), errors  # each case written by exactly one of the two runs
    assert "Traceback" not in "".join(errors)


def test_a_full_disk_while_writing_leaves_no_mask_without_its_report(cases, tmp_path, random_checkpoint, monkeypatch):
    from napari_sevnet import report as report_module
    from napari_sevnet.report import write_case_outputs

    case = load_case(cases[0])
    predictor = Predictor(random_checkpoint, "cpu")
    result = predictor.predict(case.image)

    def full_disk(path, text):
        raise InputError(path, "could not write: No space left on device")

    monkeypatch.setattr(report_module, "write_text_atomic", full_disk)
    with pytest.raises(InputError, match="No space"):
        write_case_outputs(case, result, predictor, tmp_path / "out", convention="brats2021", probabilities=True)
    assert not [p for p in (tmp_path / "out").iterdir() if not p.name.startswith(".")], "all or nothing"


# ------------------------------------------------------------------ hand-edited datasets


@pytest.fixture
def dataset(tmp_path):
    from napari_sevnet.export import export_case

    case = load_case(write_phantom(tmp_path / "src", seed=1, shape=SHAPE))
    export_case(case, case.regions, tmp_path / "ds")
    return tmp_path / "ds", case


def edit_manifest(dataset: Path, change) -> None:
    manifest = json.loads((dataset / "dataset.json").read_text(encoding="utf-8"))
    change(manifest)
    (dataset / "dataset.json").write_text(json.dumps(manifest), encoding="utf-8")


@pytest.mark.parametrize("change, message", [
    (lambda m: m["cases"][0].pop("folder"), r"cases\[0\]\.folder"),
    (lambda m: m["cases"][0].update(version="2"), r"cases\[0\]\.version is '2'"),
    (lambda m: m.update(format_version="1"), "format_version '1'"),
])
def test_a_hand_edited_manifest_gets_a_message_not_a_traceback(dataset, change, message):
    from napari_sevnet.export import export_case, read_manifest

    root, case = dataset
    edit_manifest(root, change)
    with pytest.raises(InputError, match=message):
        read_manifest(root)
    with pytest.raises(InputError, match=message):
        export_case(case, case.regions, root)
    result = subprocess.run([str(BIN / "sevnet-train"), f"data.roots=[{root}]", "epochs=1", "-o", str(root / "runs" / "x")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr and "dataset.json" in result.stderr


def test_a_manifest_path_outside_the_dataset_is_never_followed_or_deleted(dataset, tmp_path):
    from napari_sevnet.export import export_case

    root, case = dataset
    other = tmp_path / "outside" / case.case_id  # another dataset's case, with its own record
    shutil.copytree(root / case.case_id, other)
    edit_manifest(root, lambda m: m["cases"][0].update(folder=f"../outside/{case.case_id}"))
    with pytest.raises(InputError, match="not a folder directly inside the dataset"):
        export_case(case, case.regions, root, replace=True)
    assert (other / "export.json").is_file(), "the other dataset's case is untouched"


def test_a_case_id_may_not_take_the_datasets_own_names(dataset):
    from napari_sevnet.cli import export_main

    root, case = dataset
    for name in ("dataset.json", "runs", "notes.json"):
        assert export_main([str(case.paths["t1"]), str(case.paths["seg"]), "-d", str(root), "--case-id", name]) == 2
    assert (root / "dataset.json").is_file() and json.loads((root / "dataset.json").read_text(encoding="utf-8"))["cases"]


# ------------------------------------------------------------------ training configs and run folders


@pytest.mark.parametrize("override, message", [
    ("val_every=0", "val_every must be at least 1"),
    ("batch_size=0", "batch_size must be at least 1"),
    ("epochs=0", "epochs must be at least 1"),
    ("steps_per_epoch=-2", "steps_per_epoch must be at least 1"),
    ("patch_size=abc", "patch_size must be three whole numbers"),
    ("patch_size=[36,36,36]", r"multiples of 8 .* e\.g\. \[32, 32, 32\]"),
    ("model.config.colour=blue", "cannot build sevnet"),
    ("data.val_cases=3", "at least one must be left to train on"),
])
def test_a_bad_training_setting_is_one_line_naming_it(phantom_dir, tmp_path, capsys, override, message):
    from training.cli import main

    args = [f"data.roots=[{phantom_dir}]", "model.config={preset: tiny}", "patch_size=[32,32,32]", "epochs=1", "steps_per_epoch=1",
            f"data.cache_dir={tmp_path / 'cache'}", "-o", str(tmp_path / "run"), override]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and pytest.importorskip("re").search(message, err), err


def test_a_config_with_yaml_aliases_is_refused_at_once(tmp_path, capsys):
    from training.cli import main

    laughs = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
    (tmp_path / "laughs.yaml").write_text(laughs, encoding="utf-8")
    start = time.perf_counter()
    assert main(["--config", str(tmp_path / "laughs.yaml")]) == 1
    assert time.perf_counter() - start < 5 and "aliases" in capsys.readouterr().err


def test_a_mistyped_value_or_a_folder_that_is_no_run_is_named_in_words(tmp_path, capsys):
    from training.cli import main

    assert main(["-o", str(tmp_path / "run"), "epochs=abc"]) == 1
    assert "config.epochs: expected a whole number, got 'abc'" in capsys.readouterr().err
    assert main(["--resume", str(tmp_path)]) == 1
    assert f"{tmp_path}: is not a run folder of sevnet-train (it holds no config.yaml)" in capsys.readouterr().err


def test_a_run_folder_holds_one_training(phantom_dir, tmp_path, capsys):
    from filelock import FileLock

    from training.cli import main

    args = [f"data.roots={phantom_dir}", "model.config={preset: tiny}", "patch_size=[32,32,32]", "epochs=1", "steps_per_epoch=1",
            "data.val_cases=1", f"data.cache_dir={tmp_path / 'cache'}", "-o", str(tmp_path / "run")]
    assert main(args) == 0, "data.roots without brackets is one root"
    assert main(args) == 1 and "--resume" in capsys.readouterr().err, "a new run never replaces another's checkpoints"
    (tmp_path / "notes.txt").write_text("mine", encoding="utf-8")
    assert main([*args[:-1], str(tmp_path / "notes.txt")]) == 1 and "notes.txt: is a file" in capsys.readouterr().err
    (tmp_path / "run" / ".last.safetensors.x1y2.tmp").write_bytes(b"half")  # left by a kill mid-write
    with FileLock(str(tmp_path / "run" / ".training.lock")):
        assert main(["--resume", str(tmp_path / "run"), "epochs=2"]) == 1
    assert "another training" in capsys.readouterr().err
    assert main(["--resume", str(tmp_path / "run"), "epochs=2"]) == 0
    assert not (tmp_path / "run" / ".last.safetensors.x1y2.tmp").exists()
    assert main(["--resume", str(tmp_path / "run"), "epochs=3", "model.name=vnet", "model.config={preset: tiny}"]) == 1
    assert "model.name: 'sevnet' -> 'vnet'" in capsys.readouterr().err, "one run, one network"
    assert main(["--resume", str(tmp_path / "run"), "epochs=3", "lr=1e-5"]) == 1
    err = capsys.readouterr().err
    assert "lr: 0.003 -> 1e-05" in err and "--init" in err, "the saved optimizer would have kept its own rate without a word"
    assert main(["--resume", str(tmp_path / "run"), "epochs=1"]) == 1
    assert "trained 2 epochs already" in capsys.readouterr().err
    assert main(["--resume", str(tmp_path / "run"), "epochs=3", "val_every=3"]) == 0, "how long it trains may change"


def test_a_gpu_out_of_memory_in_training_says_what_to_change(tmp_path, capsys, monkeypatch):
    """The Fine-tune dock shows the trainer's error line: what to change, not the last line of a traceback."""
    import json as _json

    import torch

    from training.cli import main

    def too_big(*_args, **_kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.50 GiB (GPU 0; 3.81 GiB total capacity)")

    monkeypatch.setattr("training.loop.train", too_big)
    assert main(["-o", str(tmp_path / "run"), "--progress-json"]) == 1
    out, err = capsys.readouterr()
    (event,) = [_json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert event["event"] == "error" and "the GPU ran out of memory (CUDA out of memory. Tried to allocate 3.50 GiB" in event["message"]
    assert "batch_size=1" in err and "CUDA_VISIBLE_DEVICES=" in err and "Traceback" not in err
