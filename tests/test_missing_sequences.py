"""Cases that lack one to three MRI sequences: read when allowed, refused by name otherwise, segmented and recorded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_sevnet.assumptions import sequence_set_warnings
from napari_sevnet.checkpoint import CheckpointInfo, save_checkpoint
from napari_sevnet.errors import InputError
from napari_sevnet.inference import Predictor
from napari_sevnet.io import MODALITIES, load_case
from napari_sevnet.model import build_model
from napari_sevnet.phantom import write_phantom

BIN = Path(sys.executable).parent
SHAPE = (32, 40, 32)


@pytest.fixture(scope="module")
def dropout_checkpoint(tmp_path_factory) -> Path:
    """A seeded tiny SEV-Net declared as trained with sequence dropout: plumbing only, never a result."""
    torch.manual_seed(0)
    info = CheckpointInfo(architecture={"name": "sevnet", "config": {"preset": "tiny"}},
                          preprocessing={"crop": "nonzero-box", "normalize": "zscore-over-brain", "patch_size": [32, 32, 32], "sequence_dropout": 0.5})
    return save_checkpoint(tmp_path_factory.mktemp("dropout") / "tiny", build_model("sevnet", {"preset": "tiny"}), info)


def without(folder: Path, *sequences: str) -> Path:
    for m in sequences:
        (folder / f"{folder.name}_{m}.nii.gz").unlink()
    return folder


def test_the_reader_takes_a_partial_case_only_when_allowed_and_names_what_is_missing(tmp_path):
    folder = without(write_phantom(tmp_path, seed=1, shape=SHAPE), "t1", "t2")
    with pytest.raises(InputError, match=r"missing modalities \['t1', 't2'\].*--allow-missing"):
        load_case(folder)
    case = load_case(folder, allow_missing=True)
    assert case.sequences == ("t1ce", "flair") and case.missing == ("t1", "t2")
    assert not case.image[[0, 2]].any() and case.image[[1, 3]].any() and case.regions is not None
    only_seg = without(write_phantom(tmp_path / "b", seed=2, shape=SHAPE), *MODALITIES)
    with pytest.raises(InputError, match="no MRI sequence"):
        load_case(only_seg, allow_missing=True)


def test_a_model_trained_with_all_sequences_refuses_a_partial_case_by_name(tmp_path, random_checkpoint):
    case = load_case(without(write_phantom(tmp_path, seed=1, shape=SHAPE), "t2"), allow_missing=True)
    with pytest.raises(InputError, match="has no T2"):
        Predictor(random_checkpoint, "cpu").predict(case.image, sequences=case.sequences)


@pytest.mark.parametrize("left_out", MODALITIES)
def test_each_single_sequence_removed_segments_through_the_library_and_the_cli(tmp_path, dropout_checkpoint, left_out):
    folder = without(write_phantom(tmp_path / "cases", seed=1, shape=SHAPE), left_out)
    case = load_case(folder, allow_missing=True)
    result = Predictor(dropout_checkpoint, "cpu").predict(case.image, sequences=case.sequences)
    assert result.sequences == case.sequences and result.regions.shape[1:] == case.shape
    assert any("segmented without" in note for note in result.notes)
    assert any("no held-out figures for missing sequences" in w for w in result.warnings), result.warnings
    assert any("without T1ce" in w for w in result.warnings) == (left_out == "t1ce")
    refused = subprocess.run([str(BIN / "sevnet-predict"), str(folder), "-o", str(tmp_path / "no"), "--checkpoint", str(dropout_checkpoint)], capture_output=True, text=True)
    assert refused.returncode == 1 and "--allow-missing" in refused.stderr
    done = subprocess.run([str(BIN / "sevnet-predict"), str(folder), "-o", str(tmp_path / "out"), "--allow-missing", "--checkpoint", str(dropout_checkpoint)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "out" / f"{folder.name}_report.json").read_text(encoding="utf-8"))
    assert report["sequences"] == list(case.sequences) and any("segmented without" in n for n in report["notes"])
    assert report["warnings"] == result.warnings and "warning: " in done.stderr


def test_a_partial_result_carries_the_held_out_figures_of_its_set_of_sequences_or_says_it_has_none():
    figures = {"cases": ["a", "b"], "mean_dice": {"all four": {"WT": 0.85, "TC": 0.74, "ET": 0.71}, "FLAIR + T1ce": {"WT": 0.83, "TC": 0.68, "ET": 0.70}}}
    assert sequence_set_warnings(MODALITIES, figures) == []
    (measured,) = sequence_set_warnings(("flair", "t1ce"), figures)
    assert "T1ce, FLAIR only" in measured and "WT 0.83 / TC 0.68 / ET 0.70" in measured and "2 held-out cases" in measured and "all four: WT 0.85" in measured
    no_contrast, unscored = sequence_set_warnings(("t1", "flair"), figures, "the recipe")
    assert "without T1ce" in no_contrast and "(ET)" in no_contrast
    assert "the recipe was never scored with T1, FLAIR only" in unscored and "all four: WT 0.85" in unscored
    (unknown,) = sequence_set_warnings(("t1ce", "t2"), None)
    assert "no held-out figures" in unknown and "T1ce, T2" in unknown


def test_the_trainer_drops_sequences_and_declares_it(phantom_dir, tmp_path):
    from training.config import AugmentConfig, from_dict
    from training.data import RandDropSequences
    from training.loop import train

    transform = RandDropSequences(1.0)
    transform.set_random_state(0)
    image = np.ones((4, 8, 8, 8), np.float32)
    kept = [tuple(np.flatnonzero(transform({"image": image})["image"].reshape(4, -1).any(1))) for _ in range(200)]
    assert all(0 < len(k) < 4 for k in kept) and len(set(kept)) == 14, "every proper non-empty subset, never none"
    assert AugmentConfig().sequence_dropout is None
    cfg = from_dict({"model": {"name": "sevnet", "config": {"preset": "tiny"}}, "data": {"roots": [str(phantom_dir)], "val_cases": 1, "cache_dir": str(tmp_path / "c")},
                     "patch_size": [32, 32, 32], "epochs": 1, "steps_per_epoch": 1, "output": str(tmp_path / "run"), "augment": {"sequence_dropout": 0.5}})
    run = train(cfg)
    assert Predictor(run / "last.json", "cpu").handles_missing_sequences


def test_a_case_lacking_a_sequence_trains_a_model_with_sequence_dropout_and_is_refused_by_name_without(phantom_dir, tmp_path):
    from training.config import from_dict
    from training.data import RandDropSequences
    from training.loop import train

    transform = RandDropSequences(1.0)
    transform.set_random_state(0)
    image = np.ones((4, 8, 8, 8), np.float32)
    image[1] = 0  # the case has no T1ce
    assert all(transform({"image": image})["image"].any() for _ in range(200)), "a patch never loses every sequence the case has"
    partial = without(write_phantom(tmp_path / "partial", seed=5, shape=SHAPE), "t1ce")

    def config(dropout):
        return from_dict({"model": {"name": "sevnet", "config": {"preset": "tiny"}}, "data": {"roots": [str(phantom_dir), str(tmp_path / "partial")], "val_cases": 0,
                          "cache_dir": str(tmp_path / "c")}, "patch_size": [32, 32, 32], "epochs": 1, "steps_per_epoch": 1,
                          "output": str(tmp_path / f"run{dropout}"), "augment": {"sequence_dropout": dropout}})

    with pytest.raises(ValueError, match=rf"{partial.name} lacks t1ce.*not trained for missing sequences"):
        train(config(0.0))
    run = train(config(0.5))
    assert any(Path(p).name == partial.name for p in json.loads((run / "last.json").read_text(encoding="utf-8"))["provenance"]["train_cases"])


@pytest.mark.qt
def test_the_segment_dock_runs_with_a_sequence_set_to_none_and_records_it(qtbot, make_napari_viewer, tmp_path, dropout_checkpoint):
    from napari_sevnet.layers import LayerInfo
    from napari_sevnet.widgets.attention import AttentionWidget
    from napari_sevnet.widgets.segment import SegmentWidget

    folder = without(write_phantom(tmp_path, seed=1, shape=SHAPE), "t1")
    viewer = make_napari_viewer()
    segment, attention = SegmentWidget(viewer), AttentionWidget(viewer)
    viewer.window.add_dock_widget(segment)
    viewer.window.add_dock_widget(attention)
    segment.set_checkpoint(dropout_checkpoint)
    assert len(viewer.open(str(folder), plugin="napari-sevnet")) == 3 + 3, "three sequences and the case's mask"
    assert segment._modalities["t1"].value is None and segment._modalities["flair"].value is not None
    segment.run()
    qtbot.waitUntil(lambda: segment.worker is None, timeout=120_000)
    info = LayerInfo.from_layer(segment.result_layers["WT"])
    assert info.sequences == ("t1ce", "t2", "flair") and "without T1" in segment._status.value
    attention._refresh()
    attention._source.value = segment.result_layers["WT"]
    attention.compute_contributions()
    assert attention._cancel.enabled and not attention._contribute.enabled
    attention.cancel()
    qtbot.waitUntil(lambda: attention.worker is None, timeout=120_000)
    assert "cancelled" in attention._status.value and not attention.contributions and attention._contribute.enabled
    attention.compute_contributions()
    n = len(viewer.layers)
    assert attention.show_feature_map("enc1", 1) is None and "still segmenting again" in attention._status.value, "one job at a time"
    qtbot.waitUntil(lambda: attention.worker is None, timeout=120_000)
    assert len(viewer.layers) == n
    chart = attention.contributions[id(segment.result_layers["WT"])]
    assert set(chart) == {"t1ce", "t2", "flair"} and all(set(v) == {"WT", "TC", "ET"} for v in chart.values())
    attention.show_feature_map("enc1", 0)  # from the three sequences the result had, not a missing T1 layer
    for channel in (1, 2, 1):  # clicks on other bars while it computes: each map holds GBs on a real case
        assert attention.show_feature_map("enc1", channel) is None and "still computing the enc1 ch0 feature map" in attention._status.value
    qtbot.waitUntil(lambda: attention.worker is None, timeout=120_000)
    assert len(viewer.layers) == n + 1 and viewer.layers[-1].name == "enc1 ch0 feature map", attention._status.value
