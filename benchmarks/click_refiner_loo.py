"""Choose the click refiner's settings without the held-out cases: leave one training case out at a time.

    python -m benchmarks.click_refiner_loo [--region WT] [--seed N] [--quick] [-o OUT.json]

Every training case of the split whose region starts below the target (Dice
0.90 on the held-out model's output) is scored by a refiner network trained on
the simulated clicks of the *other* training cases (the samples and settings of
``training/click_refiner.py``), with the correction benchmark's simulated user
(``benchmarks/correction.py``: each click at the centre of the largest error,
stop at the target or after ``--max-clicks``). The held-out cases never take
part, so a setting chosen on these figures leaves the correction benchmark's
held-out figures unseen: change the refiner, run this before and after. About
5 min for WT on 2 cores. JSON and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks.correction import REPORT_AFTER, TARGET, after, click_session, noc, refiner_tool
from napari_sevnet.click_refiner import ClickRefiner, features
from napari_sevnet.metrics import dice
from napari_sevnet.regions import REGIONS
from training.click_refiner import samples, segmented, train_net


def run(cases: dict, checkpoint, region: str, max_clicks: int, target: float = TARGET, seed: int = 0) -> dict:
    """Per case below ``target``: the Dice of each click of a refiner trained without that case."""
    rng, index = np.random.default_rng(seed), REGIONS.index(region)
    clicks, sessions, started = {}, {}, time.time()
    for case_id, case, result, guides in segmented(cases, checkpoint):
        probability, start, truth = result.probabilities[index], result.regions[index], case.regions[index]
        clicks[case_id] = samples(region, probability, start, truth, guides, case.spacing, rng)
        if dice(start, truth) < target:
            sessions[case_id] = (probability, start, truth, guides, case.spacing)
        print(f"  {case_id}: {len(clicks[case_id][1])} samples ({time.time() - started:.0f} s)", flush=True)
    rows = {}
    for case_id, (probability, start, truth, guides, spacing) in sessions.items():
        others = [c for c in clicks if c != case_id]
        net, _ = train_net(np.concatenate([clicks[c][0] for c in others]), np.concatenate([clicks[c][1] for c in others]), seed=seed)
        tool = refiner_tool(ClickRefiner({region: net}), region, guides)
        scores, seconds = click_session(probability, start, truth, spacing, max_clicks, tool, target=target)
        rows[case_id] = {"trained_on": others, "dice": scores, "noc": noc(scores, max_clicks, target), "seconds": seconds}
        print(f"  {case_id} left out: {scores[0]:.3f} -> {scores[-1]:.3f} in {len(scores) - 1} clicks ({time.time() - started:.0f} s)", flush=True)
    return {
        "region": region, "target": target, "max_clicks": max_clicks, "features": list(features(region)), "cases": rows,
        "scored": sorted(rows), "not_scored_start_at_target": sorted(set(cases) - set(rows)),
        "summary": {
            "median_noc": statistics.median(r["noc"] for r in rows.values()) if rows else None,
            "dice_after": {n: float(np.mean([after(r["dice"], n) for r in rows.values()])) for n in REPORT_AFTER} if rows else {},
        },
    }


def markdown(result: dict) -> str:
    after_head = " / ".join(str(n) for n in REPORT_AFTER)
    lines = [f"| left-out case ({result['region']}) | start Dice | NoC@{result['target']:.2f} | Dice after {after_head} clicks |",
             "|---|---|---|---|"]
    for case_id, row in result["cases"].items():
        lines.append(f"| {case_id} | {row['dice'][0]:.3f} | {row['noc']} | " + " / ".join(f"{after(row['dice'], n):.3f}" for n in REPORT_AFTER) + " |")
    s = result["summary"]
    if s["dice_after"]:
        lines.append(f"| **median NoC, mean Dice** | | **{s['median_noc']:g}** | " + " / ".join(f"{s['dice_after'][n]:.3f}" for n in REPORT_AFTER) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.click_refiner_loo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--region", choices=REGIONS, default="WT")
    parser.add_argument("--quick", action="store_true", help="three small phantoms with the phantom weights: checks the benchmark works, figures mean nothing")
    parser.add_argument("--target", type=float, default=TARGET)
    parser.add_argument("--max-clicks", type=int, default=20)
    parser.add_argument("--checkpoint", help="the model whose output the clicks correct (default: the held-out model)")
    parser.add_argument("--seed", type=int, default=0, help="of the sampled clicks and the networks (another seed: the figures' run-to-run spread)")
    parser.add_argument("-o", "--output", type=Path, help="JSON to write (beside it: .md)")
    args = parser.parse_args(argv)
    if args.quick:
        from napari_sevnet.checkpoint import phantom_checkpoint
        from napari_sevnet.phantom import phantom_case

        cases = {f"phantom_{s}": phantom_case(seed=s, shape=(48, 56, 48), contrast=0.4) for s in (41, 42, 43)}
        checkpoint = args.checkpoint or str(phantom_checkpoint())
    else:
        from benchmarks.real_heldout import DATA, HELD_OUT_MODEL, SPLIT, find_cases

        cases = find_cases(json.loads(SPLIT.read_text(encoding="utf-8"))["train"], DATA)
        checkpoint = args.checkpoint or str(HELD_OUT_MODEL)
    result = run(cases, checkpoint, args.region, args.max_clicks, args.target, seed=args.seed)
    result.update({"seed": args.seed, "date": time.strftime("%Y-%m-%d %H:%M"), "host": platform.node(), "quick": args.quick, "checkpoint": checkpoint})
    table = markdown(result)
    print(table)
    if args.output:
        from benchmarks.real_heldout import write_results

        write_results(args.output, result, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
