"""How many interactions a correction takes: clicks on the model's probabilities against brush strokes.

    python -m benchmarks.correction [--quick] [--part held_out|train | --cases PATH ...] [--target 0.90] [--checkpoint CKPT] [--refiner STEM] [-o OUT.json]

The protocol of interactive-segmentation studies, on the held-out real cases
of ``training/configs/splits/real_brats_heldout.json`` (``--quick``: two small
phantoms, for the test suite; ``--part train``: the training cases, where the
tools' settings are chosen, with a higher ``--target`` since the model starts
near 0.9 there; ``--cases``: expert-labelled cases of one's own, which neither
the model nor the click refiner may have trained on): start from the default model's output; for
each region separately a simulated user places each interaction at the centre
of the largest error region (the error voxel farthest from its border) and
stops at Dice 0.90 or after ``--max-clicks``. A probability click is
:func:`napari_sevnet.correction.grow` on missed tumour or
:func:`~napari_sevnet.correction.shrink` on a false alarm; the baseline brush
stroke paints or erases a disc of radius 5 voxels on the axial slice through
that centre. Reported per region: clicks to Dice 0.90 (NoC@90; the limit when
never reached), Dice after 1, 3, 5 and 10 interactions, the CPU time of one
click on the full case, and the same for the brush; and a third session that
starts with one move of the whole edge (:func:`~napari_sevnet.correction.move_threshold`,
the Correct dock's "Whole edge" slider) to the best threshold of the grid
(chosen knowing the truth, so an upper bound of what a user's eye picks) and
goes on with clicks. The learned clicks of the click refiner
(:mod:`napari_sevnet.click_refiner`, the Correct dock's default) get the same
two sessions (clicks alone; the whole-edge move, then learned clicks), beside
a bound for any tool that acts within the refiner's ball: the ball around each
click set to the truth. JSON, markdown tables and a plot of
Dice against the number of interactions.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from napari_sevnet.click_refiner import WEIGHTS, ClickRefiner, case_guides, truth_in_ball
from napari_sevnet.correction import GUIDE_SEQUENCE, grow, largest_error_centre, move_threshold, shrink
from napari_sevnet.io import MODALITIES
from napari_sevnet.metrics import dice

REGIONS = ("WT", "TC", "ET")
TARGET = 0.90
BRUSH_RADIUS = 5
REPORT_AFTER = (1, 3, 5, 10)
THRESHOLDS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995)
MARGINS_MM = (-3, -2, -1, 1, 2, 3)


def click_session(probability, start, truth, spacing, limit, tool, image=None, target=TARGET) -> tuple[list[float], list[float]]:
    """Dice before and after each interaction, and the seconds each took, until Dice >= ``target`` or ``limit``."""
    current = start.copy()
    scores, seconds = [dice(current, truth)], []
    for _ in range(limit):
        if scores[-1] >= target:
            break
        found = largest_error_centre(current, truth, spacing)
        if found is None:
            break
        seed, missed = found
        t = time.perf_counter()
        current = tool(current, seed, missed, probability, spacing, image)
        seconds.append(time.perf_counter() - t)
        scores.append(dice(current, truth))
    return scores, seconds


def refiner_tool(refiner, region: str, guides: dict):
    """A click of the click refiner (napari_sevnet/click_refiner.py): it adds on missed tumour, removes on a false alarm.

    One per session: like the Correct dock, it remembers the session's clicks, which a later click does not undo.
    """
    earlier = []

    def tool(current, seed, missed, probability, spacing, image):
        change = refiner.click(region, current, seed, missed, probability, guides, spacing, earlier=earlier)
        earlier.append((seed, missed))
        return current | change if missed else current & ~change
    return tool


def perfect_ball_tool(truth):
    """The bound of any tool that acts within the refiner's ball: the ball around the click set to the truth."""
    def tool(current, seed, missed, probability, spacing, image):
        return truth_in_ball(current, truth, seed, spacing)
    return tool


def click_tool(current, seed, missed, probability, spacing, image):
    if missed:
        return current | grow(probability, seed, image=image, spacing=spacing)[0]
    return current & ~shrink(current, seed, probability, image=image, spacing=spacing)[0]


def whole_boundary_ceilings(probability, start, truth, spacing) -> dict:
    """Best Dice of one threshold on ``probability`` and of one margin (mm; negative shrinks) around ``start``, with what chose them."""
    by_threshold = {t: dice(probability >= t, truth) for t in THRESHOLDS}
    inside = ndimage.distance_transform_edt(start, sampling=spacing)
    outside = ndimage.distance_transform_edt(~start, sampling=spacing)
    by_margin = {m: dice(start | (outside <= m) if m > 0 else inside > -m, truth) for m in MARGINS_MM}
    threshold, margin = max(by_threshold, key=by_threshold.get), max(by_margin, key=by_margin.get)
    return {"threshold": threshold, "threshold_dice": by_threshold[threshold], "margin_mm": margin, "margin_dice": by_margin[margin]}


def best_edge_move(probability, start, truth, model_threshold, target=TARGET) -> tuple[float, np.ndarray]:
    """(threshold, mask) of one move of the whole edge; no move when the start already reaches ``target``.

    The move goes to the threshold of ``THRESHOLDS`` that scores best against
    the truth: what a user who judges the edge by eye picks at best, so an
    upper bound of the slider's first move.
    """
    if dice(start, truth) >= target:
        return model_threshold, start
    moved = {t: move_threshold(start, probability, model_threshold, t) for t in THRESHOLDS}
    best = max(moved, key=lambda t: dice(moved[t], truth))
    return best, moved[best]


def edge_then_clicks(probability, start, truth, spacing, moved, limit, image, target=TARGET, tool=click_tool) -> list[float]:
    """Dice before and after each interaction: the move to ``moved`` (:func:`best_edge_move`), then clicks of ``tool``."""
    if dice(start, truth) >= target:
        return [dice(start, truth)]
    scores, _ = click_session(probability, moved, truth, spacing, limit - 1, tool, image, target)
    return [dice(start, truth)] + scores


def brush_tool(current, seed, missed, probability, spacing, image):
    z, y, x = seed
    yy, xx = np.ogrid[: current.shape[1], : current.shape[2]]
    disc = (yy - y) ** 2 + (xx - x) ** 2 <= BRUSH_RADIUS**2
    out = current.copy()
    out[z][disc] = missed
    return out


def fewest_strokes(start, truth, target=TARGET, radius=BRUSH_RADIUS) -> int:
    """The fewest strokes of a disc of ``radius`` voxels that could take ``start`` to Dice ``target``: any brush user's bound.

    A stroke changes at most one disc's voxels, so it fixes at most that many
    errors. Dice = 2 TP / (|mask| + |truth|): painting a missed voxel gains
    2 - target on ``2 TP - target (|mask| + |truth|) >= 0``, erasing a false
    one target, so the fewest fixes take missed voxels first. The simulated
    brush stops at its limit; this says how far beyond it even a perfect one lies.
    """
    tp, fp, fn = int((start & truth).sum()), int((start & ~truth).sum()), int((~start & truth).sum())
    short = target * (2 * tp + fp + fn) - 2 * tp
    if short <= 0:
        return 0
    gain_missed, gain_false = 2 - target, target
    fixes = math.ceil(short / gain_missed - 1e-9) if short <= gain_missed * fn else fn + math.ceil((short - gain_missed * fn) / gain_false - 1e-9)
    yy, xx = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return math.ceil(fixes / int((yy**2 + xx**2 <= radius**2).sum()))


def noc(scores: list[float], limit: int, target: float = TARGET) -> int:
    """Interactions to reach ``target`` (0 when the start already does); ``limit`` when it was never reached."""
    return next((i for i, s in enumerate(scores) if s >= target), limit)


def after(scores: list[float], n: int) -> float:
    return scores[min(n, len(scores) - 1)]


def run(cases: dict, checkpoint, max_clicks: int, max_strokes: int, target: float = TARGET, refiner=None) -> dict:
    from napari_sevnet.inference import Predictor
    from napari_sevnet.io import load_case

    predictor = Predictor(checkpoint, "cpu")
    per_case = {}
    for case_id, source in cases.items():
        case = source if not isinstance(source, Path) else load_case(source)
        result = predictor.predict(case.image, spacing=case.spacing)
        guides = case_guides(case.image)
        per_case[case_id] = {}
        for i, r in enumerate(REGIONS):
            truth, start, probability = case.regions[i], result.regions[i], result.probabilities[i]
            guide = case.image[MODALITIES.index(GUIDE_SEQUENCE[r])]
            edge, moved = best_edge_move(probability, start, truth, float(predictor.thresholds[i]), target)
            learned = {}
            if refiner is not None:
                scores, seconds = click_session(probability, start, truth, case.spacing, max_clicks, refiner_tool(refiner, r, guides), target=target)
                edge_learned = edge_then_clicks(probability, start, truth, case.spacing, moved, max_clicks, None, target, refiner_tool(refiner, r, guides))
                learned = {"refiner_dice": scores, "refiner_seconds": seconds, "refiner_noc90": noc(scores, max_clicks, target),
                           "edge_refiner_dice": edge_learned, "edge_refiner_noc90": noc(edge_learned, max_clicks, target)}
            perfect, _ = click_session(probability, start, truth, case.spacing, max_clicks, perfect_ball_tool(truth), target=target)
            clicks, click_s = click_session(probability, start, truth, case.spacing, max_clicks, click_tool, guide, target)
            strokes, _ = click_session(probability, start, truth, case.spacing, max_strokes, brush_tool, target=target)
            edge_scores = edge_then_clicks(probability, start, truth, case.spacing, moved, max_clicks, guide, target)
            per_case[case_id][r] = {
                "start_dice": clicks[0], "click_dice": clicks, "click_seconds": click_s, "noc90": noc(clicks, max_clicks, target),
                "brush_dice": strokes, "brush_noc90": noc(strokes, max_strokes, target), "fewest_strokes": fewest_strokes(start, truth, target),
                "edge_threshold": edge, "edge_dice": edge_scores, "edge_noc90": noc(edge_scores, max_clicks, target),
                "ceilings": whole_boundary_ceilings(probability, start, truth, case.spacing),
                "perfect_ball_dice": perfect, "perfect_ball_noc90": noc(perfect, max_clicks, target), **learned,
            }
            if learned:
                print(f"  {case_id} {r}: learned clicks {learned['refiner_dice'][-1]:.3f} in {len(learned['refiner_dice']) - 1}", flush=True)
            print(f"  {case_id} {r}: Dice {clicks[0]:.3f} -> {clicks[-1]:.3f} in {len(clicks) - 1} click(s); brush {strokes[-1]:.3f} in {len(strokes) - 1} stroke(s);"
                  f" edge at {edge:g} then clicks {edge_scores[-1]:.3f} in {len(edge_scores) - 1}", flush=True)
    summary = {}
    for r in REGIONS:
        rows = [per_case[c][r] for c in per_case]
        seconds = [s for row in rows for s in row["click_seconds"]]
        summary[r] = {
            "median_noc90": statistics.median(row["noc90"] for row in rows),
            "median_brush_noc90": statistics.median(row["brush_noc90"] for row in rows),
            "median_fewest_strokes": statistics.median(row["fewest_strokes"] for row in rows),
            "median_edge_noc90": statistics.median(row["edge_noc90"] for row in rows),
            "dice_after_edge": {n: float(np.mean([after(row["edge_dice"], n) for row in rows])) for n in REPORT_AFTER},
            "dice_after_clicks": {n: float(np.mean([after(row["click_dice"], n) for row in rows])) for n in REPORT_AFTER},
            "dice_after_strokes": {n: float(np.mean([after(row["brush_dice"], n) for row in rows])) for n in REPORT_AFTER},
            "start_dice": float(np.mean([row["start_dice"] for row in rows])),
            "median_click_s": statistics.median(seconds) if seconds else 0.0,
            "max_click_s": max(seconds) if seconds else 0.0,
            **{f"best_{k}_dice": float(np.mean([row["ceilings"][f"{k}_dice"] for row in rows])) for k in ("threshold", "margin")},
            **{f"cases_{k}_reach_target": sum(row["ceilings"][f"{k}_dice"] >= target for row in rows) for k in ("threshold", "margin")},
            "dice_after_all_clicks": float(np.mean([row["click_dice"][-1] for row in rows])),
            "median_perfect_ball_noc90": statistics.median(row["perfect_ball_noc90"] for row in rows),
        }
        if refiner is not None:
            seconds = [s for row in rows for s in row["refiner_seconds"]]
            summary[r] |= {
                "median_refiner_noc90": statistics.median(row["refiner_noc90"] for row in rows),
                "dice_after_refiner": {n: float(np.mean([after(row["refiner_dice"], n) for row in rows])) for n in REPORT_AFTER},
                "median_edge_refiner_noc90": statistics.median(row["edge_refiner_noc90"] for row in rows),
                "dice_after_edge_refiner": {n: float(np.mean([after(row["edge_refiner_dice"], n) for row in rows])) for n in REPORT_AFTER},
                "median_refiner_click_s": statistics.median(seconds) if seconds else 0.0,
                "max_refiner_click_s": max(seconds) if seconds else 0.0,
            }
    return {"cases": per_case, "summary": summary, "max_clicks": max_clicks, "max_strokes": max_strokes, "target": target,
            "refiner": refiner.info if refiner is not None else None}


def markdown(result: dict) -> str:
    at = f"NoC@{round(100 * result['target'])}"
    lines = []
    if result.get("refiner"):
        lines += [f"| region | start Dice | {at} learned clicks (median) | Dice after 1 / 3 / 5 / 10 learned clicks | s per learned click (median, max) |"
                  f" {at} with the ball set to the truth (the bound) | one whole-edge move, then learned clicks: {at} (median) | Dice after 1 / 3 / 5 / 10 (the move is the first) |",
                  "|---|---|---|---|---|---|---|---|"]
        for r, s in result["summary"].items():
            lines.append(f"| {r} | {s['start_dice']:.3f} | {s['median_refiner_noc90']:g} | " + " / ".join(f"{s['dice_after_refiner'][n]:.3f}" for n in REPORT_AFTER)
                         + f" | {s['median_refiner_click_s']:.2f}, {s['max_refiner_click_s']:.2f} | {s['median_perfect_ball_noc90']:g} | {s['median_edge_refiner_noc90']:g} | "
                         + " / ".join(f"{s['dice_after_edge_refiner'][n]:.3f}" for n in REPORT_AFTER) + " |")
        lines.append("")
    lines += [f"| region | start Dice | {at} clicks (median) | {at} brush strokes (median) | the fewest strokes any brush needs (median) |"
              " Dice after 1 / 3 / 5 / 10 clicks | after 1 / 3 / 5 / 10 strokes | s per click (median, max) |",
              "|---|---|---|---|---|---|---|---|"]
    for r, s in result["summary"].items():
        lines.append(f"| {r} | {s['start_dice']:.3f} | {s['median_noc90']:g} | {s['median_brush_noc90']:g} | {s['median_fewest_strokes']:g} | "
                     + " / ".join(f"{s['dice_after_clicks'][n]:.3f}" for n in REPORT_AFTER) + " | " + " / ".join(f"{s['dice_after_strokes'][n]:.3f}" for n in REPORT_AFTER)
                     + f" | {s['median_click_s']:.2f}, {s['max_click_s']:.2f} |")
    n, target = len(result["cases"]), f"{result['target']:.2f}"
    lines += ["", f"| region | start Dice | after the last click | best one threshold on the probability (cases >= {target}) | best one margin of +-1-3 mm (cases >= {target}) |",
              "|---|---|---|---|---|"]
    for r, s in result["summary"].items():
        lines.append(f"| {r} | {s['start_dice']:.3f} | {s['dice_after_all_clicks']:.3f} | {s['best_threshold_dice']:.3f} ({s['cases_threshold_reach_target']} of {n}) | "
                     f"{s['best_margin_dice']:.3f} ({s['cases_margin_reach_target']} of {n}) |")
    lines += ["", f"| region | start Dice | one whole-edge move, then clicks: {at} (median) | Dice after 1 / 3 / 5 / 10 interactions (the move is the first) | after the last |",
              "|---|---|---|---|---|"]
    for r, s in result["summary"].items():
        lines.append(f"| {r} | {s['start_dice']:.3f} | {s['median_edge_noc90']:g} | " + " / ".join(f"{s['dice_after_edge'][n]:.3f}" for n in REPORT_AFTER)
                     + f" | {np.mean([row[r]['edge_dice'][-1] for row in result['cases'].values()]):.3f} |")
    learned = "learned clicks" if result.get("refiner") else "probability clicks"
    lines += ["", f"| case | region | start Dice | {at} {learned} | {at} brush strokes (limit {result['max_strokes']}) | the fewest strokes any brush needs |",
              "|---|---|---|---|---|---|"]
    def count(scores, limit):
        return f"{noc(scores, limit, result['target'])}" if scores[-1] >= result["target"] else f"not within {len(scores) - 1}"

    for case_id, row in result["cases"].items():
        for r in REGIONS:
            clicks = count(row[r].get("refiner_dice", row[r]["click_dice"]), result["max_clicks"])
            lines.append(f"| {case_id} | {r} | {row[r]['start_dice']:.3f} | {clicks} | {count(row[r]['brush_dice'], result['max_strokes'])} | {row[r]['fewest_strokes']} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), sharey=True)
    for ax, r in zip(axes, REGIONS):
        for key, style, label in (("refiner_dice", "-", "learned clicks"), ("click_dice", "-", "probability clicks"), ("edge_dice", "--", "whole edge, then clicks"),
                                  ("edge_refiner_dice", "-.", "whole edge, then learned clicks"),
                                  ("brush_dice", ":", "brush strokes")):
            runs = [row[r][key] for row in result["cases"].values() if key in row[r]]
            if not runs:
                continue
            longest = max(len(x) for x in runs)
            padded = np.array([x + [x[-1]] * (longest - len(x)) for x in runs])
            ax.plot(range(longest), padded.mean(0), style, label=label)
        ax.axhline(result["target"], color="grey", lw=0.5)
        ax.set_title(r)
        ax.set_xlabel("interactions")
    axes[0].set_ylabel("mean Dice")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def unseen_refiner(refiner, stem, case_ids) -> None:
    """Refuse to score a click refiner on cases it trained on (its card lists them): its clicks there would flatter it."""
    seen = sorted(set((refiner.info.get("trained_on") or {}).get("cases") or []) & set(case_ids)) if refiner is not None else []
    if seen:
        raise SystemExit(f"{Path(stem).with_suffix('.json')}: the click refiner trained on {seen}, so its figures on them would not be "
                         "held-out (score other cases, or train one without them: python -m training.click_refiner)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.correction", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two small phantoms with the phantom weights: checks the benchmark works, figures mean nothing")
    parser.add_argument("--checkpoint", help="model whose output is corrected (default: the shipped recipe without the held-out cases, benchmarks/checkpoints/)")
    parser.add_argument("--part", choices=("held_out", "train"), default="held_out", help="which part of the split (train: where the tools' settings are chosen)")
    parser.add_argument("--cases", nargs="+", type=Path, metavar="PATH",
                        help="score these labelled cases (case folders, or folders holding them) instead of a part of the split")
    parser.add_argument("--target", type=float, default=TARGET, help="Dice at which the simulated user stops (NoC@ this)")
    parser.add_argument("--max-clicks", type=int, default=20)
    parser.add_argument("--max-strokes", type=int, default=100)
    parser.add_argument("--refiner", type=Path, default=WEIGHTS, help="click refiner weights (stem); without them the learned clicks are left out")
    parser.add_argument("-o", "--output", type=Path, help="JSON to write (beside it: .md and .png)")
    args = parser.parse_args(argv)
    refiner = None
    if args.refiner.with_suffix(".json").is_file():
        refiner = ClickRefiner.load(args.refiner)
    else:
        print(f"no click refiner at {args.refiner}: its clicks are left out (make click-refiner trains it)")
    if args.quick:
        from napari_sevnet.checkpoint import phantom_checkpoint
        from napari_sevnet.phantom import phantom_case

        cases = {f"phantom_{s}": phantom_case(seed=s, shape=(64, 72, 64), contrast=0.4) for s in (31, 32)}
        checkpoint = args.checkpoint or str(phantom_checkpoint())
    elif args.cases:
        from benchmarks.real_heldout import labelled_cases, unseen_checkpoint

        cases = labelled_cases(args.cases)
        checkpoint = unseen_checkpoint(args.checkpoint, cases)
    else:
        from benchmarks.real_heldout import DATA, SPLIT, checkpoint_for, find_cases

        cases = find_cases(json.loads(SPLIT.read_text(encoding="utf-8"))[args.part], DATA)
        checkpoint = checkpoint_for(args.part, args.checkpoint, cases)
    if args.cases or (not args.quick and args.part == "held_out"):
        unseen_refiner(refiner, args.refiner, cases)
    result = run(cases, checkpoint, args.max_clicks, args.max_strokes, args.target, refiner)
    part = "phantoms" if args.quick else "cases given: " + " ".join(map(str, args.cases)) if args.cases else args.part
    result.update({"date": time.strftime("%Y-%m-%d %H:%M"), "host": platform.node(), "quick": args.quick, "part": part, "checkpoint": checkpoint})
    table = markdown(result)
    print(table)
    if args.output:
        from benchmarks.real_heldout import write_results

        write_results(args.output, result, table)
        plot(result, args.output.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
