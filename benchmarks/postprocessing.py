"""Choose the default's post-processing on the training cases, then score the choice once on the held-out cases.

    python -m benchmarks.postprocessing [--checkpoint CKPT] [--ablate SETTING] [-o benchmarks/results/postprocessing.json]

The model's probabilities are computed once per case (cached under
``runs/postprocessing_cache/``, keyed by the checkpoint's weights) and every
setting is applied to the same probabilities: the threshold of each region,
the smallest piece kept of each region (a whole-tumour piece goes from all
three regions, a core piece from core and enhancing, an enhancing piece from
enhancing only, so it stays core), and the BraTS rule that relabels a whole
enhancing tumour under N voxels as necrosis. The search changes one setting at
a time from the current one, in that order, keeping a change only when it
raises the objective on the 15 training cases (the mean over regions of Dice
and of the BraTS 2023 lesion-wise Dice, so specks that the voxel Dice hardly
sees count too), and goes over the settings again until a pass changes
nothing: a threshold raised to drop specks comes back down once the piece
sizes drop them. The held-out cases are scored with the shipped setting and the
chosen one and nothing is chosen on them. ``--ablate SETTING`` searches nothing:
it scores the shipped setting against the same with SETTING alone changed
(e.g. ``fill_core_holes``: the core's holes filled or not), per case, on both
parts. Writes JSON and prints a table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import platform
import time
from concurrent.futures import Executor, ProcessPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks.real_heldout import DATA, REGIONS, SPLIT, find_cases, write_results

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "runs" / "postprocessing_cache"
#: the values tried for each setting, in the order they are tuned
GRID = {
    "threshold_WT": (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    "threshold_TC": (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    "threshold_ET": (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    "min_ml_WT": (0.0, 0.1, 0.5, 1.0, 2.0, 5.0),
    "min_ml_TC": (0.0, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0),
    "min_ml_ET": (0.0, 0.02, 0.05, 0.1, 0.25, 0.5),  # 0.5 mL: about a sphere of 10 mm, RANO's smallest measurable lesion
    "min_et_voxels": (0, 50, 100, 200, 500),
    "fill_core_holes": (False, True),
}
PASSES = 3  # at most, over all settings
MARGIN = 6  # voxels around the tumour and the prediction kept when scoring: the lesion matching dilates by 3


def probabilities(predictor, cases: dict[str, Path]) -> dict[str, tuple[np.ndarray, np.ndarray, tuple]]:
    """Case id -> (``predictor``'s probabilities as uint8 0-255, expert regions, spacing), cropped around both; cached on disk."""
    from napari_sevnet.io import load_case

    cache = CACHE / hashlib.sha256(Path(predictor.checkpoint).with_suffix(".safetensors").read_bytes()).hexdigest()[:16]
    cache.mkdir(parents=True, exist_ok=True)
    out = {}
    for case_id, folder in cases.items():
        path = cache / f"{case_id}.npz"
        if not path.exists():
            case = load_case(folder)
            t0 = time.perf_counter()
            probs = predictor.predict(case.image).probabilities
            keep = (probs.max(0) > 0.1) | case.regions[0]
            box = tuple(slice(max(int(i.min()) - MARGIN, 0), int(i.max()) + MARGIN + 1) for i in np.nonzero(keep))
            np.savez_compressed(path, probs=np.round(probs[(slice(None), *box)] * 255).astype(np.uint8),
                                truth=case.regions[(slice(None), *box)], spacing=np.asarray(case.spacing))
            print(f"  {case_id}: probabilities in {time.perf_counter() - t0:.1f} s", flush=True)
        with np.load(path) as f:
            out[case_id] = (f["probs"], f["truth"], tuple(float(s) for s in f["spacing"]))
    return out


def apply(setting: dict, probs: np.ndarray, spacing: tuple) -> np.ndarray:
    """The nested regions the Predictor gives with ``setting`` from these probabilities."""
    from napari_sevnet.regions import make_nested, postprocess

    cut = np.asarray([setting[f"threshold_{r}"] for r in REGIONS]) * 255
    regions = make_nested(probs > cut[:, None, None, None])
    postprocess(regions, spacing, {r: setting[f"min_ml_{r}"] for r in REGIONS}, setting["min_et_voxels"], setting["fill_core_holes"])
    return regions


def _score_case(setting: dict, case: tuple) -> dict:
    from napari_sevnet.metrics import case_lesion_metrics, dice

    probs, truth, spacing = case
    regions = apply(setting, probs, spacing)
    lesion = case_lesion_metrics(regions, truth, spacing)
    return {r: {"dice": dice(regions[i], truth[i]), "lesion_dice": lesion[r]["lesion_dice"]} for i, r in enumerate(REGIONS)}


def score(setting: dict, data: dict, pool: Executor | None = None) -> dict:
    """Per-case Dice and lesion-wise Dice per region, their means and the objective."""
    per_case = (pool.map if pool else map)(_score_case, [setting] * len(data), data.values())
    cases = dict(zip(data, per_case))
    mean = {r: {k: float(np.mean([c[r][k] for c in cases.values()])) for k in ("dice", "lesion_dice")} for r in REGIONS}
    objective = float(np.mean([mean[r][k] for r in REGIONS for k in ("dice", "lesion_dice")]))
    return {"cases": cases, "mean": mean, "objective": objective}


def search(start: dict, data: dict, pool: Executor | None = None) -> tuple[dict, list[dict]]:
    """Coordinate search over GRID from ``start``: the setting with the best objective on ``data``; the trail of tries."""
    setting, trail = dict(start), []
    best = score(setting, data, pool)["objective"]
    for round_ in range(1, PASSES + 1):
        before = dict(setting)
        for name, values in GRID.items():
            for value in values:
                if value == setting[name]:
                    continue
                trial = setting | {name: value}
                objective = score(trial, data, pool)["objective"]
                trail.append({"pass": round_, "setting": name, "value": value, "objective": objective})
                print(f"  pass {round_}: {name} = {value}: {objective:.4f} (best {best:.4f})", flush=True)
                if objective > best + 1e-4:
                    setting, best = trial, objective
        if setting == before:
            break
    return setting, trail


def shipped_setting(p) -> dict:
    """The post-processing Predictor ``p`` applies (what its checkpoint declares), in GRID's terms."""
    return ({f"threshold_{r}": t for r, t in zip(REGIONS, p.thresholds)} | {f"min_ml_{r}": ml for r, ml in zip(REGIONS, p.min_component_ml)}
            | {"min_et_voxels": p.min_et_voxels, "fill_core_holes": p.fill_core_holes})


def declared(setting: dict) -> dict:
    """``setting`` as a checkpoint declares it (preprocessing entries the Predictor reads; training.publish --postprocessing)."""
    return {"thresholds": {r: setting[f"threshold_{r}"] for r in REGIONS}, "min_component_ml": {r: setting[f"min_ml_{r}"] for r in REGIONS},
            "min_et_voxels": setting["min_et_voxels"], "fill_core_holes": setting["fill_core_holes"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.postprocessing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="checkpoint (default: the bundled default)")
    parser.add_argument("--split", type=Path, default=SPLIT)
    parser.add_argument("--ablate", choices=GRID, help="no search: the shipped setting against the same with this one setting changed (a yes/no one flipped, else each other value)")
    parser.add_argument("-o", "--output", type=Path, help="JSON to write (default: print only)")
    args = parser.parse_args(argv)

    from napari_sevnet.inference import Predictor

    split = json.loads(args.split.read_text(encoding="utf-8"))
    predictor = Predictor(args.checkpoint, "cpu")  # its probabilities come before any clean-up
    print("probabilities of the training and held-out cases", flush=True)
    train = probabilities(predictor, find_cases(split["train"], DATA))
    held_out = probabilities(predictor, find_cases(split["held_out"], DATA))
    shipped = shipped_setting(predictor)
    with ProcessPoolExecutor(os.cpu_count() or 1, mp_context=multiprocessing.get_context("spawn")) as pool:
        if args.ablate:
            settings = [("shipped", shipped)] + [(f"{args.ablate} = {v}", shipped | {args.ablate: v}) for v in GRID[args.ablate] if v != shipped[args.ablate]]
            trail = []
        else:
            print(f"search on the {len(train)} training cases from {shipped}", flush=True)
            chosen, trail = search(shipped, train, pool)
            settings = [("shipped", shipped), ("chosen", chosen)]
        results = {name: {"setting": s, "declared": declared(s), "train": score(s, train, pool), "held_out": score(s, held_out, pool)} for name, s in settings}
    lines = ["| setting | cases | Dice WT / TC / ET | lesion-wise Dice WT / TC / ET |", "|---|---|---|---|"]
    for name, res in results.items():
        for part in ("train", "held_out"):
            m = res[part]["mean"]
            lines.append(f"| {name} | {part} ({len(res[part]['cases'])}) | " + " / ".join(f"{m[r]['dice']:.3f}" for r in REGIONS) + " | "
                         + " / ".join(f"{m[r]['lesion_dice']:.3f}" for r in REGIONS) + " |")
    if args.ablate:
        lines += ["", "| case | part | " + " | ".join(f"Dice WT / TC / ET, {name}" for name in results) + " |", "|---|---|" + "---|" * len(results)]
        lines += [f"| {case} | {part} | " + " | ".join(" / ".join(f"{res[part]['cases'][case][r]['dice']:.3f}" for r in REGIONS) for res in results.values()) + " |"
                  for part in ("train", "held_out") for case in results["shipped"][part]["cases"]]
        table = "\n".join(lines) + f"\n\nshipped: {declared(shipped)}"
    else:
        table = "\n".join(lines) + f"\n\nchosen on the training cases: {declared(chosen)}"
    print(table)
    if args.output:
        out = {"date": time.strftime("%Y-%m-%d %H:%M"), "host": platform.node(), "checkpoint": args.checkpoint or "bundled default",
               "train": split["train"], "held_out": split["held_out"], "grid": GRID, "trail": trail, "results": results}
        write_results(args.output, out, table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
