"""``python -m training.compare``: train every zoo model on the same data with the same budget, one table.

Each model gets the same config (data, split, patch size, steps, optimizer,
seed) except ``model``; the table reports the best validation Dice per
region, mean HD95, parameter count and the seconds one validation case took
to segment. Results go to ``OUT/comparison.json`` and ``OUT/comparison.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from napari_sevnet.errors import InputError
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


def _selected_models(parser: argparse.ArgumentParser, models: str | None) -> list[tuple[str, str, dict]]:
    """The zoo rows ``--models`` names (all when none); an unknown name is refused before any training."""
    if not models:
        return ZOO
    wanted = [m.strip() for m in models.split(",") if m.strip()]
    known = [name for _, name, _ in ZOO]
    unknown = [m for m in wanted if m not in known]
    if unknown:
        parser.error(f"--models: unknown model {', '.join(unknown)}; choose from {', '.join(known)}")
    return [row for row in ZOO if row[1] in wanted]


def _check_before_training(cfg, models: list[tuple[str, str, dict]], output: Path, resume: bool) -> None:
    """Refuse, before hours of training, what would fail or mislead after it: no validation cases, a finished comparison's folders."""
    from training.data import discover_cases, split_cases
    from training.loop import STATE_FILE

    if cfg.data.validate_on_train:
        raise ValueError("data.validate_on_train=true would rank the models on the cases they trained on; the comparison needs held-out validation cases")
    _, val = split_cases(discover_cases(cfg.data.roots), cfg.data)
    if not val:
        raise ValueError("the comparison ranks the models by their validation Dice, but this config leaves no validation case (set data.val_cases=N or data.split)")
    existing = [output / name for _, name, _ in models if (output / name / STATE_FILE).exists() or (output / name / "last.json").exists()]
    if existing and not resume:
        raise ValueError(f"{', '.join(map(str, existing))}: {'holds a run' if len(existing) == 1 else 'hold runs'} already; continue the comparison with --resume or choose another -o")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=Path(__file__).parent / "configs" / "phantom_demo.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides applied to every model (the shared budget)")
    parser.add_argument("-o", "--output", type=Path, default=Path("runs/compare"))
    parser.add_argument("--models", help="comma-separated subset of model names, e.g. sevnet,vnet")
    parser.add_argument("--resume", action="store_true", help="continue a stopped comparison: finished models are read back, a stopped one resumes from its last epoch")
    args = parser.parse_intermixed_args(argv)
    models = _selected_models(parser, args.models)
    try:
        return _compare(args, models)
    except (InputError, ValueError, FileNotFoundError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted; finished models and the last finished epoch are saved (continue with --resume)", file=sys.stderr)
        return 130


def _compare(args: argparse.Namespace, models: list[tuple[str, str, dict]]) -> int:
    import numpy as np
    import torch

    from napari_sevnet.checkpoint import load_checkpoint
    from napari_sevnet.inference import Predictor
    from training.data import discover_cases, load_preprocessed, split_cases
    from training.loop import STATE_FILE, train

    def config_of(name: str, config: dict):
        cfg = load_config(args.config, [*args.overrides, f"model.name={name}", f"output={args.output / name}"])
        cfg.model.config = config
        return cfg

    _check_before_training(config_of(*models[0][1:]), models, args.output, args.resume)
    rows = []
    for label, name, config in models:
        cfg = config_of(name, config)
        run_dir = args.output / name
        run = train(cfg, resume=run_dir if (run_dir / STATE_FILE).exists() else None)
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
