"""Does N4 bias-field correction help the default model? The same cases segmented with and without it.

    python -m benchmarks.bias_field [--checkpoint CKPT] [-o OUT.json]

The held-out real cases of ``training/configs/splits/real_brats_heldout.json``
(expert labels; ``--part train``: the training cases instead) and the consensus-labelled ones (the raw patient's BraTS-space
version among them): each sequence corrected by SimpleITK's N4 inside the
brain (shrink factor 4, 50/50/30 iterations; the field is fitted on the
shrunk image and applied at full resolution), then segmented. Dice per region
with and without, and the paired difference. The N4 step is ``sevnet-prepare``'s
(:func:`napari_sevnet.prepare.correct_bias_field`).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bias_field", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="default: the shipped recipe without the held-out cases (benchmarks/checkpoints/)")
    parser.add_argument("--part", choices=("held_out", "train"), default="held_out", help="which part of the split (train: to decide on N4 without spending the held-out cases)")
    parser.add_argument("-o", "--output", type=Path)
    args = parser.parse_args(argv)

    from benchmarks.real_heldout import CONSENSUS_CASES, DATA, SPLIT, checkpoint_for, find_cases, write_results
    from napari_sevnet.inference import Predictor
    from napari_sevnet.io import load_case
    from napari_sevnet.metrics import dice
    from napari_sevnet.prepare import correct_bias_field
    from napari_sevnet.regions import REGIONS

    cases = find_cases(json.loads(SPLIT.read_text(encoding="utf-8"))[args.part], DATA)
    if args.part == "held_out":
        cases.update({name: DATA / folder for name, folder in CONSENSUS_CASES.items() if (DATA / folder).is_dir()})
    predictor = Predictor(checkpoint_for(args.part, args.checkpoint, cases), "cpu")
    rows = {}
    for case_id, folder in cases.items():
        case = load_case(folder)
        brain = np.any(case.image != 0, axis=0)
        t = time.perf_counter()
        corrected = np.stack([correct_bias_field(v, brain, case.spacing) for v in case.image])
        n4_s = time.perf_counter() - t
        plain, with_n4 = (predictor.predict(image, spacing=case.spacing).regions for image in (case.image, corrected))
        rows[case_id] = {"labels": "expert" if case_id not in CONSENSUS_CASES else "consensus", "n4_s": n4_s,
                         **{r: {"without": dice(plain[i], case.regions[i]), "with_n4": dice(with_n4[i], case.regions[i])} for i, r in enumerate(REGIONS)}}
        print(f"  {case_id}: " + "  ".join(f"{r} {rows[case_id][r]['without']:.3f} -> {rows[case_id][r]['with_n4']:.3f}" for r in REGIONS) + f"  (N4 {n4_s:.0f} s)", flush=True)
    summary = {}
    for labels in ("expert", "consensus"):
        chosen = [row for row in rows.values() if row["labels"] == labels]
        if chosen:
            summary[labels] = {r: {"mean_without": float(np.mean([row[r]["without"] for row in chosen])), "mean_with_n4": float(np.mean([row[r]["with_n4"] for row in chosen])),
                                   "mean_difference": float(np.mean([row[r]["with_n4"] - row[r]["without"] for row in chosen])),
                                   "sd_difference": float(np.std([row[r]["with_n4"] - row[r]["without"] for row in chosen]))} for r in REGIONS}
    table = "| case | labels | WT without -> with N4 | TC | ET | N4 s |\n|---|---|---|---|---|---|\n" + "".join(
        f"| {c} | {row['labels']} | " + " | ".join(f"{row[r]['without']:.3f} -> {row[r]['with_n4']:.3f}" for r in REGIONS) + f" | {row['n4_s']:.0f} |\n" for c, row in rows.items())
    for labels, by_region in summary.items():
        table += f"\n{labels} cases, mean with minus without N4: " + ", ".join(f"{r} {v['mean_difference']:+.3f} +/- {v['sd_difference']:.3f}" for r, v in by_region.items()) + "\n"
    print(table)
    if args.output:
        write_results(args.output, {"date": time.strftime("%Y-%m-%d %H:%M"), "host": platform.node(), "checkpoint": predictor.checkpoint, "cases": rows, "summary": summary}, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
