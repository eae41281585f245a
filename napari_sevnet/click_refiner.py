"""A click that has learnt what a correction looks like: per region, a small network redraws the click's 20 mm ball.

:func:`napari_sevnet.correction.grow` and ``shrink`` follow the model's
probability. On the real held-out cases what the model gets wrong is mostly a
thin shell, 2-3 mm deep, around the tumour, where the probability cannot say
where the expert drew the edge (one threshold on it reaches Dice 0.90 on 2 of
6 cases), so those clicks barely move WT. Setting the click's 20 mm ball to the
truth would reach 0.90 in a median of 2 clicks: the information a click gives
is local and worth a lot, if the tool knows how to use it.

The refiner is conditioned on the click. For every voxel within
:data:`RADIUS_MM` of it, a multilayer perceptron sees the model's probability,
the current mask, the signed distance to its edge, the distance to the click,
the click's sign, what probability, edge distance and the guide sequences are
at the click, and the region's guide sequences (z-scored within the head, raw
and smoothed, and relative to the click's), and says whether the voxel is
tumour. The guides are FLAIR and T1ce for every region, and T2 as well for the
whole tumour, whose edge is the oedema T2 shows (:data:`GUIDES`). A positive
click only adds, a negative one only removes: a click never undoes the user's
work where it was not asked to, nor what an earlier click of the other sign
said (:func:`claimed_by_earlier`). About 0.05 s per click on a full case on 2
CPU cores (tens of thousands of voxels through a 64-wide network).

Trained by ``python -m training.click_refiner`` (``make click-refiner``) on
simulated clicks on the default model's output for its own training cases;
the held-out cases never take part. The weights are ``weights/click_refiner``
(safetensors + JSON with the provenance).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from napari_sevnet.correction import _ball_box
from napari_sevnet.errors import InputError

RADIUS_MM = 20.0  # the ball a click redraws (the oracle above: 20 mm, median 2 clicks to WT 0.90)
CONTEXT_MM = 8.0  # around the ball, so edge distances and smoothing near its rim see past it
SMOOTHING_MM = 1.5
EDGE_CLIP_MM = 15.0
LEVEL = 0.5  # the refiner's output above which a voxel is tumour (the Correct dock's slider moves it)
# The regions where the clicked voxel always changes (ClickRefiner.click). Chosen on the leave-one-out of the training
# cases (seed 0, session 25, docs/correction-experiments.md): it raised WT's and TC's Dice after 10 clicks on more cases than
# it lowered (WT 2 and 0, TC 5 and 1); ET's thin rim lost on 5 cases of 12 and on 7 after 20 clicks, so there a click the
# network disagrees with still changes nothing (and the dock says to move the slider).
CLICKED_VOXEL_CHANGES = frozenset({"WT", "TC"})
# The sequences each region's network compares voxels on. T2 for WT only: on three training cases held back from the
# refiner's training it raised WT's Dice after 1/3/5/8 clicks (0.882/0.891/0.894/0.907 -> 0.887/0.898/0.908/0.914) and
# left TC and ET about even, where two inputs fewer are the simpler network (docs/correction-experiments.md).
GUIDES = {"WT": ("flair", "t1ce", "t2"), "TC": ("flair", "t1ce"), "ET": ("flair", "t1ce")}
SEQUENCES = tuple(dict.fromkeys(g for names in GUIDES.values() for g in names))  # every region's guides: what case_guides normalises
PER_GUIDE = ("z", "z_minus_click", "smoothed", "smoothed_minus_click", "smoothed_at_click")
SHARED_FEATURES = ("probability", "mask", "edge_distance", "click_distance", "sign", "sign_x_edge_distance",
                   "probability_at_click", "edge_distance_at_click", "probability_minus_click")
WEIGHTS = Path(__file__).parent / "weights" / "click_refiner"


def features(region: str) -> tuple[str, ...]:
    """The names of the columns :func:`click_features` gives for ``region``."""
    return SHARED_FEATURES + tuple(f"{g}_{f}" for g in GUIDES[region] for f in PER_GUIDE)


def case_guides(image: np.ndarray) -> dict:
    """FLAIR, T1ce and T2 of a case's (4, Z, Y, X) image in the sequence order of :data:`napari_sevnet.io.MODALITIES`, normalised."""
    from napari_sevnet.io import MODALITIES

    return {g: normalise(image[MODALITIES.index(g)]) for g in SEQUENCES}


def truth_in_ball(current: np.ndarray, truth: np.ndarray, seed, spacing) -> np.ndarray:
    """``current`` with the refiner's ball around ``seed`` set to ``truth``: a perfect click, for simulations and the bound."""
    box, ball = _ball_box(current.shape, seed, RADIUS_MM, spacing)
    out = current.copy()
    out[box][ball] = truth[box][ball]
    return out


def _distance_mm(box: tuple, seed, spacing) -> np.ndarray:
    grids = np.ogrid[tuple(slice(b.start - c, b.stop - c) for b, c in zip(box, seed))]
    return np.sqrt(sum((g * s) ** 2 for g, s in zip(grids, spacing)))


def claimed_by_earlier(current: np.ndarray, box: tuple, seed, missed: bool, earlier, spacing) -> np.ndarray:
    """The voxels of ``box`` nearer (mm) to an earlier click of the other sign than to ``seed``: a new click leaves them alone.

    Without it two clicks undid each other: a removing click took some tumour along, the adding click on that tumour put
    the false alarm back, and the simulated user went round that cycle until the limit (CBICA_AQN_1's WT in the
    leave-one-out of the training cases: three states, Dice 0.827-0.842, from its 9th click to its 20th). ``earlier``:
    (voxel, added?) of each earlier click; one counts while its voxel still says what it said (an undone click, or one the
    brush overruled, no longer does).
    """
    claimed, mine = np.zeros(tuple(b.stop - b.start for b in box), bool), None
    for voxel, added in earlier:
        voxel = tuple(int(v) for v in voxel)
        if added == missed or bool(current[voxel]) != added:
            continue
        if np.sqrt(sum(((a - b) * s) ** 2 for a, b, s in zip(voxel, seed, spacing))) >= 2 * RADIUS_MM:
            continue  # nearer nowhere in the ball
        if mine is None:  # most clicks have no such earlier click: no distance grid for them
            mine = _distance_mm(box, seed, spacing)
        claimed |= _distance_mm(box, voxel, spacing) < mine
    return claimed


class RefinerNet(nn.Module):
    """Per voxel: features -> logit of tumour."""

    def __init__(self, inputs: int, width: int = 64):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(inputs, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)[:, 0]


def normalise(image: np.ndarray) -> np.ndarray:
    """z-score within the head (non-zero voxels), so the features do not depend on the scanner's scale."""
    image = np.asarray(image, dtype=np.float32)
    head = image[image != 0]
    if head.size < 2:
        return np.zeros_like(image)
    return (image - head.mean()) / (head.std() + 1e-6)


def click_features(region: str, current: np.ndarray, seed, missed: bool, probability: np.ndarray, guides: dict, spacing) -> tuple[np.ndarray, tuple, np.ndarray]:
    """(features (voxels of the ball, ``features(region)``), the ball's box, the ball in that box) for a click at ``seed``.

    ``guides``: at least the region's :data:`GUIDES`, as :func:`normalise` returns them.
    """
    seed = tuple(int(v) for v in seed)
    box, ball = _ball_box(current.shape, seed, RADIUS_MM, spacing)
    wide, _ = _ball_box(current.shape, seed, RADIUS_MM + CONTEXT_MM, spacing)
    inner = tuple(slice(b.start - w.start, b.stop - w.start) for b, w in zip(box, wide))
    around = np.asarray(current[wide], bool)
    edge = np.where(around, -ndimage.distance_transform_edt(around, sampling=spacing), ndimage.distance_transform_edt(~around, sampling=spacing))
    edge = np.clip(edge[inner], -EDGE_CLIP_MM, EDGE_CLIP_MM) / 5
    at = tuple(c - b.start for c, b in zip(seed, box))
    click_distance = _distance_mm(box, seed, spacing) / RADIUS_MM
    p = np.asarray(probability[box], dtype=np.float32)
    sign = 1.0 if missed else -1.0
    columns = [p, np.asarray(current[box], np.float32), edge, click_distance, sign, sign * edge, p[at], edge[at], p - p[at]]
    sigma = [SMOOTHING_MM / s for s in spacing]
    for name in GUIDES[region]:
        image = guides[name][wide]
        smoothed = ndimage.gaussian_filter(image, sigma)[inner]
        image = image[inner]
        columns += [image, image - image[at], smoothed, smoothed - smoothed[at], smoothed[at]]
    x = np.stack([np.broadcast_to(np.asarray(c, np.float32), ball.shape)[ball] for c in columns], axis=1)
    return x, box, ball


class ClickRefiner:
    """The trained networks, one per region, and their provenance."""

    def __init__(self, nets: dict[str, RefinerNet], info: dict | None = None):
        self.nets = {r: net.eval() for r, net in nets.items()}
        self.info = info or {}

    @classmethod
    def load(cls, path: str | Path = WEIGHTS) -> ClickRefiner:
        from safetensors.torch import load_file

        path = Path(path)
        weights, card = path.with_suffix(".safetensors"), path.with_suffix(".json")
        for f in (weights, card):
            if not f.is_file():
                raise InputError(f, "click refiner file not found (make click-refiner trains it)")
        info = json.loads(card.read_text(encoding="utf-8"))
        trained = info.get("features")
        if not isinstance(trained, dict) or any(tuple(trained.get(r, ())) != features(r) for r in info.get("regions", ())):
            raise InputError(card, "the click refiner was trained on other features than this version computes; retrain it (make click-refiner)")
        state = load_file(str(weights))
        nets = {}
        for region in info["regions"]:
            net = RefinerNet(len(features(region)), info["width"])
            net.load_state_dict({k.split(".", 1)[1]: v for k, v in state.items() if k.startswith(region + ".")})
            nets[region] = net
        return cls(nets, info)

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        from napari_sevnet.files import write_text_atomic

        path = Path(path)
        save_file({f"{r}.{k}": v.contiguous() for r, net in self.nets.items() for k, v in net.state_dict().items()}, str(path.with_suffix(".safetensors")))
        width = next(iter(self.nets.values())).layers[0].out_features
        write_text_atomic(path.with_suffix(".json"), json.dumps(self.info | {"features": {r: list(features(r)) for r in self.nets}, "regions": list(self.nets), "width": width}, indent=1) + "\n")

    def tumour_probability(self, region: str, current, seed, missed: bool, probability, guides: dict, spacing) -> tuple[np.ndarray, tuple, np.ndarray]:
        """(the refiner's tumour probability for the ball's voxels, box, ball)."""
        x, box, ball = click_features(region, current, seed, missed, probability, guides, spacing)
        with torch.no_grad():
            return torch.sigmoid(self.nets[region](torch.from_numpy(x))).numpy(), box, ball

    def click(self, region: str, current: np.ndarray, seed, missed: bool, probability: np.ndarray, guides: dict, spacing,
              level: float = LEVEL, reach_mm: float = RADIUS_MM, earlier=()) -> np.ndarray:
        """Bool mask of what a click changes: the voxels it adds (``missed``) or removes, within ``reach_mm`` (at most RADIUS_MM).

        On WT and TC (:data:`CLICKED_VOXEL_CHANGES`) the clicked voxel is what the user says it is: where the network, at
        ``level``, would leave it as it was, the click also takes the connected piece around it of voxels at least as
        tumour-like as it (adding) or at most (removing). Without that a click the network disagrees with changes nothing,
        and the simulated user clicked the same error again and again.

        ``earlier``: the earlier clicks on this region, (voxel, added?). The click leaves alone the voxels nearer to an
        earlier click of the other sign than to itself (:func:`claimed_by_earlier`), so it cannot undo what that click said.
        """
        seed = tuple(int(v) for v in seed)
        tumour, box, ball = self.tumour_probability(region, current, seed, missed, probability, guides, spacing)
        inside = np.zeros(ball.shape, np.float32)
        inside[ball] = tumour
        at = tuple(c - b.start for c, b in zip(seed, box))
        local = np.asarray(current[box], bool)
        side = (~local if missed else local) & ball & (_distance_mm(box, seed, spacing) <= min(reach_mm, RADIUS_MM))
        change = side & ((inside >= level) if missed else (inside < level))
        if region in CLICKED_VOXEL_CHANGES and side[at] and not change[at]:
            pieces, _ = ndimage.label(side & ((inside >= inside[at]) if missed else (inside <= inside[at])))
            change |= pieces == pieces[at]
        change &= ~claimed_by_earlier(current, box, seed, missed, earlier, spacing)
        out = np.zeros(current.shape, bool)
        out[box] = change
        return out
