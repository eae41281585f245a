"""The click and fill tools on arrays (no Qt), and the simulated-annotator benchmark's quick mode."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_sevnet.correction import IMAGE_REACH_MM, fill_between, grow, largest_error_centre, move_threshold, shrink

ROOT = Path(__file__).resolve().parents[1]


def ball(shape, centre, radius):
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum((g - c) ** 2 for g, c in zip(grids, centre)) <= radius**2


def test_a_positive_click_adds_the_likely_region_around_it_and_never_floods():
    probability = np.where(ball((40, 40, 40), (20, 20, 20), 6), 0.45, 0.02).astype(np.float32)  # a lesion the model half-saw
    added, used = grow(probability, (20, 20, 20), threshold=0.3)
    assert used == 0.3 and added.sum() == ball((40, 40, 40), (20, 20, 20), 6).sum()
    everywhere = np.full((60, 60, 60), 0.9, np.float32)
    bounded, _ = grow(everywhere, (30, 30, 30), max_radius_mm=10, spacing=(1.0, 1.0, 1.0))
    assert bounded.sum() <= ball((60, 60, 60), (30, 30, 30), 10).sum(), "one click cannot flood the brain"
    faint = np.where(ball((40, 40, 40), (20, 20, 20), 6), 0.2, 0.01).astype(np.float32)  # below the threshold: it follows the click down
    assert grow(faint, (20, 20, 20), threshold=0.3)[0].sum() == ball((40, 40, 40), (20, 20, 20), 6).sum()


def test_where_the_model_saw_nothing_a_click_grows_on_the_image():
    image = np.where(ball((40, 40, 40), (20, 20, 20), 5), 300.0, 100.0).astype(np.float32)
    added, _ = grow(np.zeros(image.shape, np.float32), (20, 20, 20), image=image)
    assert added.sum() == ball((40, 40, 40), (20, 20, 20), 5).sum()
    uniform = np.full((40, 40, 40), 100.0, np.float32)  # brain as bright as the click: intensity cannot bound it, the short reach does
    added, _ = grow(np.zeros(uniform.shape, np.float32), (20, 20, 20), image=uniform, max_radius_mm=20)
    assert added.sum() == ball((40, 40, 40), (20, 20, 20), IMAGE_REACH_MM).sum()


def test_a_negative_click_removes_the_false_alarm_and_keeps_the_tumour_it_touches():
    tumour = ball((40, 40, 40), (20, 20, 14), 5)
    alarm = ball((40, 40, 40), (20, 20, 24), 4)
    mask = tumour | alarm
    probability = np.where(tumour, 0.95, np.where(alarm, 0.6, 0.0)).astype(np.float32)
    removed, _ = shrink(mask, (20, 20, 25), probability)
    assert (removed & alarm).sum() > 0.9 * (alarm & ~tumour).sum() and not (removed & tumour).any()
    assert not shrink(mask, (2, 2, 2), probability)[0].any(), "a click outside the mask removes nothing"


def test_a_negative_click_on_a_confident_rim_trims_near_the_click_and_a_deep_one_removes_the_island():
    shape = (48, 48, 48)
    mask = ball(shape, (24, 24, 24), 12)  # tumour of radius 10 with a 2-voxel false rim, all of it called with certainty
    sure = np.where(mask, 0.99, 0.0).astype(np.float32)
    rim_click = (24, 24, 36)  # on the mask's outermost voxel
    removed, _ = shrink(mask, rim_click, sure)
    assert removed.any() and not (removed & ~ball(shape, rim_click, IMAGE_REACH_MM)).any(), "a click on the rim reaches a few mm, not 20"
    unbounded, _ = shrink(mask, rim_click, sure, reach_per_depth=None)
    assert (unbounded & ball(shape, (24, 24, 24), 10)).sum() > 10 * (removed & ball(shape, (24, 24, 24), 10)).sum()
    island = ball(shape, (24, 24, 24), 6)
    gone, _ = shrink(island, (24, 24, 24), np.where(island, 0.99, 0.0).astype(np.float32))
    assert np.array_equal(gone, island), "a click deep in a false island removes all of it"


def test_moving_the_whole_edge_changes_only_the_band_between_the_thresholds_and_keeps_the_users_edits():
    shape = (40, 40, 40)
    distance = np.sqrt(sum((g - 20.0) ** 2 for g in np.ogrid[:40, :40, :40]))
    probability = np.clip(1.2 - distance / 10, 0, 1).astype(np.float32)  # 1 at the centre, falling off with the distance
    model = probability >= 0.8
    drawn = ball(shape, (20, 20, 34), 2)  # painted by the user where the model saw little: kept by any move
    speck = np.zeros(shape, bool)
    speck[2, 2, 2] = True
    probability[2, 2, 2] = 0.5  # apart from the region: lowering never adds it
    mask = model | drawn
    looser = move_threshold(mask, probability, 0.8, 0.5)
    assert np.array_equal(looser, mask | (probability >= 0.5) & ~speck) and not looser[2, 2, 2]
    tighter = move_threshold(mask, probability, 0.8, 0.9)
    assert np.array_equal(tighter, (probability >= 0.9) | drawn)
    assert np.array_equal(move_threshold(looser, probability, 0.5, 0.8), mask), "moving back restores the region"


def test_fill_between_slices_interpolates_the_shape():
    mask = np.zeros((11, 40, 40), bool)
    mask[0], mask[10] = ball((40, 40), (20, 20), 5), ball((40, 40), (20, 20), 11)
    filled = fill_between(mask, [0, 10])
    np.testing.assert_array_equal(filled[[0, 10]], mask[[0, 10]])
    assert abs(filled[5].sum() / (np.pi * 8**2) - 1) < 0.1, "half way, half the radius between"
    assert all(filled[k].sum() <= filled[k + 1].sum() for k in range(10))


def test_fill_between_slices_changes_only_where_the_brush_went():
    tumour = ball((21, 60, 60), (10, 40, 40), 9)  # the model's tumour, on every slice from 1 to 19
    drawn = tumour.copy()
    drawn[4, 5:11, 5:11] = drawn[14, 5:15, 5:15] = True  # a shape drawn beside it on two slices
    areas = {4: (slice(5, 11), slice(5, 11)), 14: (slice(5, 15), slice(5, 15))}
    filled = fill_between(drawn, [4, 14], areas=areas)
    beside = np.zeros(drawn.shape, bool)
    beside[:, 5:15, 5:15] = True
    np.testing.assert_array_equal(filled[~beside], drawn[~beside])  # the tumour between the slices is not redrawn
    assert all(filled[k, 5:15, 5:15].any() for k in range(4, 15)), "the drawn shape fills every slice between"
    assert (fill_between(drawn, [4, 14]) != drawn)[~beside].any(), "without areas the whole slices are interpolated"

    erased = tumour.copy()
    erased[[4, 14], 30:50, 30:40] = False  # a part of the tumour wiped off on two slices
    areas = {4: (slice(30, 50), slice(30, 40)), 14: (slice(30, 50), slice(30, 40))}
    filled = fill_between(erased, [4, 14], areas=areas)
    assert not filled[5:14, 30:50, 30:40].any(), "the wiped part is wiped on the slices between too"
    np.testing.assert_array_equal(filled[:, :, 40:], tumour[:, :, 40:])


def test_the_ceilings_find_the_threshold_and_the_margin_that_fix_the_whole_boundary():
    from benchmarks.correction import whole_boundary_ceilings

    truth = ball((40, 40, 40), (20, 20, 20), 10)
    distance = np.sqrt(((np.indices(truth.shape) - 20) ** 2).sum(0))
    probability = np.clip(1.5 - distance / 10, 0, 1)  # 0.5 exactly on the truth's border
    too_big = ball((40, 40, 40), (20, 20, 20), 12)  # a 2 mm rim all around
    found = whole_boundary_ceilings(probability, too_big, truth, (1.0, 1.0, 1.0))
    assert found["margin_mm"] == -2 and found["margin_dice"] > 0.95  # from 0.73
    assert found["threshold"] == 0.5 and found["threshold_dice"] > 0.97


def test_the_simulated_user_clicks_at_the_centre_of_the_largest_error():
    truth = ball((30, 30, 30), (15, 15, 15), 8)
    prediction = truth & ~ball((30, 30, 30), (15, 15, 21), 3)
    seed, missed = largest_error_centre(prediction, truth)
    assert missed and np.abs(np.subtract(seed, (15, 15, 21))).max() <= 1


def test_the_fewest_brush_strokes_count_the_fixes_a_perfect_brush_needs_and_bound_the_simulated_one():
    from benchmarks.correction import brush_tool, click_session, fewest_strokes, noc

    truth = np.zeros((20, 20, 20), bool)
    truth[:10, :10, :10] = True
    missing, extra = truth.copy(), truth.copy()
    missing[:3] = False  # 300 missed voxels: painting 119 of them reaches Dice 0.9005, 118 only 0.8999
    extra[10:13, :10, :10] = True  # 300 false ones: erasing 78 reaches 0.9001, 77 only 0.8997
    assert fewest_strokes(missing, truth, radius=0) == 119 and fewest_strokes(missing, truth) == 2  # 81 voxels a disc
    assert fewest_strokes(extra, truth, radius=0) == 78 and fewest_strokes(truth, truth) == 0
    truth = ball((30, 40, 40), (15, 20, 20), 8)
    start = truth.copy()
    start[11:20, 16:25, 16:25] = False  # a block missed inside the tumour
    strokes, _ = click_session(None, start, truth, (1.0, 1.0, 1.0), 30, brush_tool, target=1.0)
    reached = {t: noc(strokes, 30, t) for t in (0.8, 0.82, 0.84, 0.85, 0.88)}
    assert all(reached[t] >= fewest_strokes(start, truth, t) for t in reached) and max(reached.values()) < 30
    assert reached[0.82] == fewest_strokes(start, truth, 0.82) == 2, "two full discs of missed voxels: the bound is met"


@pytest.mark.slow
def test_the_correction_benchmark_quick_mode(tmp_path):
    out = tmp_path / "corr.json"
    subprocess.run([sys.executable, "-m", "benchmarks.correction", "--quick", "--max-clicks", "3", "--max-strokes", "6", "-o", str(out)], check=True, cwd=ROOT, capture_output=True, timeout=900)
    result = json.loads(out.read_text(encoding="utf-8"))
    assert set(result["summary"]) == {"WT", "TC", "ET"} and out.with_suffix(".png").is_file() and out.with_suffix(".md").is_file()
    for summary in result["summary"].values():
        assert 0 <= summary["median_noc90"] <= 3 and summary["median_click_s"] >= 0
        assert summary["best_threshold_dice"] >= summary["start_dice"] - 0.1 and 0 <= summary["cases_margin_reach_target"] <= 2
        assert 0 <= summary["median_edge_noc90"] <= 3 and summary["dice_after_edge"]["1"] >= summary["start_dice"] - 1e-9, "the best move never loses"
        assert 0 <= summary["median_refiner_noc90"] <= 3 and 0 <= summary["median_refiner_click_s"] <= summary["max_refiner_click_s"], "the learned clicks ran"
        assert 0 <= summary["median_edge_refiner_noc90"] <= 3 and summary["dice_after_edge_refiner"]["1"] == summary["dice_after_edge"]["1"], "same move, then learned clicks"
        assert summary["median_perfect_ball_noc90"] <= summary["median_noc90"], "the ball set to the truth bounds the clicks"
        assert 0 <= summary["median_fewest_strokes"] <= summary["median_brush_noc90"] or summary["median_brush_noc90"] == 6, "no brush beats the fewest strokes"
    assert "the fewest strokes any brush needs |" in out.with_suffix(".md").read_text(encoding="utf-8")


def test_the_correction_benchmark_scores_cases_given_and_refuses_a_refiner_trained_on_them(tmp_path):
    """``--cases``: the simulated user on cases of one's own; a click refiner whose card lists one of them is refused."""
    from benchmarks.correction import main, unseen_refiner
    from napari_sevnet.checkpoint import phantom_checkpoint
    from napari_sevnet.click_refiner import ClickRefiner
    from napari_sevnet.phantom import write_phantom

    folder = write_phantom(tmp_path / "cases", seed=7, shape=(48, 56, 48), contrast=0.4)
    out = tmp_path / "own.json"
    assert main(["--cases", str(folder), "--checkpoint", str(phantom_checkpoint()), "--refiner", str(tmp_path / "no_refiner"),
                 "--max-clicks", "1", "--max-strokes", "1", "-o", str(out)]) == 0
    result = json.loads(out.read_text(encoding="utf-8"))
    assert set(result["cases"]) == {folder.name} and result["part"] == f"cases given: {folder}"
    trained = ClickRefiner({}, {"trained_on": {"cases": ["case_a", folder.name]}})
    unseen_refiner(trained, tmp_path / "refiner", ["case_b"])
    with pytest.raises(SystemExit, match=rf"refiner\.json: the click refiner trained on \['{folder.name}'\]"):
        unseen_refiner(trained, tmp_path / "refiner", [folder.name, "case_b"])
