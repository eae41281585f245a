"""Train the click refiner (napari_sevnet/click_refiner.py) on simulated clicks on the training cases.

    python -m training.click_refiner            # make click-refiner: the split's training cases, about 4 min on 2 cores

The held-out model (benchmarks/checkpoints/, trained on the split's training
cases only) segments each training case; a simulated user then clicks the
centre of the largest error region, as the correction benchmark's user does,
and the ball around the click is set to the truth (so later clicks see the
states a good correction leaves), eight times per case and region, plus clicks
on randomly chosen error voxels of the model's output. Every click's ball gives
samples: features (:func:`click_features`) and whether the expert called the
voxel tumour. One network per region, trained with cross-entropy. The held-out
cases never take part: ``python -m benchmarks.correction`` scores the refiner
on them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from napari_sevnet.click_refiner import WEIGHTS, ClickRefiner, RefinerNet, case_guides, click_features, features, truth_in_ball
from napari_sevnet.correction import largest_error_centre
from napari_sevnet.regions import REGIONS

SESSION_CLICKS = 8
RANDOM_CLICKS = 6  # per kind of error (missed, false alarm) on the model's own output
KEEP = 0.3  # share of each ball's voxels kept as samples (neighbours say nearly the same)


def clicks_for(start: np.ndarray, truth: np.ndarray, spacing, rng: np.random.Generator, session: int = SESSION_CLICKS,
               random_clicks: int = RANDOM_CLICKS) -> list[tuple[np.ndarray, tuple, bool]]:
    """(mask the click is made on, voxel, missed?) of the simulated clicks on one region of one case."""
    clicks, current = [], start.copy()
    for _ in range(session):
        found = largest_error_centre(current, truth, spacing)
        if found is None:
            break
        clicks.append((current, *found))
        current = truth_in_ball(current, truth, found[0], spacing)
    for missed, error in ((True, truth & ~start), (False, start & ~truth)):
        inner = np.argwhere(ndimage.binary_erosion(error))  # not on a one-voxel sliver
        for i in rng.choice(len(inner), min(random_clicks, len(inner)), replace=False):
            clicks.append((start, tuple(int(v) for v in inner[i]), missed))
    return clicks


def samples(region, probability, start, truth, guides, spacing, rng, keep: float = KEEP, **clicks) -> tuple[np.ndarray, np.ndarray]:
    """(features, truth) of a share ``keep`` of the voxels in every simulated click's ball on ``region``."""
    xs, ys = [], []
    for current, seed, missed in clicks_for(start, truth, spacing, rng, **clicks):
        x, box, ball = click_features(region, current, seed, missed, probability, guides, spacing)
        chosen = rng.random(len(x)) < keep
        xs.append(x[chosen])
        ys.append(truth[box][ball][chosen])
    if not xs:
        return np.zeros((0, len(features(region))), np.float32), np.zeros(0, np.float32)
    return np.concatenate(xs), np.concatenate(ys).astype(np.float32)


def train_net(x: np.ndarray, y: np.ndarray, epochs: int = 4, batch: int = 4096, seed: int = 0, width: int = 64) -> tuple[RefinerNet, list[float]]:
    """A network fitted to (features, truth) with Adam and cross-entropy; and the loss of each epoch."""
    torch.manual_seed(seed)
    net = RefinerNet(x.shape[1], width)
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    losses = []
    for _ in range(epochs):
        order, total = torch.randperm(len(xt)), 0.0
        for i in range(0, len(order), batch):
            chosen = order[i : i + batch]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(xt[chosen]), yt[chosen])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item() * len(chosen)
        losses.append(total / max(len(xt), 1))
    return net.eval(), losses


def segmented(cases: dict, checkpoint):
    """(case id, case, ``checkpoint``'s result, the case's guides) for each of ``cases`` (id -> Case or folder), one at a time."""
    from napari_sevnet.inference import Predictor
    from napari_sevnet.io import load_case

    predictor = Predictor(checkpoint, "cpu")
    for case_id, source in cases.items():
        case = load_case(source) if isinstance(source, Path) else source
        yield case_id, case, predictor.predict(case.image, spacing=case.spacing), case_guides(case.image)


def train(cases: dict, checkpoint, seed: int = 0, epochs: int = 4, **clicks) -> ClickRefiner:
    """A refiner trained on ``cases`` (id -> Case or folder) segmented by ``checkpoint``."""
    rng = np.random.default_rng(seed)
    per_region = {r: ([], []) for r in REGIONS}
    started = time.time()
    for case_id, case, result, guides in segmented(cases, checkpoint):
        for i, region in enumerate(REGIONS):
            x, y = samples(region, result.probabilities[i], result.regions[i], case.regions[i], guides, case.spacing, rng, **clicks)
            per_region[region][0].append(x)
            per_region[region][1].append(y)
        print(f"  {case_id}: {sum(len(v[1][-1]) for v in per_region.values())} samples ({time.time() - started:.0f} s)", flush=True)
    nets, losses = {}, {}
    for region, (xs, ys) in per_region.items():
        nets[region], losses[region] = train_net(np.concatenate(xs), np.concatenate(ys), epochs=epochs, seed=seed)
        print(f"  {region}: loss per epoch {[round(v, 4) for v in losses[region]]} ({time.time() - started:.0f} s)", flush=True)
    info = {
        "what": "click refiner: per region, a network that redraws the 20 mm ball around a correcting click (napari_sevnet/click_refiner.py)",
        "trained_on": {"checkpoint": str(checkpoint), "cases": sorted(cases), "session_clicks": clicks.get("session", SESSION_CLICKS),
                       "random_clicks": clicks.get("random_clicks", RANDOM_CLICKS), "seed": seed, "epochs": epochs, "loss_per_epoch": losses},
        "date": time.strftime("%Y-%m-%d"),
    }
    return ClickRefiner(nets, info)


def main(argv=None) -> int:
    from benchmarks.real_heldout import DATA, HELD_OUT_MODEL, SPLIT, find_cases

    parser = argparse.ArgumentParser(prog="python -m training.click_refiner", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=str(HELD_OUT_MODEL), help="the model whose output the clicks correct (default: the held-out model)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("-o", "--output", type=Path, default=WEIGHTS, help="stem of the .safetensors and .json written")
    args = parser.parse_args(argv)
    split = json.loads(SPLIT.read_text(encoding="utf-8"))
    cases = find_cases(split["train"], DATA)
    refiner = train(cases, args.checkpoint, seed=args.seed, epochs=args.epochs)
    refiner.info["trained_on"]["split"] = f"{SPLIT.name}: its training cases; the held-out ones never take part"
    args.output.parent.mkdir(parents=True, exist_ok=True)
    refiner.save(args.output)
    print(f"wrote {args.output.with_suffix('.safetensors')} and .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
