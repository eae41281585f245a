"""``python -m training.compare``: train every zoo model on the same data with the same budget, one table.

Each model gets the same config (data, split, patch size, steps, optimizer,
seed) except ``model``; the table reports the best validation Dice per
region, mean HD95, parameter count and the seconds one validation case took
to segment. Results go to ``OUT/comparison.json`` and ``OUT/comparison.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from napari_sevnet.files import write_text_atomic
from training.config import load_config

#: the models compared, as (label, model name, model config)
ZOO = [
    ("SEV-Net lite", "sevnet", {"preset": "lite"}),
    ("V-Net lite (SE off)", "vnet", {"preset": "lite"}),
    ("3D U-Net", "unet3d", {"features": [8, 16, 32, 64]}),
    ("SegResNet (MONAI, 16 filters)", "segresnet", {"init_filters": 16}),  # the benchmarks' baseline
    ("EE-Net", "eenet", {"widths": [8, 16, 24, 40, 64], "depths": [1, 1, 2, 2, 2]}),
    ("2D U-Net (slices)", "unet2d", {"features": [8, 16, 32, 64]}),
]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=Path(__file__).parent / "configs" / "phantom_demo.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides applied to every model (the shared budget)")
    parser.add_argument("-o", "--output", type=Path, default=Path("runs/compare"))
    parser.add_argument("--models", help="comma-separated subset of model names, e.g. sevnet,vnet")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from napari_sevnet.checkpoint import load_checkpoint
    from napari_sevnet.inference import Predictor
    from training.data import discover_cases, load_preprocessed, split_cases
    from training.loop import train

    rows = []
    for label, name, config in ZOO:
        if args.models and name not in args.models.split(","):
            continue
        cfg = load_config(args.config, [*args.overrides, f"model.name={name}", f"output={args.output / name}"])
        cfg.model.config = config
        run = train(cfg)
        model, info = load_checkpoint(run / "best.json")
        _, val = split_cases(discover_cases(cfg.data.roots), cfg.data)
        image, _ = load_preprocessed(val[0], Path(cfg.data.cache_dir) if cfg.data.cache_dir else run.parent / ".cache")
        predictor = Predictor(model=model, info=info, device="cpu")
        predictor.predict(image)  # warm-up
        t0 = time.perf_counter()
        predictor.predict(image)
        seconds = time.perf_counter() - t0
        m = info.metrics
        rows.append({
            "model": label,
            "name": name,
            "dice": m.get("dice", {}),
            "hd95_mean": float(np.mean(list(m.get("hd95", {}).values()))) if m.get("hd95") else None,
            "parameters": sum(p.numel() for p in model.parameters()),
            "inference_s": seconds,
            "threads": torch.get_num_threads(),
        })
    budget = {"steps": cfg.epochs * cfg.steps_per_epoch, "batch_size": cfg.batch_size, "patch_size": cfg.patch_size, "optimizer": cfg.optimizer, "lr": cfg.lr}
    write_text_atomic(args.output / "comparison.json", json.dumps({"budget": budget, "rows": rows}, indent=2) + "\n")
    lines = ["| model | Dice WT | Dice TC | Dice ET | HD95 mean (mm) | parameters | inference (s) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        d = r["dice"]
        lines.append(f"| {r['model']} | {d.get('WT', 0):.3f} | {d.get('TC', 0):.3f} | {d.get('ET', 0):.3f} | {r['hd95_mean']:.2f} | {r['parameters'] / 1e6:.2f} M | {r['inference_s']:.2f} |")
    table = "\n".join(lines)
    write_text_atomic(args.output / "comparison.md", f"Budget: {budget}\n\n{table}\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
