"""Uncertainty maps and scores, BraTS post-processing, lesion-wise metrics (library and CLIs)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_sevnet.checkpoint import phantom_checkpoint
from napari_sevnet.inference import Predictor, binary_entropy
from napari_sevnet.layers import LayerInfo
from napari_sevnet.metrics import LESION_HD95_MISS_MM, lesion_wise_metrics
from napari_sevnet.phantom import phantom_case, write_phantom
from napari_sevnet.regions import make_nested, postprocess
from napari_sevnet.uncertainty import uncertainty_summary

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def uncertain_predictor():
    return Predictor(phantom_checkpoint(), "cpu", tta=True, uncertainty=True)  # scores are asserted on phantoms


def test_entropy_is_zero_when_sure_and_one_bit_at_a_half():
    np.testing.assert_allclose(binary_entropy(np.array([0.0, 1.0, 0.5])), [0, 0, 1], atol=1e-5)


def test_an_ambiguous_tumour_scores_higher_than_a_clear_one(uncertain_predictor):
    scores = {}
    for name, contrast in (("clear", 1.0), ("ambiguous", 0.35)):
        case = phantom_case(11, (64, 72, 64), contrast=contrast)
        result = uncertain_predictor.predict(case.image)
        assert result.members == 8 and result.uncertainty.shape == result.probabilities.shape
        assert result.uncertainty.min() >= 0 and result.uncertainty.max() <= 1
        scores[name] = uncertainty_summary(result, case.spacing)
    print("uncertainty scores:", {k: v["score"] for k, v in scores.items()})
    assert scores["ambiguous"]["score"] > scores["clear"]["score"] + 0.1
    assert scores["ambiguous"]["mean_entropy_wt_bits"] > scores["clear"]["mean_entropy_wt_bits"]


def test_mc_dropout_members_disagree_and_a_model_without_dropout_is_refused():
    from napari_sevnet.checkpoint import CheckpointInfo
    from napari_sevnet.model import build_model

    torch.manual_seed(0)
    model = build_model("sevnet", {"preset": "tiny", "dropout": 0.3})
    info = CheckpointInfo(architecture={"name": "sevnet", "config": {"preset": "tiny", "dropout": 0.3}})
    case = phantom_case(2, (32, 32, 32))
    result = Predictor(model=model, info=info, device="cpu", uncertainty=True, mc_samples=4).predict(case.image)
    assert result.members == 4 and result.disagreement.any()
    assert not model.training and all(not m.training for m in model.modules()), "dropout is switched off again"
    with pytest.raises(ValueError, match="no(ne| dropout)"):
        Predictor(model=build_model("sevnet", {"preset": "tiny"}), info=info, device="cpu", mc_samples=4)


class _Planted(Predictor):
    """A predictor whose network 'sees' a planted ET of a chosen size inside a TC."""

    def __init__(self, et_voxels: int, **kwargs):
        from napari_sevnet.model import build_model

        super().__init__(model=build_model("sevnet", {"preset": "tiny"}), device="cpu", **kwargs)
        self.et_voxels = et_voxels

    def _infer(self, crop, report, is_cancelled, passes, uncertainty):
        probs = np.zeros((3, *crop.shape[1:]), np.float32)
        probs[:2, 2:12, 2:12, 2:12] = 0.9
        probs[2].reshape(-1)[np.flatnonzero(probs[1].reshape(-1))[: self.et_voxels]] = 0.9
        return probs, {}, None, 1


@pytest.mark.parametrize("et_voxels, removed", [(50, True), (300, False)])
def test_postprocessing_relabels_a_small_et_as_necrosis(et_voxels, removed):
    case = phantom_case(0, (32, 32, 32))
    plain = _Planted(et_voxels).predict(case.image)
    assert plain.regions[2].sum() == et_voxels and plain.postprocessing == {"thresholds": {"WT": 0.5, "TC": 0.5, "ET": 0.5}}, "off by default"
    result = _Planted(et_voxels, min_et_voxels=200).predict(case.image)
    assert result.postprocessing == plain.postprocessing | {"min_et_voxels": 200, "et_relabelled_voxels": et_voxels if removed else 0}
    assert bool(result.regions[2].sum() == 0) == removed
    np.testing.assert_array_equal(result.regions[1], plain.regions[1])  # the voxels stay tumour core


def _cube(mask, corner, size):
    z, y, x = corner
    mask[z : z + size, y : y + size, x : x + size] = True


def test_lesion_wise_metrics_match_hand_computed_values():
    truth, pred = np.zeros((60, 60, 60), bool), np.zeros((60, 60, 60), bool)
    _cube(truth, (5, 5, 5), 5)  # 125 mm^3, found exactly
    _cube(pred, (5, 5, 5), 5)
    _cube(truth, (40, 40, 40), 5)  # 125 mm^3, missed
    _cube(truth, (5, 45, 5), 3)  # 27 mm^3 <= 50: not scored, and the prediction on it is no false positive
    _cube(pred, (5, 45, 5), 3)
    _cube(pred, (45, 5, 45), 4)  # a false positive
    m = lesion_wise_metrics(pred, truth)
    assert (m["lesions"], m["lesions_too_small"], m["false_positives"], m["missed"]) == (2, 1, 1, 1)
    assert m["lesion_dice"] == pytest.approx((1 + 0) / 3)
    assert m["lesion_hd95"] == pytest.approx((0 + LESION_HD95_MISS_MM + LESION_HD95_MISS_MM) / 3)


def test_lesion_wise_merges_close_lesions_and_handles_empty_masks():
    truth = np.zeros((40, 40, 40), bool)
    _cube(truth, (10, 10, 10), 5)
    _cube(truth, (10, 10, 17), 5)  # 2 voxels apart: one lesion after the 3-voxel dilation
    m = lesion_wise_metrics(truth.copy(), truth)
    assert m["lesions"] == 1 and m["lesion_dice"] == 1.0 and m["lesion_hd95"] == 0.0
    half = truth.copy()
    half[:, :, 17:] = False  # only the first part found
    m = lesion_wise_metrics(half, truth)
    assert m["lesions"] == 1 and m["lesion_dice"] == pytest.approx(2 * 125 / (125 + 250))
    empty = np.zeros_like(truth)
    assert lesion_wise_metrics(empty, empty)["lesion_dice"] == 1.0
    assert lesion_wise_metrics(empty, empty)["lesion_hd95"] == 0.0
    m = lesion_wise_metrics(truth, empty)
    assert m["lesion_dice"] == 0.0 and m["lesion_hd95"] == LESION_HD95_MISS_MM and m["false_positives"] == 2  # predictions are not merged


@pytest.mark.slow
def test_predict_uncertainty_and_evaluate_lesion_wise_clis(tmp_path):
    case_dir = write_phantom(tmp_path / "cases", seed=11, shape=(64, 72, 64), contrast=0.5)
    out = tmp_path / "pred"
    subprocess.run([str(BIN / "sevnet-predict"), str(case_dir), "-o", str(out), "--uncertainty", "--min-et-voxels", "200", "--checkpoint", str(phantom_checkpoint())], check=True, capture_output=True)
    report = json.loads((out / f"{case_dir.name}_report.json").read_text(encoding="utf-8"))
    assert report["tta"] is True and report["uncertainty"]["members"] == 8 and report["uncertainty"]["score"] > 0
    assert report["postprocessing"]["min_et_voxels"] == 200
    import nibabel as nib

    for region in ("WT", "TC", "ET"):
        img = nib.load(out / f"{case_dir.name}_uncertainty_{region}.nii.gz")
        np.testing.assert_array_equal(img.affine, nib.load(case_dir / f"{case_dir.name}_t1.nii.gz").affine)
    result = subprocess.run([str(BIN / "sevnet-evaluate"), str(out), str(tmp_path / "cases"), "--lesion-wise"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "WT LwDice" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert 0 <= metrics["mean"]["WT"]["lesion_dice"] <= 1 and "false_positives" in metrics["mean"]["WT"]


def test_the_worklist_marks_a_case_whose_result_carries_warnings(tmp_path):
    from napari_sevnet.worklist import WorkItem, run_worklist

    cases = tmp_path / "cases"
    complete = write_phantom(cases, seed=21, shape=(48, 56, 48))
    partial = write_phantom(cases, seed=22, shape=(48, 56, 48))
    (partial / f"{partial.name}_t1ce.nii.gz").unlink()
    items = {item.case_id: item for item in run_worklist(cases, Predictor(device="cpu"))}  # the default: trained for missing sequences
    # a small phantom is a small brain: both carry that warning; the one without T1ce carries what that costs as well
    assert not any("T1ce" in w for w in items[complete.name].warnings) and any("without T1ce" in w for w in items[partial.name].warnings)
    assert len(items[partial.name].warnings) > len(items[complete.name].warnings) > 0
    assert [item.status for item in items.values()] == [f"new; {len(item.warnings)} warning(s)" for item in items.values()]
    assert WorkItem("x", tmp_path, report={"warnings": []}).status == "new" and WorkItem("x", tmp_path, error="bad file").status == "error: bad file"
    # and the case without T1ce opens from the list, its result saying which sequences it was made from
    from napari_sevnet.layers import LayerInfo
    from napari_sevnet.widgets.worklist import case_result_layers

    opened = case_result_layers(items[partial.name], run=1)
    assert [LayerInfo.from_layer(layer).modality for layer in opened[:3]] == ["t1", "t2", "flair"]
    assert LayerInfo.from_layer(opened[3]).sequences == ("t1", "t2", "flair")


def test_the_worklist_reads_a_clinic_folder_by_the_assignment_remembered_in_napari(tmp_path, monkeypatch):
    from napari_sevnet.assignments import remember
    from napari_sevnet.widgets.worklist import case_result_layers
    from napari_sevnet.worklist import run_worklist

    monkeypatch.setenv("SEVNET_CONFIG_DIR", str(tmp_path / "config"))
    source = write_phantom(tmp_path / "src", seed=23, shape=(48, 56, 48))
    patient = tmp_path / "clinic" / "patient_c"
    patient.mkdir(parents=True)
    names = {"t1": "T1_pre", "t1ce": "T1_post", "t2": "AX_T2", "flair": "FLAIR"}
    for role, name in names.items():
        (patient / f"{name}.nii.gz").write_bytes((source / f"{source.name}_{role}.nii.gz").read_bytes())
    (item,) = run_worklist(tmp_path / "clinic", Predictor(device="cpu"))
    assert item.error and "Assign sequences" in item.error
    remember(patient, {role: patient / f"{name}.nii.gz" for role, name in names.items()})
    (item,) = run_worklist(tmp_path / "clinic", Predictor(device="cpu"))
    assert item.error is None and item.case_id == "patient_c" and item.report is not None
    assert len(case_result_layers(item, run=1)) > 4, "it opens, scans and result"
    # the sequences assigned anew (T1 and T1ce were swapped): the result made from the old roles is not shown again
    remember(patient, {**{role: patient / f"{name}.nii.gz" for role, name in names.items()}, "t1": patient / "T1_post.nii.gz", "t1ce": patient / "T1_pre.nii.gz"})
    (again,) = run_worklist(tmp_path / "clinic", Predictor(device="cpu"))
    assert not again.cached and again.report["inputs"]["t1"] == str(patient / "T1_post.nii.gz")


def test_two_visits_with_one_case_id_each_keep_their_own_cached_result(tmp_path):
    """Same-named files in two folders (two visits, a copy) are two cases: neither is shown the other's result."""
    from napari_sevnet.worklist import run_worklist

    cases = tmp_path / "cases"
    write_phantom(cases, seed=24, shape=(48, 56, 48)).rename(cases / "visit1")
    second = write_phantom(cases, seed=25, shape=(48, 56, 48))
    for f in second.iterdir():
        f.rename(second / f.name.replace("phantom_0025", "phantom_0024"))
    second.rename(cases / "visit2")
    predictor = Predictor(phantom_checkpoint(), "cpu")
    first = {item.folder.name: item for item in run_worklist(cases, predictor)}
    assert [item.case_id for item in first.values()] == ["phantom_0024", "phantom_0024"] and not any(item.cached for item in first.values())
    assert first["visit1"].report["volumes_ml"] != first["visit2"].report["volumes_ml"]
    again = {item.folder.name: item for item in run_worklist(cases, predictor)}
    assert all(item.cached for item in again.values())
    assert {name: item.report["volumes_ml"] for name, item in again.items()} == {name: item.report["volumes_ml"] for name, item in first.items()}
    # the first visit exported: it is done, the second (same id, other scans) is not; a copy of the first is
    from napari_sevnet.export import export_case
    from napari_sevnet.io import load_case

    first_case = load_case(cases / "visit1")
    export_case(first_case, first_case.regions, tmp_path / "ds")
    shutil.copytree(cases / "visit1", cases / "visit1_copy")
    done = {item.folder.name: item.done for item in run_worklist(cases, predictor, dataset=tmp_path / "ds")}
    assert done == {"visit1": True, "visit1_copy": True, "visit2": False}
    shutil.rmtree(cases / "visit1_copy")
    # opened beside the first visit, the second gets scan layers of its own, and its result's guides are those
    from napari_sevnet.layers import LayerInfo
    from napari_sevnet.widgets.worklist import case_result_layers

    shown = case_result_layers(again["visit1"], run=1)
    opened = case_result_layers(again["visit2"], run=2, taken=[layer.name for layer in shown])
    scans = {LayerInfo.from_layer(layer).modality: layer for layer in opened[:4]}
    assert scans["flair"].name == "phantom_0024 FLAIR (visit2)" and not {layer.name for layer in opened} & {layer.name for layer in shown}
    assert LayerInfo.from_layer(opened[4]).source_layers == {m: layer.name for m, layer in scans.items()}


def test_the_worklist_of_a_folder_it_cannot_write_keeps_its_results_in_the_users_cache(tmp_path, monkeypatch):
    from napari_sevnet.worklist import CACHE_DIR, run_worklist

    cases = tmp_path / "share"
    write_phantom(cases, seed=26, shape=(48, 56, 48))
    (cases / CACHE_DIR).write_text("not a folder: the cache cannot go here", encoding="utf-8")  # as a read-only share refuses it
    monkeypatch.setenv("SEVNET_CACHE_DIR", str(tmp_path / "user_cache"))
    predictor = Predictor(phantom_checkpoint(), "cpu")
    (item,) = run_worklist(cases, predictor)
    assert item.error is None and not item.cached and Path(item.report["segmentation"]).is_relative_to(tmp_path / "user_cache")
    if os.name == "posix":  # its reports name the scans' paths: for the user alone
        assert (tmp_path / "user_cache").stat().st_mode & 0o077 == 0
    (again,) = run_worklist(cases, predictor)
    assert again.cached and again.report["volumes_ml"] == item.report["volumes_ml"]


@pytest.mark.qt
def test_the_worklist_table_tells_two_visits_of_one_case_id_apart(make_napari_viewer, tmp_path):
    from napari_sevnet.widgets.worklist import WorklistWidget
    from napari_sevnet.worklist import WorkItem

    worklist = WorklistWidget(make_napari_viewer())
    worklist.items = [WorkItem("BraTS2021_00006", tmp_path / "2024-01"), WorkItem("BraTS2021_00006", tmp_path / "2024-06"), WorkItem("BraTS2021_00009", tmp_path / "x")]
    worklist._show()
    assert [worklist.table.item(row, 0).text() for row in range(3)] == ["BraTS2021_00006 (2024-01)", "BraTS2021_00006 (2024-06)", "BraTS2021_00009"]
    assert worklist.table.item(1, 0).toolTip() == str(tmp_path / "2024-06")


@pytest.mark.qt
def test_a_case_opened_from_the_worklist_alone_is_shown_radiological_with_its_sides_named(qtbot, make_napari_viewer, tmp_path):
    """With no Segment dock open it showed neurological and unlabelled, unlike the same case opened any other way."""
    from napari_sevnet.display import ORIENTATIONS
    from napari_sevnet.widgets.worklist import WorklistWidget

    write_phantom(tmp_path / "cases", seed=11, shape=(48, 56, 48))
    viewer = make_napari_viewer()
    worklist = WorklistWidget(viewer)
    viewer.window.add_dock_widget(worklist)
    worklist._folder.value = tmp_path / "cases"
    worklist.start()
    qtbot.waitUntil(lambda: worklist.worker is None, timeout=300_000)
    opener = worklist.open_case(worklist.items[0])
    assert worklist.open_case(worklist.items[0]) is opener, "double-clicked twice while it reads: opened once"
    qtbot.waitUntil(lambda: bool(worklist.opened) and worklist.opener is None, timeout=60_000)
    assert len([layer for layer in viewer.layers if layer.name.endswith(" WT (run 1)")]) == 1 and not any(" WT (run 2)" in layer.name for layer in viewer.layers)
    assert tuple(str(o.value) for o in viewer.camera.orientation2d) == ORIENTATIONS["radiological"]
    assert viewer.text_overlay.visible and "R on the left (radiological)" in viewer.text_overlay.text
    # corrected, then its layers deleted by mistake: opened from the list again, the correction comes back with it
    from napari_sevnet import recovery

    et = next(layer for layer in worklist.opened if layer.name.endswith("ET (run 1)"))
    et.paint((24, 2, 2), 1)
    recovery.flush()
    viewer.layers.clear()
    worklist.open_case(worklist.items[0])
    qtbot.waitUntil(lambda: bool(worklist.opened), timeout=60_000)
    recovered = [layer for layer in worklist.opened if layer.name.endswith("(recovered)")]
    assert [layer.name for layer in recovered] == [f"{worklist.items[0].case_id} {r} (recovered)" for r in ("WT", "TC", "ET", "WT uncertainty")]
    assert all(np.asarray(layer.data)[24, 2, 2] for layer in recovered[:3])
    worklist.start()  # the list says which case holds work not exported yet
    qtbot.waitUntil(lambda: worklist.worker is None, timeout=300_000)
    assert worklist.items[0].kept == 1 and "1 correction(s) not exported" in worklist.table.item(0, 5).text()
    for layer in recovered[:3]:
        viewer.layers.remove(layer)  # the recovered result not wanted: its copy goes, though its uncertainty map is still open
    recovery.flush()
    from napari_sevnet.layers import LayerInfo

    assert recovered[3] in viewer.layers and recovery.pending(LayerInfo.from_layer(recovered[0]).paths) == []


@pytest.mark.qt
def test_worklist_ranks_by_score_marks_exported_cases_and_opens_them(qtbot, make_napari_viewer, tmp_path, monkeypatch):
    from napari_sevnet.export import export_case
    from napari_sevnet.io import load_case
    from napari_sevnet.widgets.segment import SegmentWidget
    from napari_sevnet.widgets.worklist import WorklistWidget

    cases = tmp_path / "cases"
    for seed, contrast in ((11, 1.0), (12, 0.3), (13, 0.6)):
        write_phantom(cases, seed=seed, shape=(48, 56, 48), contrast=contrast)
    viewer = make_napari_viewer()
    segment = SegmentWidget(viewer)  # the worklist uses the Segment widget's model: here the phantom weights
    segment.set_checkpoint(phantom_checkpoint())
    worklist = WorklistWidget(viewer)
    viewer.window.add_dock_widget(segment)  # docks close with the viewer
    viewer.window.add_dock_widget(worklist)
    worklist._folder.value = cases
    worklist.start()
    qtbot.waitUntil(lambda: worklist.worker is None, timeout=300_000)
    scores = [item.score for item in worklist.items]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True), scores
    assert worklist.items[0].case_id == "phantom_0012", "the lowest-contrast case is the most uncertain"
    assert [worklist.table.item(row, 0).text() for row in range(3)] == [item.case_id for item in worklist.items]
    assert not any(item.cached or item.done for item in worklist.items)
    assert worklist._bar.value == 100 and worklist._status.value.startswith("3 case(s), most uncertain first")
    assert worklist._bar.label == "Cases", "once done, the bar is the folder's, not the last case's"
    assert all(item.report["uncertainty"]["members"] == 2 for item in worklist.items), "fast by default: the scan and its mirror"

    warned = []
    monkeypatch.setattr("napari.utils.notifications.show_warning", warned.append)
    worklist._dataset.value = cases  # the cases folder picked as the dataset by mistake: said, not an empty list of exports
    worklist.start()
    qtbot.waitUntil(lambda: worklist.worker is None, timeout=60_000)
    assert any("is not a napari-sevnet dataset (it holds no dataset.json)" in w for w in warned), warned
    case = load_case(cases / "phantom_0011")
    export_case(case, case.regions, tmp_path / "ds")
    worklist._dataset.value = tmp_path / "ds"
    worklist.start()
    qtbot.waitUntil(lambda: worklist.worker is None, timeout=60_000)
    assert all(item.cached for item in worklist.items), "the second pass reads the cache"
    assert {item.case_id for item in worklist.items if item.done} == {"phantom_0011"}
    status = worklist.table.item([i.case_id for i in worklist.items].index("phantom_0011"), 5)
    assert status.text() == "done (exported); 2 warning(s)", "a small phantom is a small brain, and the phantom model never saw a patient"
    assert "outside the 400-2200 mL" in status.toolTip() and "synthetic phantoms only" in status.toolTip()

    worklist.open_case(worklist.items[0])
    qtbot.waitUntil(lambda: bool(worklist.opened), timeout=60_000)  # the files are read in a worker
    added = worklist.opened
    names = [layer.name for layer in added]
    case_id = worklist.items[0].case_id
    assert names[:4] == [f"{case_id} {m}" for m in ("T1", "T1ce", "T2", "FLAIR")] and f"{case_id} WT uncertainty (run 1)" in names
    predicted = [layer for layer in added if getattr(LayerInfo.from_layer(layer), "prediction", None) is not None]
    assert len(predicted) == 3 and predicted[0].data.shape == added[0].data.shape
    from napari_sevnet.editing import editor_of

    assert editor_of(predicted[0]) is not None, "edits keep the opened result nested, one undo per edit"
    viewer.layers.selection.active = predicted[1]
    assert segment.result_layers["TC"] is predicted[1] and segment._volumes.value.startswith(f"{case_id} (run 1)"), "the volumes panel follows it"
    assert segment.checkpoint == str(phantom_checkpoint())
    # the Correct dock's clicks have what a Segment run gives them: the model's probabilities (kept in 8 bits) and the guides
    info = LayerInfo.from_layer(predicted[0])
    assert info.probabilities is not None and info.probabilities.shape == (3, *added[0].data.shape)
    wt = info.probabilities[0].astype(np.float32)
    assert wt[info.prediction[0]].mean() > 0.5 > wt[~info.prediction[0]].mean() and set(info.thresholds) == {"WT", "TC", "ET"}
    assert all(name in viewer.layers for name in info.source_layers.values()) and set(info.source_layers) == {"t1", "t1ce", "t2", "flair"}
    from napari_sevnet.widgets.correct import CorrectWidget

    correct = CorrectWidget(viewer)
    viewer.window.add_dock_widget(correct)
    assert not isinstance(correct._learned_inputs(info), str), correct._learned_inputs(info)
    # opened again, the scans already open are not added twice
    worklist.open_case(worklist.items[0])
    qtbot.waitUntil(lambda: bool(worklist.opened), timeout=60_000)
    assert [layer.name for layer in worklist.opened] == [f"{case_id} {r} (run 2)" for r in ("WT", "TC", "ET")] + [f"{case_id} WT uncertainty (run 2)"]


class _Speckled(_Planted):
    """A planted tumour core plus a one-voxel false alarm far away."""

    def _infer(self, crop, report, is_cancelled, passes, uncertainty):
        probs, attention, disagreement, members = super()._infer(crop, report, is_cancelled, passes, uncertainty)
        probs[0, -3, -3, -3] = 0.9
        return probs, attention, disagreement, members


def test_small_pieces_are_removed_when_asked_and_the_report_says_so():
    case = phantom_case(0, (32, 32, 32))
    plain = _Speckled(0).predict(case.image)
    cleaned = _Speckled(0, min_component_ml=0.5).predict(case.image, spacing=(1.0, 1.0, 1.0))
    assert plain.regions[0].sum() == cleaned.regions[0].sum() + 1
    assert cleaned.postprocessing == plain.postprocessing | {"min_component_ml": {"WT": 0.5}, "components_removed": {"WT": 1}}
    np.testing.assert_array_equal(cleaned.regions[1], plain.regions[1])


def test_small_core_and_enhancing_pieces_go_from_their_region_inward_and_the_regions_stay_nested():
    regions = np.zeros((3, 30, 30, 30), bool)
    _cube(regions[0], (2, 2, 2), 20)  # one whole tumour with a large core and a large enhancing part ...
    _cube(regions[1], (4, 4, 4), 8)
    _cube(regions[2], (5, 5, 5), 4)
    regions[1:, 18, 18, 18] = True  # ... a one-voxel core speck that enhances ...
    regions[2, 10, 10, 10] = True  # ... and a one-voxel enhancing speck in the large core
    before = regions.copy()
    record = postprocess(regions, (1.0, 1.0, 1.0), {"WT": 0.5, "TC": 0.01, "ET": 0.01}, None)
    assert record == {"min_component_ml": {"WT": 0.5, "TC": 0.01, "ET": 0.01}, "components_removed": {"WT": 0, "TC": 1, "ET": 1}}
    assert not regions[1:, 18, 18, 18].any() and regions[0, 18, 18, 18], "a core speck stays oedema"
    assert not regions[2, 10, 10, 10] and regions[1, 10, 10, 10], "an enhancing speck stays core"
    assert (regions[0] == before[0]).all() and regions[2].sum() == 64
    np.testing.assert_array_equal(make_nested(regions), regions)


def test_thresholds_per_region_and_one_number_for_all():
    case = phantom_case(0, (32, 32, 32))
    assert _Planted(0).thresholds == (0.5, 0.5, 0.5)
    assert _Planted(0, threshold=0.95).predict(case.image).regions.sum() == 0, "the planted 0.9 is under every threshold"
    partly = _Planted(300, threshold={"ET": 0.95}).predict(case.image)
    assert partly.regions[1].sum() == 1000 and partly.regions[2].sum() == 0
    with pytest.raises(ValueError, match="unknown regions"):
        _Planted(0, threshold={"NCR": 0.4})


def test_the_shipped_default_declares_its_cleanup_and_zero_turns_it_off():
    assert Predictor(device="cpu").min_component_ml[0] == 0.5
    assert Predictor(device="cpu", min_component_ml=0).min_component_ml == (0, 0, 0)
    assert Predictor(phantom_checkpoint(), "cpu").min_component_ml == (0, 0, 0)


def test_the_worklist_ranks_and_opens_a_case_whose_mask_it_cannot_read(tmp_path):
    """A clinic's mask painted 0/255 beside the scans kept the case off the list ("error"); ranking needs the scans only."""
    import nibabel as nib

    from napari_sevnet.widgets.worklist import case_result_layers
    from napari_sevnet.worklist import run_worklist

    folder = write_phantom(tmp_path / "cases", seed=21, shape=(48, 56, 48))
    seg = folder / f"{folder.name}_seg.nii.gz"
    img = nib.load(seg)
    nib.save(nib.Nifti1Image((np.asanyarray(img.dataobj) > 0).astype(np.uint8) * 255, img.affine), seg)
    (item,) = run_worklist(tmp_path / "cases", Predictor(device="cpu"))
    assert item.error is None and item.report is not None and item.score >= 0
    assert item.status.startswith("new; its mask not read"), "a user counting on the mask opening with the case is told"
    assert item.mask_not_read.startswith(f"its mask {seg.name} was not read (unknown label values [255]")
    (again,) = run_worklist(tmp_path / "cases", Predictor(device="cpu"))
    assert again.cached, "its result is kept like any other's"
    assert again.mask_not_read == item.mask_not_read, "and said again on the next visit"
    assert len(case_result_layers(item, run=1)) >= 7, "it opens: its scans and the model's WT/TC/ET"
