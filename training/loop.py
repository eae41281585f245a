"""The training loop: one process or many under torchrun, resumable, reporting progress as JSON lines.

Reproducibility: the cases and augmentation of epoch ``e`` on rank ``r`` are
drawn from seeds derived from ``(seed, e, r)``, and every epoch ends with the
model, optimizer, scheduler, AMP scaler and torch RNG saved, so ``--resume``
of a killed run continues exactly where the last finished epoch left off.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from napari_sevnet.checkpoint import CheckpointInfo, load_checkpoint, provenance, save_checkpoint
from napari_sevnet.files import atomic_output, write_text_atomic
from napari_sevnet.inference import Predictor
from napari_sevnet.metrics import case_metrics
from napari_sevnet.model import build_model
from napari_sevnet.regions import REGIONS
from training.config import DEFAULT_PATCH_SIZE, TrainConfig, save_config
from training.data import PatchDataset, discover_cases, load_preprocessed, set_transform_seed, split_cases

log = logging.getLogger("sevnet.train")
STATE_FILE = "resume_state.pt"


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Join the torchrun process group if launched by torchrun (NCCL on GPUs, Gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    info = DistInfo(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    if backend == "nccl":
        torch.cuda.set_device(info.local_rank)
    return info


class Emitter:
    """Progress for people (log lines) or for the GUI (one JSON object per line on stdout)."""

    def __init__(self, json_lines: bool, enabled: bool):
        self.json_lines = json_lines
        self.enabled = enabled

    def __call__(self, event: str, **fields) -> None:
        if not self.enabled:
            return
        if self.json_lines:
            print(json.dumps({"event": event, **fields}), flush=True)
        elif event == "epoch":
            log.info("epoch %d/%d  loss %.4f  lr %.2e  eta %.0fs", fields["epoch"], fields["epochs"], fields["loss"], fields["lr"], fields["eta_s"])
        elif event == "validation":
            log.info("validation epoch %d  dice %s  mean %.4f", fields["epoch"], fields["dice"], fields["mean_dice"])
        elif event in ("done", "error", "start"):
            log.info("%s: %s", event, fields)


def region_loss():
    """Dice + BCE on three sigmoid region channels (not DiceCELoss: its CE is a softmax one)."""
    from monai.losses import DiceLoss

    dice = DiceLoss(sigmoid=True, smooth_nr=1e-5, smooth_dr=1e-5, batch=True)
    bce = nn.BCEWithLogitsLoss()
    return lambda logits, target: dice(logits, target) + bce(logits, target)


def make_optimizer(cfg: TrainConfig, params):
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "nadam":
        return torch.optim.NAdam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay)


def make_scheduler(cfg: TrainConfig, optimizer):
    """Stepped once per epoch ('plateau' with the validation mean Dice)."""
    if cfg.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=2)

    def factor(epoch: int) -> float:
        if epoch < cfg.warmup_epochs:
            return (epoch + 1) / (cfg.warmup_epochs + 1)
        progress = min(epoch / max(cfg.epochs, 1), 1.0)
        if cfg.schedule == "poly":
            return (1 - progress) ** 0.9
        if cfg.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def freeze_encoder(model: nn.Module) -> int:
    """Freeze the encoder of a SEV-Net/V-Net (input stage, down-sampling, encoder stages); returns #frozen tensors."""
    frozen = 0
    for name, p in model.named_parameters():
        if name.startswith(("input_stage.", "down.", "encoder.")):
            p.requires_grad_(False)
            frozen += 1
    if frozen == 0:
        raise ValueError("freeze_encoder is only defined for sevnet/vnet models")
    return frozen


def _git_revision() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _atomic_torch_save(obj, path: Path) -> None:
    with atomic_output(path) as tmp:
        torch.save(obj, tmp)


def _epoch_indices(cfg: TrainConfig, epoch: int, n_train: int, n_replay: int, dinfo: DistInfo) -> list[int]:
    """Case indices for this rank and epoch; replay cases (indices >= n_train) mixed in by fraction."""
    rng = np.random.default_rng([cfg.seed, epoch])
    total = cfg.steps_per_epoch * cfg.batch_size * dinfo.world
    idx = rng.integers(0, n_train, size=total)
    if n_replay:
        replay = rng.random(total) < cfg.data.replay_fraction
        idx[replay] = n_train + rng.integers(0, n_replay, size=int(replay.sum()))
    return idx[dinfo.rank :: dinfo.world].tolist()


def validate(predictor: Predictor, val_arrays) -> dict:
    """BraTS metrics of the Predictor on preprocessed validation crops."""
    per_case = []
    for image, regions in val_arrays:
        pred = predictor.predict(image)
        per_case.append(case_metrics(pred.regions, regions.astype(bool)))
    dice = {r: float(np.mean([c[r]["dice"] for c in per_case])) for r in REGIONS}
    hd95 = {r: float(np.mean([c[r]["hd95"] for c in per_case])) for r in REGIONS}
    return {"dice": dice, "hd95": hd95, "mean_dice": float(np.mean(list(dice.values())))}


def train(cfg: TrainConfig, *, resume: str | Path | None = None, progress_json: bool = False) -> Path:
    """Train per ``cfg``; returns the run folder (checkpoints best.* and last.*)."""
    dinfo = init_distributed()
    emit = Emitter(progress_json, dinfo.main)
    device = torch.device(f"cuda:{dinfo.local_rank}" if torch.cuda.is_available() else "cpu")
    run_dir = Path(resume or cfg.output)
    state = None
    if resume:
        state_path = run_dir / STATE_FILE
        if not state_path.is_file():
            raise FileNotFoundError(f"{state_path}: nothing to resume (no finished epoch saved)")
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)

    # model: a fine-tune takes the architecture from its initial checkpoint
    if cfg.init:
        model, init_info = load_checkpoint(cfg.init, "cpu")
        cfg.model.name, cfg.model.config = init_info.architecture["name"], dict(init_info.architecture.get("config", {}))
        # the model runs in windows of the size it was trained on (inference.py): keep it unless told otherwise
        cfg.patch_size = cfg.patch_size or init_info.preprocessing.get("patch_size")
    else:
        model = build_model(cfg.model.name, cfg.model.config)
    cfg.patch_size = list(cfg.patch_size or DEFAULT_PATCH_SIZE)
    if cfg.freeze_encoder:
        freeze_encoder(model)
    model.to(device)

    cases = discover_cases(cfg.data.roots)
    train_refs, val_refs = split_cases(cases, cfg.data)
    if cfg.data.validate_on_train and not val_refs:
        val_refs = list(train_refs)
    replay_refs = discover_cases(cfg.data.replay_roots) if cfg.data.replay_roots else []
    cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else run_dir.parent / ".cache"
    dataset = PatchDataset(train_refs + replay_refs, cache_dir, cfg.patch_size, cfg.augment)
    val_arrays = [load_preprocessed(r, cache_dir) for r in val_refs]

    optimizer = make_optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
    scheduler = make_scheduler(cfg, optimizer)
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    start_epoch, best = 0, -1.0
    if state is not None:
        model.load_state_dict({k: v.to(device) for k, v in state["model"].items()})
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch, best = int(state["epoch"]) + 1, float(state["best"])
    ddp = model
    if dinfo.world > 1:
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=[dinfo.local_rank] if device.type == "cuda" else None)
    loss_fn = region_loss()

    info = CheckpointInfo(
        architecture={"name": cfg.model.name, "config": cfg.model.config},
        label_convention=cfg.label_convention,
        preprocessing={"crop": "nonzero-box", "normalize": "zscore-over-brain", "patch_size": list(cfg.patch_size)},
        provenance=provenance(
            seed=cfg.seed,
            git_revision=_git_revision(),
            init=cfg.init,
            train_cases=[str(r.folder) for r in train_refs],
            val_cases=[str(r.folder) for r in val_refs],
            replay_cases=[str(r.folder) for r in replay_refs],
            world_size=dinfo.world,
        ),
    )
    if dinfo.main:
        save_config(cfg, run_dir / "config.yaml")
        write_text_atomic(run_dir / "data.json", json.dumps({"train": [r.case_id for r in train_refs], "val": [r.case_id for r in val_refs], "replay": [r.case_id for r in replay_refs]}, indent=2))
    writer = _tensorboard(run_dir) if dinfo.main else None
    emit("start", run_dir=str(run_dir), epochs=cfg.epochs, start_epoch=start_epoch, train_cases=len(train_refs), val_cases=len(val_refs), device=str(device))

    from tqdm import tqdm

    total_steps = (cfg.epochs - start_epoch) * cfg.steps_per_epoch
    bar = tqdm(total=total_steps, unit="step", desc="training", disable=True if progress_json or not dinfo.main else None, dynamic_ncols=True)  # None: off when not a terminal
    t_start = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        indices = _epoch_indices(cfg, epoch, len(train_refs), len(replay_refs), dinfo)
        set_transform_seed(dataset, (cfg.seed * 100003 + epoch) * dinfo.world + dinfo.rank)
        losses = []
        for step in range(cfg.steps_per_epoch):
            batch = [dataset[i] for i in indices[step * cfg.batch_size : (step + 1) * cfg.batch_size]]
            x = torch.stack([b[0] for b in batch]).to(device)
            y = torch.stack([b[1] for b in batch]).to(device)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
                loss = loss_fn(ddp(x).float(), y)
            scaler.scale(loss).backward()
            if cfg.grad_clip > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            losses.append(float(loss.detach()))
            done = (epoch - start_epoch) * cfg.steps_per_epoch + step + 1
            total = (cfg.epochs - start_epoch) * cfg.steps_per_epoch
            eta = (time.perf_counter() - t_start) / done * (total - done)
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{losses[-1]:.4f}")
            if progress_json:
                emit("step", epoch=epoch + 1, epochs=cfg.epochs, step=step + 1, steps=cfg.steps_per_epoch, loss=losses[-1], eta_s=round(eta, 1))
        epoch_loss = float(np.mean(losses))
        lr = optimizer.param_groups[0]["lr"]

        metrics = None
        if val_arrays and ((epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs):
            if dinfo.main:
                predictor = Predictor(model=model, info=info, device=device)
                metrics = validate(predictor, val_arrays)
                emit("validation", epoch=epoch + 1, **metrics)
        if cfg.schedule == "plateau":
            if metrics is not None or dinfo.world > 1:
                value = torch.tensor([metrics["mean_dice"] if metrics else 0.0])
                if dinfo.world > 1:
                    dist.broadcast(value, 0)
                scheduler.step(float(value))
        else:
            scheduler.step()

        if dinfo.main:
            if writer is not None:
                writer.add_scalar("loss/train", epoch_loss, epoch + 1)
                writer.add_scalar("lr", lr, epoch + 1)
                if metrics:
                    for r in REGIONS:
                        writer.add_scalar(f"dice/{r}", metrics["dice"][r], epoch + 1)
            info.metrics = {"epoch": epoch + 1, "train_loss": epoch_loss, **(metrics or {})}
            if metrics and metrics["mean_dice"] > best:
                best = metrics["mean_dice"]
                save_checkpoint(run_dir / "best", model, info)
            save_checkpoint(run_dir / "last", model, info)
            if not val_arrays:
                save_checkpoint(run_dir / "best", model, info)
            _atomic_torch_save(
                {  # the weights too: a kill between two files must not pair one epoch's weights with another's state
                    "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                    "epoch": epoch,
                    "best": best,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                },
                run_dir / STATE_FILE,
            )
            _log_row(run_dir / "metrics.csv", epoch + 1, epoch_loss, lr, metrics)
        # announced once saved: a program that stops the run on this event keeps this epoch
        emit("epoch", epoch=epoch + 1, epochs=cfg.epochs, loss=epoch_loss, lr=lr, eta_s=round(eta, 1))
        if dinfo.world > 1:
            dist.barrier()
    bar.close()
    if writer is not None:
        writer.close()
    emit("done", run_dir=str(run_dir), best=str(run_dir / "best.json"), best_mean_dice=best, seconds=round(time.perf_counter() - t_start, 1))
    if dinfo.world > 1:
        dist.destroy_process_group()
    return run_dir


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def _log_row(path: Path, epoch: int, loss: float, lr: float, metrics: dict | None) -> None:
    fields = ["epoch", "train_loss", "lr"] + [f"dice_{r}" for r in REGIONS] + [f"hd95_{r}" for r in REGIONS] + ["mean_dice"]
    row = {"epoch": epoch, "train_loss": loss, "lr": lr}
    if metrics:
        row.update({f"dice_{r}": metrics["dice"][r] for r in REGIONS})
        row.update({f"hd95_{r}": metrics["hd95"][r] for r in REGIONS})
        row["mean_dice"] = metrics["mean_dice"]
    new = not path.exists()
    with open(path, "a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        if new:
            w.writeheader()
        w.writerow(row)
