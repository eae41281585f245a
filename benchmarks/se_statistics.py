"""Which statistic of a stage's features could an SE squeeze pool so that it differs between cases?

    python -m benchmarks.se_statistics [--checkpoint CKPT] [--cases N] [-o OUT.json]

Runs a checkpoint (default: HELD_OUT_MODEL, stage 3 of the shipped recipe) on training cases of
``training/configs/splits/real_brats_heldout.json`` (held-out cases stay
unseen: this chooses a design) and records, for every stage, candidate
squeeze statistics of its convolution stack: the channel means before the
normalisation, standardised across channels (``se_squeeze: standardised``);
the mean, standard deviation, 99th percentile and maximum of the normalised
output (``"output"`` pools its mean, ``"mean_max"`` its mean and maximum);
the standardised pre-norm maximum. For each: the standard deviation across
cases, averaged over channels, over the standard deviation across channels
of the case mean. A ratio near 0 means a squeeze of that statistic sees
(nearly) the same vector in every case, and its excitation cannot respond to
the case whatever the MLP learns. Writes JSON (``-o``) and prints a table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from benchmarks.real_heldout import DATA, ROOT, SPLIT, checkpoint_for, find_cases, se_spread


def _statistics(output: torch.Tensor, pre_norm: torch.Tensor) -> dict[str, np.ndarray]:
    """Candidate squeezes (C,) of one stage's normalised output and its last convolution's output before the norm."""
    y, pre = output[0].float().flatten(1), pre_norm[0].float().flatten(1)

    def standardised(v):  # as the "standardised" squeeze does it
        return torch.nn.functional.layer_norm(v, v.shape).numpy()

    return {
        "pre-norm mean, standardised": standardised(pre.mean(1)),
        "output mean": y.mean(1).numpy(),
        "output sd": y.std(1).numpy(),
        "output p99": torch.quantile(y[:, ::7], 0.99, dim=1).numpy(),
        "output max": y.amax(1).numpy(),
        "pre-norm max, standardised": standardised(pre.amax(1)),
    }


def measure(checkpoint: str | None, cases: dict[str, Path]) -> dict:
    """Per stage and statistic: across-case sd / across-channel sd, and both parts."""
    from napari_sevnet.inference import Predictor
    from napari_sevnet.io import load_case

    predictor = Predictor(checkpoint, "cpu")
    model = predictor.model
    seen: dict[str, dict[str, np.ndarray]] = {}

    def hook(name):
        def record(module, inputs, outputs):
            if name not in seen:  # a case's first forward: its whole brain crop, or its first window
                seen[name] = _statistics(*outputs)

        return record

    handles = [stage.convs.register_forward_hook(hook(name)) for name, stage in zip(model.stage_names, model.stages)]
    per_case = []
    try:
        for case_id, folder in cases.items():
            seen.clear()
            predictor.predict(load_case(folder).image)
            per_case.append(dict(seen))
            print(f"  {case_id}", flush=True)
    finally:
        for h in handles:
            h.remove()
    stats = list(per_case[0][model.stage_names[0]])
    # each statistic's spread is measured as the SE excitations' is (benchmarks.real_heldout.se_spread)
    spread = {stat: se_spread({i: {name: c[name][stat] for name in model.stage_names} for i, c in enumerate(per_case)})["stages"] for stat in stats}
    out = {name: {stat: spread[stat][name] for stat in stats} for name in model.stage_names}
    used = Path(predictor.checkpoint).resolve()
    return {"checkpoint": str(used.relative_to(ROOT) if used.is_relative_to(ROOT) else used), "cases": list(cases), "stages": out}


def table(result: dict) -> str:
    stats = list(next(iter(result["stages"].values())))
    lines = ["| stage | " + " | ".join(stats) + " |", "|---|" + "---|" * len(stats)]
    for name, row in result["stages"].items():
        lines.append(f"| {name} | " + " | ".join("–" if row[s]["ratio"] is None else f"{row[s]['ratio']:.3f}" for s in stats) + " |")
    means = [np.mean([r for row in result["stages"].values() if (r := row[s]["ratio"]) is not None]) for s in stats]
    lines.append("| **mean** | " + " | ".join(f"**{m:.3f}**" for m in means) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.se_statistics", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="checkpoint (default: the shipped recipe without the held-out cases, benchmarks/checkpoints/)")
    parser.add_argument("--cases", type=int, default=8, help="how many training cases (every other one of the split's list)")
    parser.add_argument("-o", "--output", type=Path, help="JSON to write")
    args = parser.parse_args(argv)
    if args.cases < 2:
        parser.error("--cases: a spread across cases needs at least 2")
    train = json.loads(SPLIT.read_text())["train"][::2][: args.cases]
    cases = find_cases(train, DATA)
    result = measure(checkpoint_for("train", args.checkpoint, cases), cases)
    print("Across-case sd / across-channel sd of each candidate squeeze (training cases):\n")
    print(table(result))
    if args.output:
        args.output.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
