import numpy as np
import pytest
import torch

from napari_sevnet import metrics


def cube(shape, start, size):
    m = np.zeros(shape, bool)
    m[tuple(slice(s, s + size) for s in start)] = True
    return m


def test_brats_empty_rules():
    empty = np.zeros((8, 8, 8), bool)
    full = cube((8, 8, 8), (2, 2, 2), 3)
    assert metrics.dice(empty, empty) == 1.0
    assert metrics.hd95(empty, empty) == 0.0
    assert metrics.dice(full, empty) == 0.0
    assert metrics.hd95(full, empty) == metrics.HD95_ONE_EMPTY_MM
    assert metrics.hd95(empty, full) == metrics.HD95_ONE_EMPTY_MM
    m = metrics.region_metrics(empty, empty)
    assert m["sensitivity"] == m["precision"] == m["iou"] == m["specificity"] == 1.0


def test_hand_computed_values():
    a = cube((20, 20, 20), (5, 5, 5), 4)  # 64 voxels
    b = cube((20, 20, 20), (5, 5, 7), 4)  # shifted 2 voxels along x: overlap 32
    m = metrics.region_metrics(a, b, spacing=(1.0, 1.0, 3.0))
    assert m["dice"] == pytest.approx(2 * 32 / 128)
    assert m["iou"] == pytest.approx(32 / 96)
    assert m["sensitivity"] == pytest.approx(0.5)
    assert m["precision"] == pytest.approx(0.5)
    assert m["specificity"] == pytest.approx(1 - 32 / (8000 - 64))
    assert m["hd95"] == pytest.approx(6.0)  # 2 voxels of 3 mm


def test_against_monai():
    from monai.metrics import DiceMetric, HausdorffDistanceMetric

    rng = np.random.default_rng(0)
    pred = np.zeros((3, 24, 24, 24), bool)
    truth = np.zeros_like(pred)
    for c in range(3):
        pred[c] = cube((24, 24, 24), rng.integers(2, 10, 3), 8 - c)
        truth[c] = cube((24, 24, 24), rng.integers(2, 10, 3), 9 - c)
    ours = metrics.case_metrics(pred, truth, spacing=(1.0, 1.5, 2.0))
    p, t = torch.from_numpy(pred)[None].float(), torch.from_numpy(truth)[None].float()
    monai_dice = DiceMetric(include_background=True, reduction="none")(p, t)[0]
    monai_hd = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")(p, t, spacing=[1.0, 1.5, 2.0])[0]
    for i, r in enumerate(("WT", "TC", "ET")):
        assert ours[r]["dice"] == pytest.approx(float(monai_dice[i]), abs=1e-6)
        assert ours[r]["hd95"] == pytest.approx(float(monai_hd[i]), abs=1e-5)


def test_mean_metrics():
    a = {r: {m: 1.0 for m in metrics.METRIC_NAMES} for r in ("WT", "TC", "ET")}
    b = {r: {m: 0.0 for m in metrics.METRIC_NAMES} for r in ("WT", "TC", "ET")}
    assert metrics.mean_metrics([a, b])["TC"]["dice"] == 0.5
