"""How well the model's masks reproduce the expert's RANO measurement on held-out real cases.

    python -m benchmarks.rano_agreement [--checkpoint CKPT] [-o OUT.json]

For every held-out case of ``training/configs/splits/real_brats_heldout.json``
the sum of RANO bidimensional products (:mod:`napari_sevnet.readout`) from the
default model's mask against the one from the expert mask: per case, the mean
absolute percent difference, and the Bland-Altman bias and 95 % limits of
agreement (mean difference +/- 1.96 sd, in mm²). Also the number of
measurable lesions each way.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rano_agreement", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="default: the shipped recipe without the held-out cases (benchmarks/checkpoints/)")
    parser.add_argument("-o", "--output", type=Path)
    args = parser.parse_args(argv)

    from benchmarks.real_heldout import DATA, SPLIT, find_cases, unseen_checkpoint, write_results
    from napari_sevnet.inference import Predictor
    from napari_sevnet.io import load_case
    from napari_sevnet.readout import measure

    cases = find_cases(json.loads(SPLIT.read_text(encoding="utf-8"))["held_out"], DATA)
    predictor = Predictor(unseen_checkpoint(args.checkpoint, cases), "cpu")
    rows = {}
    for case_id, folder in cases.items():
        case = load_case(folder)
        model = measure(predictor.predict(case.image, spacing=case.spacing).regions, case.spacing, case.grid)
        expert = measure(case.regions, case.spacing, case.grid)
        rows[case_id] = {"model_mm2": model.sum_of_products_mm2, "expert_mm2": expert.sum_of_products_mm2,
                         "model_measurable": model.measurable, "expert_measurable": expert.measurable}
        print(f"  {case_id:<24} expert {expert.sum_of_products_mm2:7.0f} mm²  model {model.sum_of_products_mm2:7.0f} mm²", flush=True)
    model_v = np.array([r["model_mm2"] for r in rows.values()])
    expert_v = np.array([r["expert_mm2"] for r in rows.values()])
    difference = model_v - expert_v
    with_expert = expert_v > 0
    percent = np.abs(difference[with_expert]) / expert_v[with_expert] * 100
    summary = {
        "mean_abs_percent_difference": float(percent.mean()) if percent.size else None,
        "median_abs_percent_difference": float(np.median(percent)) if percent.size else None,
        "bland_altman_bias_mm2": float(difference.mean()),
        "bland_altman_limits_mm2": [float(difference.mean() - 1.96 * difference.std(ddof=1)), float(difference.mean() + 1.96 * difference.std(ddof=1))],
        "cases": len(rows),
    }
    table = "| case | expert mm² | model mm² | difference | measurable lesions (expert / model) |\n|---|---|---|---|---|\n" + "".join(
        f"| {c} | {r['expert_mm2']:.0f} | {r['model_mm2']:.0f} | " + (f"{100 * (r['model_mm2'] - r['expert_mm2']) / r['expert_mm2']:+.0f} %" if r["expert_mm2"] else "-")
        + f" | {r['expert_measurable']} / {r['model_measurable']} |\n" for c, r in rows.items())
    table += (f"\nMean absolute difference {summary['mean_abs_percent_difference']:.1f} % (median {summary['median_abs_percent_difference']:.1f} %); "
              f"Bland-Altman bias {summary['bland_altman_bias_mm2']:+.0f} mm², 95 % limits {summary['bland_altman_limits_mm2'][0]:+.0f} to {summary['bland_altman_limits_mm2'][1]:+.0f} mm² ({len(rows)} cases).\n")
    print(table)
    if args.output:
        write_results(args.output, {"date": time.strftime("%Y-%m-%d %H:%M"), "host": platform.node(), "checkpoint": predictor.checkpoint, "cases": rows, "summary": summary}, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
