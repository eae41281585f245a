"""The click refiner on arrays (no Qt): its features, that a click only adds or only removes within its reach, the
file format, that training fits, and that the shipped one never saw the held-out cases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_sevnet.click_refiner import GUIDES, RADIUS_MM, WEIGHTS, ClickRefiner, RefinerNet, case_guides, click_features, features, normalise
from napari_sevnet.correction import largest_error_centre
from napari_sevnet.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


def ball(shape, centre, radius):
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum((g - c) ** 2 for g, c in zip(grids, centre)) <= radius**2


@pytest.fixture
def scene():
    """A bright lesion the mask covers only half of, and the model's probability for it."""
    shape = (48, 56, 56)
    lesion = ball(shape, (24, 28, 28), 10)
    rng = np.random.default_rng(0)
    flair = np.where(lesion, 3.0, 1.0) + rng.normal(0, 0.1, shape)
    t1ce = np.ones(shape) + rng.normal(0, 0.1, shape)
    t2 = np.where(lesion, 2.0, 1.0) + rng.normal(0, 0.1, shape)
    guides = {g: normalise(a.astype(np.float32)) for g, a in (("flair", flair), ("t1ce", t1ce), ("t2", t2))}
    mask = lesion & (np.arange(shape[2]) < 28)[None, None, :]
    probability = np.where(lesion, 0.6, 0.05).astype(np.float32)
    return mask, probability, guides, lesion


def random_refiner(seed=0) -> ClickRefiner:
    torch.manual_seed(seed)
    return ClickRefiner({r: RefinerNet(len(features(r)), 8) for r in ("WT", "TC", "ET")}, {"what": "untrained, for the mechanics"})


def test_the_features_of_a_click_cover_its_ball_and_carry_its_sign(scene):
    mask, probability, guides, _ = scene
    names = features("WT")
    x, box, ball_ = click_features("WT", mask, (24, 28, 34), True, probability, guides, (1.0, 1.0, 1.0))
    assert x.shape == (ball_.sum(), len(names)) and np.isfinite(x).all()
    assert (x[:, names.index("sign")] == 1).all() and x[:, names.index("click_distance")].max() <= 1.0
    x_neg, _, _ = click_features("WT", mask, (24, 28, 20), False, probability, guides, (1.0, 1.0, 1.0))
    assert (x_neg[:, names.index("sign")] == -1).all()
    centre = np.flatnonzero(np.all(np.argwhere(ball_) + [b.start for b in box] == (24, 28, 34), axis=1))[0]
    assert x[centre, names.index("flair_z_minus_click")] == 0 and x[centre, names.index("mask")] == 0
    assert x[centre, names.index("t2_z_minus_click")] == 0 and x[:, names.index("t2_z")].max() > 1, "WT compares on T2 too"


def test_each_region_compares_on_its_own_guides_and_a_case_gives_them_all(scene):
    mask, probability, guides, _ = scene
    for region in ("WT", "TC", "ET"):
        x, _, _ = click_features(region, mask, (24, 28, 34), True, probability, {g: guides[g] for g in GUIDES[region]}, (1.0, 1.0, 1.0))
        assert x.shape[1] == len(features(region))
    assert "t2_z" in features("WT") and "t2_z" not in features("TC") and "t2_z" not in features("ET")
    image = np.stack([(np.arange(1, 121, dtype=np.float32).reshape(4, 5, 6)) ** (c + 1) for c in range(4)])  # t1, t1ce, t2, flair
    guides = case_guides(image)
    assert set(guides) == {"flair", "t1ce", "t2"}
    for name, channel in (("t1ce", 1), ("t2", 2), ("flair", 3)):
        np.testing.assert_array_equal(guides[name], normalise(image[channel]))


@pytest.mark.parametrize("level", [0.0, 1.0])
def test_a_positive_click_only_adds_and_a_negative_one_only_removes_within_the_reach(scene, level):
    mask, probability, guides, _ = scene
    refiner = random_refiner()
    added = refiner.click("WT", mask, (24, 28, 34), True, probability, guides, (1.0, 1.0, 1.0), level=level, reach_mm=12)
    removed = refiner.click("WT", mask, (24, 28, 20), False, probability, guides, (1.0, 1.0, 1.0), level=level, reach_mm=12)
    assert not (added & mask).any() and not (removed & ~mask).any(), "monotone: a click never undoes what it was not asked about"
    assert not (added & ~ball(mask.shape, (24, 28, 34), 12)).any() and not (removed & ~ball(mask.shape, (24, 28, 20), 12)).any()
    reach_add, reach_remove = ball(mask.shape, (24, 28, 34), 12), ball(mask.shape, (24, 28, 20), 12)
    if level == 0.0:  # everything counts as tumour: a click adds every voxel of its reach not yet in the mask
        assert added.sum() == (reach_add & ~mask).sum()
    else:  # nothing does: a click removes the whole mask within its reach
        assert removed.sum() == (reach_remove & mask).sum()
    assert added[24, 28, 34] and removed[24, 28, 20], "the clicked voxel is what the user says it is, even where the network disagrees"


def probability_refiner(cut: float = 0.5) -> ClickRefiner:
    """A refiner whose networks say tumour where the model's probability is above ``cut``: a known verdict to click against."""
    nets = {}
    for region in ("WT", "TC", "ET"):
        net = RefinerNet(len(features(region)), 8)
        with torch.no_grad():
            for layer in net.layers[::2]:
                layer.weight.zero_()
                layer.bias.zero_()
            net.layers[0].weight[0, features(region).index("probability")] = 1.0
            net.layers[2].weight[0, 0] = 1.0
            net.layers[4].weight[0, 0] = 40.0
            net.layers[4].bias[0] = -40.0 * cut
        nets[region] = net
    return ClickRefiner(nets, {"what": "the model's probability above a cut, for the mechanics"})


def test_a_click_the_network_disagrees_with_takes_the_piece_as_tumour_like_as_the_clicked_voxel(scene):
    mask, probability, guides, lesion = scene
    probability = probability.copy()
    blob, other = ball(mask.shape, (24, 10, 10), 3), ball(mask.shape, (24, 4, 22), 3)  # both within the click's reach
    probability[blob | other] = 0.3  # faint, apart from the lesion: below the network's cut of 0.5
    refiner = probability_refiner()
    assert refiner.click("WT", mask, (24, 28, 34), True, probability, guides, (1.0, 1.0, 1.0)).sum() == (lesion & ~mask).sum()
    added = refiner.click("WT", mask, (24, 10, 10), True, probability, guides, (1.0, 1.0, 1.0))
    sure = lesion & ~mask & ball(mask.shape, (24, 10, 10), RADIUS_MM)  # what the network calls tumour anyway
    np.testing.assert_array_equal(added, blob | sure)  # and the faint blob clicked, not the other faint one nor the background
    assert not (added & other).any() and blob.sum() > 100
    on_et = refiner.click("ET", mask, (24, 10, 10), True, probability, guides, (1.0, 1.0, 1.0))
    assert not (on_et & blob).any() and (on_et & sure).any(), "on ET's thin rim the network's verdict stands (CLICKED_VOXEL_CHANGES)"
    removed = refiner.click("WT", mask, (24, 28, 20), False, probability, guides, (1.0, 1.0, 1.0))
    np.testing.assert_array_equal(removed, mask & ball(mask.shape, (24, 28, 20), RADIUS_MM))  # the mask's piece at most as tumour-like


def test_a_click_leaves_alone_what_lies_nearer_an_earlier_click_of_the_other_sign(scene):
    mask, probability, guides, lesion = scene
    refiner, spacing, seed = probability_refiner(), (1.0, 1.0, 1.0), (24, 28, 31)
    said_no = ((24, 28, 38), False)  # an earlier removing click whose voxel is still outside the mask
    alone = refiner.click("WT", mask, seed, True, probability, guides, spacing)
    np.testing.assert_array_equal(alone, lesion & ~mask)
    added = refiner.click("WT", mask, seed, True, probability, guides, spacing, earlier=[said_no])
    x = np.arange(mask.shape[2])[None, None, :]
    np.testing.assert_array_equal(added, lesion & ~mask & (x < 35))  # the two clicks' bisector lies at x = 34.5
    same_sign = refiner.click("WT", mask, seed, True, probability, guides, spacing, earlier=[((24, 28, 38), True)])
    np.testing.assert_array_equal(same_sign, alone)
    overruled = mask.copy()
    overruled[24, 28, 38] = True  # the brush (or an undo) put the earlier click's voxel back: that click no longer counts
    np.testing.assert_array_equal(refiner.click("WT", overruled, seed, True, probability, guides, spacing, earlier=[said_no]), lesion & ~overruled)


def test_save_and_load_keep_the_networks_and_a_stale_file_is_refused_by_name(scene, tmp_path):
    mask, probability, guides, _ = scene
    refiner = random_refiner(3)
    refiner.save(tmp_path / "refiner")
    again = ClickRefiner.load(tmp_path / "refiner")
    args = ("TC", mask, (24, 28, 34), True, probability, guides, (1.0, 1.0, 1.0))
    np.testing.assert_array_equal(refiner.tumour_probability(*args)[0], again.tumour_probability(*args)[0])
    card = json.loads((tmp_path / "refiner.json").read_text())
    (tmp_path / "refiner.json").write_text(json.dumps(card | {"features": card["features"] | {"WT": card["features"]["WT"][:-1]}}))
    with pytest.raises(InputError, match="refiner.json"):
        ClickRefiner.load(tmp_path / "refiner")
    with pytest.raises(InputError, match="not found"):
        ClickRefiner.load(tmp_path / "absent")


@pytest.mark.slow
def test_training_on_simulated_clicks_fits_and_the_result_clicks():
    from napari_sevnet.checkpoint import phantom_checkpoint
    from napari_sevnet.phantom import phantom_case
    from training.click_refiner import train

    case = phantom_case(seed=31, shape=(56, 64, 56), contrast=0.4)
    refiner = train({"p31": case}, phantom_checkpoint(), epochs=3, session=3, random_clicks=2)
    for region, losses in refiner.info["trained_on"]["loss_per_epoch"].items():
        assert losses[-1] < losses[0], f"{region}: the loss did not fall ({losses})"
    piece, added, wrong, _ = click_on_a_missed_piece(refiner, case)
    assert added > wrong, "a click on the missed piece adds more lesion than brain"


def click_on_a_missed_piece(refiner, case) -> tuple[int, int, int, int]:
    """(voxels of a piece the mask missed at the lesion's edge, of them a positive click there adds, brain it adds, of
    that brain more than 2 mm from the lesion)."""
    truth = case.regions[0]
    lesion = np.argwhere(truth)
    piece = ball(truth.shape, lesion[np.argmax(lesion[:, 2])] - (0, 0, 3), 6) & truth
    missed, _ = largest_error_centre(truth & ~piece, truth, case.spacing)
    probability = ndimage.gaussian_filter(truth.astype(np.float32), 1.5)
    change = refiner.click("WT", truth & ~piece, missed, True, probability, case_guides(case.image), case.spacing)
    far = ndimage.distance_transform_edt(~truth, sampling=case.spacing) > 2
    return int(piece.sum()), int((change & piece).sum()), int((change & ~truth).sum()), int((change & far).sum())


def test_the_shipped_refiner_never_saw_a_held_out_case():
    card = json.loads(WEIGHTS.with_suffix(".json").read_text(encoding="utf-8"))
    split = json.loads((ROOT / "training" / "configs" / "splits" / "real_brats_heldout.json").read_text(encoding="utf-8"))
    assert card["trained_on"]["cases"] and set(card["trained_on"]["cases"]) <= set(split["train"])
    assert not set(card["trained_on"]["cases"]) & set(split["held_out"])
    assert card["features"] == {r: list(features(r)) for r in ("WT", "TC", "ET")} and RADIUS_MM == 20.0


def test_the_shipped_refiner_fills_a_piece_missed_at_a_phantom_lesions_edge():
    from napari_sevnet.phantom import phantom_case

    piece, added, wrong, far = click_on_a_missed_piece(ClickRefiner.load(), phantom_case(seed=31, shape=(56, 64, 56), contrast=0.4))
    # the brain it adds is the lesion's rim, not a spill: WT's network (it reads T2) puts this synthetic edge about a
    # voxel wider than the lesion (106 voxels of brain, 101 of them within 2 mm); edge placement is measured on real
    # cases by benchmarks/correction.py
    assert added >= piece / 4 and added > wrong and far <= added / 20, f"added {added} of the {piece} missed voxels, {wrong} of brain, {far} of it beyond 2 mm"


@pytest.mark.slow
def test_leaving_a_training_case_out_scores_it_with_a_refiner_trained_without_it(tmp_path):
    from benchmarks import click_refiner_loo

    out = tmp_path / "loo.json"
    assert click_refiner_loo.main(["--quick", "--target", "0.995", "--max-clicks", "2", "-o", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["scored"] and result["features"] == list(features("WT"))
    every = set(result["scored"]) | set(result["not_scored_start_at_target"])
    for case_id, row in result["cases"].items():
        assert set(row["trained_on"]) == every - {case_id}, "the left-out case took part in its own refiner's training"
        assert row["dice"][0] < 0.995 and 1 <= len(row["dice"]) <= 3
    assert "| **median NoC, mean Dice** |" in out.with_suffix(".md").read_text()
