"""``python -m training.average A.json B.json [...] -o OUT``: one checkpoint whose weights are the mean of several.

Weight averaging (Izmailov et al. 2018, "Averaging weights leads to wider
optima") of snapshots of one run, e.g. its ``best`` and ``last``: a flatter
solution for the price of a file, no training. The checkpoints must describe
the same network and preprocessing (a mean of two different networks means
nothing); the output keeps the first one's JSON (of its metrics only the
training time), names its sources in ``provenance.averaged_from`` and lists
every case any of them trained on, so no benchmark scores it on one. Whether it helps is measured, not assumed:
``python -m benchmarks.real_heldout --compare --checkpoint A.json --checkpoint
OUT.json`` (``benchmarks/results/weight-averaging.md``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from napari_sevnet.checkpoint import CheckpointInfo, checkpoint_files, load_checkpoint, provenance, save_checkpoint
from napari_sevnet.errors import InputError


def average(paths: list[Path]) -> tuple[torch.nn.Module, CheckpointInfo]:
    """(the network with the mean weights, the first checkpoint's info naming its sources); refuses checkpoints of different networks."""
    averaged, first = load_checkpoint(paths[0])
    states, infos = [averaged.state_dict()], [first]
    for path in paths[1:]:
        model, info = load_checkpoint(path)
        for key in ("architecture", "modalities", "regions", "label_convention", "preprocessing"):
            if getattr(info, key) != getattr(first, key):
                raise InputError(checkpoint_files(path)[1], f"its {key} differs from {checkpoint_files(paths[0])[1].name}'s: only snapshots of one network can be averaged")
        states.append(model.state_dict())
        infos.append(info)
    mean = {k: sum(s[k].double() for s in states).div(len(states)).to(v.dtype) if v.is_floating_point() else v for k, v in states[0].items()}
    averaged.load_state_dict(mean)
    # every case any snapshot saw, at the top level where the held-out benchmarks look before scoring a case
    seen = {key: sorted({case for i in infos for case in i.provenance.get(key) or []}) for key in ("train_cases", "val_cases", "replay_cases")}
    # the snapshots' scores do not describe their mean; the first one's training time still says what it cost
    metrics = {k: first.metrics[k] for k in ("elapsed_s",) if k in first.metrics}
    info = CheckpointInfo(**{**first.__dict__, "provenance": provenance(averaged_from=[str(p) for p in paths], base=first.provenance, **seen), "metrics": metrics})
    return averaged, info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.average", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path, help="two or more checkpoints (.json or .safetensors) of the same network")
    parser.add_argument("-o", "--output", type=Path, required=True, help="stem of the averaged checkpoint (OUT.json + OUT.safetensors)")
    args = parser.parse_args(argv)
    if len(args.checkpoints) < 2:
        parser.error("give at least two checkpoints to average")
    existing = [p for p in checkpoint_files(args.output) if p.exists()]
    if existing:
        parser.error(f"{existing[0]} already exists; choose another --output (nothing is overwritten)")
    try:
        model, info = average(args.checkpoints)
    except InputError as exc:
        parser.exit(2, f"error: {exc}\n")
    print(f"averaged {len(args.checkpoints)} checkpoints into {save_checkpoint(args.output, model, info)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
