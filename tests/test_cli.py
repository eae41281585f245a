"""sevnet-predict and sevnet-evaluate from files on disk to files on disk."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_sevnet.cli import evaluate_main, predict_main


def test_predict_folder_of_cases_then_evaluate(phantom_dir, random_checkpoint, tmp_path, capsys):
    out = tmp_path / "pred"
    assert predict_main([str(phantom_dir), "-o", str(out), "--checkpoint", str(random_checkpoint), "--labels", "2023", "--device", "cpu"]) == 0
    for seed in range(3):
        case = f"phantom_{seed:04d}"
        seg = nib.load(out / f"{case}-seg.nii.gz")  # BraTS 2023 labels, BraTS 2023 naming
        src = nib.load(phantom_dir / case / f"{case}_t1.nii.gz")
        assert seg.shape == src.shape and np.array_equal(seg.affine, src.affine)
        assert set(np.unique(np.asanyarray(seg.dataobj)).tolist()) <= {0, 1, 2, 3}
        report = json.loads((out / f"{case}_report.json").read_text(encoding="utf-8"))
        assert set(report["volumes_ml"]) == {"WT", "TC", "ET"} and report["device"] == "cpu"
        assert report["checkpoint"] == str(random_checkpoint) and report["label_convention"] == "brats2023"
        assert "not for diagnosis" in report["notice"]
    # a copy of the reference scores perfectly
    copies = tmp_path / "copies"
    copies.mkdir()
    for seed in range(3):
        shutil.copy(phantom_dir / f"phantom_{seed:04d}" / f"phantom_{seed:04d}_seg.nii.gz", copies)
    assert evaluate_main([str(copies), str(phantom_dir), "-o", str(tmp_path / "self")]) == 0
    mean = json.loads((tmp_path / "self" / "metrics.json").read_text(encoding="utf-8"))["mean"]
    assert mean["WT"]["dice"] == 1.0 and mean["ET"]["hd95"] == 0.0
    capsys.readouterr()
    (tmp_path / "metrics_file").write_text("x")
    assert evaluate_main([str(copies), str(phantom_dir), "-o", str(tmp_path / "metrics_file")]) == 2, "said before the scoring, not a traceback after it"
    assert evaluate_main([str(tmp_path / "typo"), str(phantom_dir)]) == 2
    err = capsys.readouterr().err
    assert "metrics_file: is a file: -o is the folder" in err and "typo: no such folder (the predictions' folder)" in err
    assert evaluate_main([str(out), str(phantom_dir)]) == 0
    rows = (out / "metrics.csv").read_text(encoding="utf-8").splitlines()
    assert rows[0].startswith("case,WT_dice") and rows[-1].startswith("mean,") and len(rows) == 5


def test_evaluate_never_scores_a_prediction_against_itself_or_a_guessed_reference(phantom_dir, tmp_path, capsys):
    """Predictions below the references' folder are not their own references;
    a case with two reference masks is refused; references without a prediction are named."""
    root = tmp_path / "data"
    shutil.copytree(phantom_dir, root)
    preds = root / "preds"
    preds.mkdir()
    shutil.copy(root / "phantom_0000" / "phantom_0000_seg.nii.gz", preds)
    assert evaluate_main([str(preds), str(root)]) == 0
    err = capsys.readouterr().err
    assert "2 reference case(s)" in err and "phantom_0001, phantom_0002" in err
    metrics = json.loads((preds / "metrics.json").read_text(encoding="utf-8"))
    assert [row["case"] for row in metrics["cases"]] == ["phantom_0000"]
    assert metrics["references_without_prediction"] == ["phantom_0001", "phantom_0002"]
    # a prediction alone, with no reference anywhere but itself, is an error, not Dice 1
    lone = tmp_path / "lone"
    (lone / "preds").mkdir(parents=True)
    shutil.copy(root / "phantom_0000" / "phantom_0000_seg.nii.gz", lone / "preds")
    capsys.readouterr()
    assert evaluate_main([str(lone / "preds"), str(lone)]) == 1
    assert "no reference mask for case phantom_0000" in capsys.readouterr().err
    # a second mask of the same case under the references is refused by name
    shutil.copy(root / "phantom_0000" / "phantom_0000_seg.nii.gz", root / "phantom_0001")
    assert evaluate_main([str(preds), str(root)]) == 1
    err = capsys.readouterr().err
    assert "case phantom_0000 has 2 reference masks" in err and str(root / "phantom_0001") in err
    # and two predictions of one case are refused before any scoring
    (preds / "again").mkdir()
    shutil.copy(preds / "phantom_0000_seg.nii.gz", preds / "again")
    assert evaluate_main([str(preds), str(lone)]) == 2
    assert "case phantom_0000 has 2 predictions" in capsys.readouterr().err


def test_evaluate_scores_predictions_in_the_challenge_layout_in_the_references_convention(phantom_dir, tmp_path, capsys):
    """Another tool's BraTS submission (<case>.nii.gz) is scored as the challenge scores it: in the references' labels."""
    from napari_sevnet.regions import labels_to_regions, regions_to_labels

    submission = tmp_path / "submission"
    submission.mkdir()
    shutil.copy(phantom_dir / "phantom_0000" / "phantom_0000_seg.nii.gz", submission / "phantom_0000.nii.gz")
    ref = nib.load(phantom_dir / "phantom_0001" / "phantom_0001_seg.nii.gz")
    labels_2023 = regions_to_labels(labels_to_regions(np.asanyarray(ref.dataobj), "brats2021"), "brats2023")
    assert 3 in labels_2023
    nib.save(nib.Nifti1Image(labels_2023, ref.affine), submission / "phantom_0001.nii.gz")
    (submission / "notes.nii.gz").write_bytes(b"")  # not a case id: not a prediction
    assert evaluate_main([str(submission), str(phantom_dir), "-o", str(tmp_path / "as_2021")]) == 1
    assert "phantom_0001.nii.gz" in capsys.readouterr().err  # 1/2/3 read as the references' 2021 labels: refused, not scored
    assert evaluate_main([str(submission), str(phantom_dir), "-o", str(tmp_path / "m"), "--labels", "2023"]) == 1  # the 2021 file: 4 is not a 2023 label
    shutil.move(submission / "phantom_0000.nii.gz", tmp_path)
    capsys.readouterr()
    assert evaluate_main([str(submission), str(phantom_dir), "-o", str(tmp_path / "m"), "--labels", "2023"]) == 0
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text(encoding="utf-8"))
    assert [row["case"] for row in metrics["cases"]] == ["phantom_0001"] and metrics["mean"]["ET"]["dice"] == 1.0
    assert metrics["references"] == str(phantom_dir.resolve()) and metrics["labels"] == "2023", "it says what it scored against what"
    assert "replacing an earlier evaluation's" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert evaluate_main([str(tmp_path / "empty"), str(phantom_dir)]) == 2
    assert "nor <case>.nii.gz files named by a reference case's id" in capsys.readouterr().err


def test_evaluate_scores_whole_tumour_references_on_the_whole_tumour_alone(phantom_dir, tmp_path, capsys):
    """A clinic's or a public set's reference painted with one label (FLAIR abnormality, 0/1 or 0/255) was refused; scored
    as BraTS labels it would be necrosis. With --whole-tumour-references it is the whole tumour, and TC and ET are not scored."""
    from napari_sevnet.io import read_labels
    from napari_sevnet.metrics import region_metrics

    preds, refs = tmp_path / "preds", tmp_path / "refs"
    preds.mkdir(), refs.mkdir()
    expected = {}
    for case, value in (("phantom_0000", 1), ("phantom_0001", 255)):
        seg = phantom_dir / case / f"{case}_seg.nii.gz"
        shutil.copy(seg, preds / seg.name)
        img = nib.load(seg)
        whole = np.asanyarray(img.dataobj) > 0
        whole[: whole.shape[0] // 2] = False  # the reference differs from the prediction
        nib.save(nib.Nifti1Image((whole * value).astype(np.uint8), img.affine), refs / seg.name)
        pred, grid = read_labels(seg)
        expected[case] = region_metrics(pred[0], grid.to_canonical(whole), grid.spacing)["dice"]
    assert evaluate_main([str(preds), str(refs), "-o", str(tmp_path / "three")]) == 1
    err = capsys.readouterr().err
    assert "warning: " + str(refs / "phantom_0000_seg.nii.gz") + ": holds label 1 alone, read by its BraTS name as necrosis" in err
    assert "phantom_0001_seg.nii.gz: unknown label values [255]" in err and err.count("--whole-tumour-references scores the whole tumour alone") == 2
    assert evaluate_main([str(preds), str(refs), "-o", str(tmp_path / "wt"), "--whole-tumour-references"]) == 0
    metrics = json.loads((tmp_path / "wt" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["regions_scored"] == ["WT"] and set(metrics["mean"]) == {"WT"}
    assert {row["case"]: row["WT_dice"] for row in metrics["cases"]} == pytest.approx(expected) and 0 < min(expected.values()) < 1
    assert not any(key.startswith(("TC", "ET")) for key in metrics["cases"][0])
    out = capsys.readouterr().out
    assert "WT Dice" in out and "TC Dice" not in out
    (refs / "phantom_0000_seg.nii.gz").unlink()
    shutil.copy(phantom_dir / "phantom_0000" / "phantom_0000_t1.nii.gz", refs / "phantom_0000_seg.nii.gz")  # a scan given as the reference
    assert evaluate_main([str(preds), str(refs), "-o", str(tmp_path / "wt"), "--whole-tumour-references"]) == 1
    assert "a scan rather than" in capsys.readouterr().err


def test_bad_case_gets_one_line_and_the_batch_continues(phantom_dir, random_checkpoint, tmp_path):
    bad = tmp_path / "bad_case"
    bad.mkdir()
    (bad / "bad_case_t1.nii.gz").write_bytes(b"")
    out = tmp_path / "pred"
    cmd = [str(Path(sys.executable).parent / "sevnet-predict"), str(bad), str(phantom_dir / "phantom_0000"), "-o", str(out), "--checkpoint", str(random_checkpoint)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert any("bad_case" in line and "missing modalities" in line for line in errors), proc.stderr
    assert "Traceback" not in proc.stderr
    assert (out / "phantom_0000_seg.nii.gz").is_file()
    # a second run refuses to overwrite without --overwrite
    assert predict_main([str(phantom_dir / "phantom_0000"), "-o", str(out), "--checkpoint", str(random_checkpoint)]) == 1
    assert predict_main([str(phantom_dir / "phantom_0000"), "-o", str(out), "--checkpoint", str(random_checkpoint), "--overwrite"]) == 0


def test_a_case_named_twice_is_segmented_once_and_an_output_that_is_a_file_is_one_line(phantom_dir, random_checkpoint, tmp_path, capsys):
    case = phantom_dir / "phantom_0000"
    out = tmp_path / "pred"
    # its folder and one of its files (a glob, a drag and drop): once, not a second time refused as "already exists"
    assert predict_main([str(case), str(case / "phantom_0000_flair.nii.gz"), "-o", str(out), "--checkpoint", str(random_checkpoint), "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["phantom_0000_report.json", "phantom_0000_seg.nii.gz"]
    capsys.readouterr()
    (tmp_path / "notes.txt").write_text("x")
    assert predict_main([str(case), "-o", str(tmp_path / "notes.txt"), "--checkpoint", str(random_checkpoint)]) == 2
    assert "notes.txt: is a file: -o is the folder" in capsys.readouterr().err


def test_missing_checkpoint_is_one_line(tmp_path, capsys):
    assert predict_main([str(tmp_path), "-o", str(tmp_path / "o"), "--checkpoint", str(tmp_path / "nope.json")]) == 2
    err = capsys.readouterr().err
    assert "nope.json: checkpoint not found (neither its .json nor its .safetensors)" in err, "a typo, not a half-copied model"


def test_threshold_and_cleanup_flags_override_what_the_model_declares(phantom_dir, tmp_path):
    from napari_sevnet.checkpoint import phantom_checkpoint

    case = str(phantom_dir / "phantom_0001")
    common = ["--checkpoint", str(phantom_checkpoint()), "--device", "cpu"]
    assert predict_main([case, "-o", str(tmp_path / "plain"), *common]) == 0
    assert predict_main([case, "-o", str(tmp_path / "strict"), "--threshold", "0.999", "--min-component-ml", "0", *common]) == 0
    volume = {name: json.loads((tmp_path / name / "phantom_0001_report.json").read_text(encoding="utf-8"))["volumes_ml"]["WT"] for name in ("plain", "strict")}
    assert 0 <= volume["strict"] < volume["plain"], volume


def test_measure_and_export_name_the_model_from_the_predictions_report(phantom_dir, tmp_path):
    """A mask straight from sevnet-predict carries its model into the case report and the dataset without --checkpoint."""
    from napari_sevnet.checkpoint import phantom_checkpoint
    from napari_sevnet.cli import export_main, measure_main

    case = phantom_dir / "phantom_0002"
    assert predict_main([str(case), "-o", str(tmp_path / "pred"), "--checkpoint", str(phantom_checkpoint()), "--device", "cpu"]) == 0
    mask = tmp_path / "pred" / "phantom_0002_seg.nii.gz"
    assert measure_main([str(case), str(mask), "--report", str(tmp_path / "case.html")]) == 0
    page = (tmp_path / "case.html").read_text(encoding="utf-8")
    assert "trained on synthetic phantoms only" in page and "not recorded" not in page
    assert export_main([str(case), str(case / "phantom_0002_seg.nii.gz"), "-d", str(tmp_path / "ds"), "--model-mask", str(mask)]) == 0
    record = json.loads((tmp_path / "ds" / "phantom_0002" / "export.json").read_text(encoding="utf-8"))
    assert record["checkpoint"]["path"].endswith("sevnet_lite_phantom.json"), record["checkpoint"]


def test_each_case_gets_masks_in_its_own_label_convention_unless_told(phantom_dir, random_checkpoint, tmp_path):
    """A BraTS 2023 case's mask in 1/2/4 under a 2021 name would not be found, or would be misread, by its own tools."""
    from napari_sevnet.io import NAMINGS
    from napari_sevnet.layers import LayerInfo, write_regions

    cases = tmp_path / "cases"
    shutil.copytree(phantom_dir / "phantom_0000", cases / "phantom_0000")
    renamed = cases / "BraTS-GLI-00007-000"
    renamed.mkdir()
    for suffix, role in NAMINGS["brats2021"].items():
        if role != "seg":
            new = next(s for s, r in NAMINGS["brats2023"].items() if r == role)
            shutil.copy(phantom_dir / "phantom_0001" / f"phantom_0001{suffix}.nii.gz", renamed / f"{renamed.name}{new}.nii.gz")
    out = tmp_path / "pred"
    assert predict_main([str(cases), "-o", str(out), "--checkpoint", str(random_checkpoint), "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["BraTS-GLI-00007-000-seg.nii.gz", "phantom_0000_seg.nii.gz"]
    for name, labels in (("BraTS-GLI-00007-000-seg.nii.gz", {0, 1, 2, 3}), ("phantom_0000_seg.nii.gz", {0, 1, 2, 4})):
        assert set(np.unique(np.asanyarray(nib.load(out / name).dataobj)).tolist()) <= labels
    forced = tmp_path / "forced"
    assert predict_main([str(renamed), "-o", str(forced), "--checkpoint", str(random_checkpoint), "--device", "cpu", "--labels", "2021"]) == 0
    assert (forced / "BraTS-GLI-00007-000_seg.nii.gz").is_file()
    # saved from napari under a BraTS 2023 mask name: 2023 labels, as the name says
    from napari_sevnet.io import load_case

    case = load_case(phantom_dir / "phantom_0002")
    paths = {k: str(v) for k, v in case.paths.items()}
    info = LayerInfo(case_id=case.case_id, grid=case.grid, paths=paths)  # one result's layers share its group
    layers = [(case.regions[i], {"name": r, "metadata": info.but(region=r).to_metadata()}, "labels") for i, r in enumerate(("WT", "TC", "ET"))]
    saved = write_regions(str(tmp_path / "BraTS-GLI-00008-000-seg.nii.gz"), layers)
    assert 4 not in np.unique(np.asanyarray(nib.load(saved[0]).dataobj)) and 3 in np.unique(np.asanyarray(nib.load(saved[0]).dataobj))
    assert load_case(mapping={**{m: case.paths[m] for m in ("t1", "t1ce", "t2", "flair")}, "seg": saved[0]}).regions.sum() == case.regions.sum()


def test_a_folder_assigned_in_napari_is_segmented_by_sevnet_predict_under_its_own_name(phantom_dir, random_checkpoint, tmp_path, monkeypatch, capsys):
    """A clinic names every patient's series alike; the folder is the case, and the Assign dock's choice holds on the command line."""
    from napari_sevnet.assignments import remember

    monkeypatch.setenv("SEVNET_CONFIG_DIR", str(tmp_path / "config"))
    clinic = tmp_path / "clinic"
    for patient, seed in (("patient_a", 0), ("patient_b", 1)):
        (clinic / patient).mkdir(parents=True)
        for role, name in (("t1", "T1_pre"), ("t1ce", "T1_post"), ("t2", "AX_T2"), ("flair", "FLAIR")):
            shutil.copy(phantom_dir / f"phantom_{seed:04d}" / f"phantom_{seed:04d}_{role}.nii.gz", clinic / patient / f"{name}.nii.gz")
    out = tmp_path / "pred"
    args = [str(clinic), "-o", str(out), "--checkpoint", str(random_checkpoint), "--device", "cpu"]
    assert predict_main(args) == 1
    assert "Assign sequences" in capsys.readouterr().err
    for patient in ("patient_a", "patient_b"):
        folder = clinic / patient
        remember(folder, {"t1": folder / "T1_pre.nii.gz", "t1ce": folder / "T1_post.nii.gz", "t2": folder / "AX_T2.nii.gz", "flair": folder / "FLAIR.nii.gz"})
    assert predict_main(args) == 0
    assert sorted(p.name for p in out.glob("*_seg.nii.gz")) == ["patient_a_seg.nii.gz", "patient_b_seg.nii.gz"]


def test_sevnet_assign_lists_the_proposal_and_remembers_it_for_the_other_commands(phantom_dir, random_checkpoint, tmp_path, monkeypatch, capsys):
    """A server with no napari: the Assign dock's proposal on the command line, confirmed by --accept or chosen file by file."""
    from napari_sevnet.cli import assign_main

    monkeypatch.setenv("SEVNET_CONFIG_DIR", str(tmp_path / "config"))
    clinic = tmp_path / "clinic"
    for patient, flair in (("patient_a", "7_t2_flair_tra"), ("patient_b", "7_dark_fl_tra")):  # dcm2niix's names
        (clinic / patient).mkdir(parents=True)
        for role, name in (("t1", "3_t1_mprage_sag"), ("t1ce", "9_t1_mprage_sag_KM"), ("t2", "5_t2_tse_tra"), ("flair", flair)):
            shutil.copy(phantom_dir / "phantom_0000" / f"phantom_0000_{role}.nii.gz", clinic / patient / f"{name}.nii.gz")
    predict = [str(clinic), "-o", str(tmp_path / "pred"), "--checkpoint", str(random_checkpoint), "--device", "cpu"]
    assert assign_main([str(clinic)]) == 0
    out = capsys.readouterr().out
    assert predict_main(predict) == 1 and "on the command line with sevnet-assign FOLDER" in capsys.readouterr().err  # listing remembers nothing
    assert "9_t1_mprage_sag_KM.nii.gz  -> T1ce" in out and "7_dark_fl_tra.nii.gz  -> not used" in out and "nothing remembered yet" in out
    assert assign_main([str(clinic), "--accept"]) == 1  # patient_b's FLAIR is not proposed: not accepted without it
    assert "patient_b: no file is chosen for FLAIR: name it (--flair FILE) or say there is none (--flair none)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        assign_main([str(clinic), "--flair", "7_dark_fl_tra.nii.gz"])  # a file of which folder?
    assert assign_main([str(clinic / "patient_b"), "--flair", "nope.nii.gz"]) == 1 and "nope.nii.gz: is not a file in this folder" in capsys.readouterr().err
    assert assign_main([str(clinic / "patient_b"), "--flair", "7_dark_fl_tra.nii.gz"]) == 0
    assert predict_main(predict) == 0
    assert sorted(p.name for p in (tmp_path / "pred").glob("*_seg.nii.gz")) == ["patient_a_seg.nii.gz", "patient_b_seg.nii.gz"]
    capsys.readouterr()
    assert assign_main([str(clinic / "patient_a"), "--forget"]) == 0 and "patient_a: forgotten" in capsys.readouterr().out
    assert assign_main([str(clinic / "patient_a"), "--forget"]) == 0 and "patient_a: nothing was remembered" in capsys.readouterr().out
    assert "patient_a" not in (tmp_path / "config" / "assignments.json").read_text(encoding="utf-8"), "its path, which may name the patient, is gone"
    assert predict_main([*predict, "--overwrite"]) == 1  # patient_a is unassigned again; patient_b still segmented


def test_files_named_by_their_plane_and_sequence_are_a_case_named_after_its_folder(phantom_dir, random_checkpoint, tmp_path):
    """AX_T1.nii.gz ... AX_SEG.nii.gz in each patient's folder read as BraTS names made every patient case 'AX': a batch
    was refused (outputs colliding), references were keyed 'AX' and a second patient's export was refused."""
    from napari_sevnet.cli import export_main
    from napari_sevnet.io import find_segmentations, load_case

    clinic = tmp_path / "clinic"
    for patient, seed in (("patient_a", "phantom_0000"), ("patient_b", "phantom_0001")):
        (clinic / patient).mkdir(parents=True)
        for role in ("t1", "t1ce", "t2", "flair", "seg"):
            shutil.copy(phantom_dir / seed / f"{seed}_{role}.nii.gz", clinic / patient / f"AX_{role.upper()}.nii.gz")
    assert load_case(clinic / "patient_a").case_id == "patient_a" and load_case(clinic / "patient_b" / "AX_T2.nii.gz").case_id == "patient_b"
    assert sorted(find_segmentations(clinic)) == ["patient_a", "patient_b"]
    out = tmp_path / "pred"
    assert predict_main([str(clinic), "-o", str(out), "--checkpoint", str(random_checkpoint), "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.glob("*_seg.nii.gz")) == ["patient_a_seg.nii.gz", "patient_b_seg.nii.gz"]
    assert evaluate_main([str(out), str(clinic)]) == 0
    assert [row["case"] for row in json.loads((out / "metrics.json").read_text())["cases"]] == ["patient_a", "patient_b"]
    for patient in ("patient_a", "patient_b"):
        assert export_main([str(clinic / patient), str(clinic / patient / "AX_SEG.nii.gz"), "-d", str(tmp_path / "dataset")]) == 0
    assert sorted(p.name for p in (tmp_path / "dataset").iterdir() if p.is_dir()) == ["patient_a", "patient_b"]


def test_files_named_by_their_sequence_alone_are_a_case_named_after_its_folder(phantom_dir, random_checkpoint, tmp_path, monkeypatch, capsys):
    """t1.nii.gz, flair.nii.gz, seg.nii.gz: as plain as BraTS names (many tools write cases so), read without an Assign step."""
    from napari_sevnet.assignments import load_assigned_or_named

    monkeypatch.setenv("SEVNET_CONFIG_DIR", str(tmp_path / "config"))
    source = phantom_dir / "phantom_0000"
    patient = tmp_path / "clinic" / "Patient Müller é"
    patient.mkdir(parents=True)
    for role, name in (("t1", "t1.nii.gz"), ("t1ce", "T1ce.nii.gz"), ("t2", "t2.nii.gz"), ("flair", "FLAIR.nii.gz"), ("seg", "seg.nii.gz")):
        shutil.copy(source / f"phantom_0000_{role}.nii.gz", patient / name)
    case = load_assigned_or_named(patient)
    assert case.case_id == "Patient Müller é" and not case.missing and case.regions.sum() == load_assigned_or_named(source).regions.sum()
    assert load_assigned_or_named(patient / "T1ce.nii.gz").sequences == case.sequences, "one of its files opens the case"
    out = tmp_path / "pred"
    args = [str(patient), "-o", str(out), "--checkpoint", str(random_checkpoint), "--device", "cpu"]
    assert predict_main(args) == 0 and (out / "Patient Müller é_seg.nii.gz").is_file()
    import locale

    ctype = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")  # ASCII, as a server's locale may be (and as GDCM leaves it after writing DICOM)
    try:
        assert evaluate_main([str(out), str(patient.parent)]) == 0  # the folder's seg.nii.gz is its reference
    finally:
        locale.setlocale(locale.LC_CTYPE, ctype)
    assert [row["case"] for row in json.loads((out / "metrics.json").read_text())["cases"]] == ["Patient Müller é"]

    (patient / "FLAIR.nii.gz").rename(patient / "AX_FLAIR_3D.nii.gz")  # the missing FLAIR may be this file: not segmented without it
    assert predict_main([*args, "--overwrite"]) == 1
    assert "Not recognised as BraTS names: AX_FLAIR_3D.nii.gz" in capsys.readouterr().err
    shutil.copy(source / "phantom_0000_flair.nii.gz", patient / "flair.nii")
    shutil.copy(source / "phantom_0000_flair.nii.gz", patient / "flair.nii.gz")  # named twice: which one is not guessed
    (patient / "AX_FLAIR_3D.nii.gz").unlink()
    assert predict_main([*args, "--overwrite"]) == 1
    assert "duplicate flair files: flair.nii, flair.nii.gz" in capsys.readouterr().err
    (patient / "flair.nii").unlink()
    t2 = nib.load(patient / "t2.nii.gz")
    nib.save(nib.Nifti1Image(np.asanyarray(t2.dataobj)[2:], t2.affine), patient / "t2.nii.gz")  # series on their own grids, as a scanner writes them
    assert predict_main([*args, "--overwrite"]) == 1
    assert "These look like raw series, each on its own grid: prepare them first" in capsys.readouterr().err


def test_probability_maps_are_written_in_8_bits_unless_float32_is_asked(phantom_dir, random_checkpoint, tmp_path):
    """A batch with maps filled disks at 11 MB a map; 8 bits keep what a probability says (steps of 1/255)."""
    case = phantom_dir / "phantom_0000"
    runs = {}
    for name, extra in (("eight", []), ("full", ["--float32-maps"])):
        assert predict_main([str(case), "-o", str(tmp_path / name), "--probabilities", "--checkpoint", str(random_checkpoint), "--device", "cpu", *extra]) == 0
        runs[name] = nib.load(tmp_path / name / "phantom_0000_prob_WT.nii.gz")
    assert runs["eight"].get_data_dtype() == np.uint8 and runs["full"].get_data_dtype() == np.float32
    eight, full = runs["eight"].get_fdata(), runs["full"].get_fdata()
    assert 0 < full.max() <= 1 and np.abs(eight - full).max() <= 0.5 / 255 + 1e-6, "read back as probabilities, within half a step"
    np.testing.assert_array_equal(runs["eight"].affine, runs["full"].affine)


def test_a_batch_run_again_with_skip_existing_keeps_what_a_finished_run_left_and_does_the_rest(phantom_dir, random_checkpoint, tmp_path, capsys):
    """After a crash or a stop halfway through a folder: the finished cases are kept, the others done, and a result of other settings is not taken for done."""
    cases = tmp_path / "cases"
    shutil.copytree(phantom_dir, cases)
    out = tmp_path / "pred"
    base = ["-o", str(out), "--checkpoint", str(random_checkpoint), "--device", "cpu"]
    assert predict_main([str(cases / "phantom_0000"), *base]) == 0
    finished = (out / "phantom_0000_seg.nii.gz").stat().st_mtime_ns
    capsys.readouterr()
    assert predict_main([str(cases), *base, "--skip-existing"]) == 0
    err = capsys.readouterr().err
    assert "1 of 3 cases were done already" in err and (out / "phantom_0000_seg.nii.gz").stat().st_mtime_ns == finished
    assert all((out / f"phantom_000{i}_report.json").is_file() for i in range(3))
    assert predict_main([str(cases), *base]) == 1, "without the flag, a finished case is an error"
    assert "already exists; pass --overwrite to replace it, or --skip-existing" in capsys.readouterr().err
    assert predict_main([str(cases), *base, "--skip-existing", "--tta"]) == 1, "made without TTA: not the run asked for"
    assert "is a run with test-time augmentation off: pass --overwrite" in capsys.readouterr().err
    assert predict_main([str(cases), *base, "--skip-existing", "--probabilities"]) == 1
    assert "no prob_WT, prob_TC, prob_ET" in capsys.readouterr().err
    (out / "phantom_0001_seg.nii.gz").unlink()  # a result half gone is not done
    assert predict_main([str(cases / "phantom_0001"), *base, "--skip-existing"]) == 1 and "no phantom_0001_seg.nii.gz" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        predict_main([str(cases), *base, "--skip-existing", "--overwrite"])
