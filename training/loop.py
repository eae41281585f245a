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
from napari_sevnet.files import atomic_output, remove_stale_temporaries, write_text_atomic
from napari_sevnet.inference import POSTPROCESSING_KEYS, Predictor, enable_huge_pages
from napari_sevnet.metrics import case_metrics
from napari_sevnet.model import build_model, size_divisor
from napari_sevnet.regions import REGIONS
from training import events
from training.config import DEFAULT_PATCH_SIZE, TrainConfig, load_config, save_config, to_dict
from training.data import PatchDataset, discover_cases, load_preprocessed, set_transform_seed, split_cases, training_spacing

log = logging.getLogger("sevnet.train")
STATE_FILE = "resume_state.pt"
#: training patches (one per case) over which a fine-tune that changes the SE squeeze averages the old excitation
EXCITATION_RESTART_PATCHES = 8
#: settings a resumed run may change: how long it trains and what it keeps, not what or how it learns
RESUMABLE_KEYS = ("epochs", "val_every", "keep_epochs", "num_workers")
#: what a run folder holds (their half-written temporaries are removed when a run starts or resumes)
RUN_FILES = ("last.safetensors", "last.json", "best.safetensors", "best.json", STATE_FILE, "config.yaml", "data.json")


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
    """Progress for people (log lines) or for the GUI (one JSON object per line on stdout, see training.events)."""

    def __init__(self, json_lines: bool, enabled: bool):
        self.json_lines = json_lines
        self.enabled = enabled

    def __call__(self, name: str, **fields) -> None:
        if not self.enabled:
            return
        if self.json_lines:
            print(json.dumps(events.event(name, **fields)), flush=True)
        elif name == events.EPOCH:
            log.info("epoch %d/%d  loss %.4f  lr %.2e  eta %.0fs", fields["epoch"], fields["epochs"], fields["loss"], fields["lr"], fields["eta_s"])
        elif name == events.VALIDATION:
            log.info("validation epoch %d  dice %s  mean %.4f", fields["epoch"], fields["dice"], fields["mean_dice"])
        elif name == events.OTHERS:
            log.info("other patients (%s) epoch %d  dice %s  mean %.4f", ", ".join(fields["cases"]), fields["epoch"], fields["dice"], fields["mean_dice"])
        elif name in (events.DONE, events.START):
            log.info("%s: %s", name, fields)


def region_loss(bce_weight: float = 1.0):
    """Dice + ``bce_weight`` x BCE on three sigmoid region channels (not DiceCELoss: its CE is a softmax one)."""
    from monai.losses import DiceLoss

    dice = DiceLoss(sigmoid=True, smooth_nr=1e-5, smooth_dr=1e-5, batch=True)
    if not bce_weight:
        return dice
    bce = nn.BCEWithLogitsLoss()
    return lambda logits, target: dice(logits, target) + bce_weight * bce(logits, target)


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


def _start_from(cfg: TrainConfig) -> tuple[nn.Module, CheckpointInfo, nn.Module | None]:
    """The ``init`` checkpoint's model, with the keys of ``cfg.model.config`` changed on top of its architecture.

    The third value is the checkpoint's own model when the change gives the SE
    blocks another squeeze: its excitation MLPs must restart (see
    :func:`restart_excitations`), at what that model gave.
    """
    model, info = load_checkpoint(cfg.init, "cpu")
    original = None
    if cfg.model.name != info.architecture["name"]:
        log.warning("model.name=%s is not used: a fine-tune keeps the network of %s, a %s", cfg.model.name, cfg.init, info.architecture["name"])
    cfg.model.name = info.architecture["name"]
    config = {**info.architecture.get("config", {}), **(cfg.model.config or {})}
    if config != info.architecture.get("config", {}):
        changed = build_model(cfg.model.name, config)
        try:
            changed.load_state_dict(model.state_dict(), strict=True)
        except RuntimeError:
            raise ValueError(f"model.config {cfg.model.config} changes the shape of {cfg.init}'s weights; a fine-tune can only change keys such as se_squeeze or dropout") from None
        if getattr(changed, "config", None) is not None and changed.config.se and changed.config.se_squeeze != model.config.se_squeeze:
            original = model
        model = changed
    cfg.model.config = config
    return model, info, original


@torch.no_grad()
def restart_excitations(model: nn.Module, original: nn.Module, patches: list[torch.Tensor]) -> None:
    """Restart ``model``'s SE MLPs at ``original``'s mean excitation over ``patches`` (each (4, Z, Y, X))."""
    original.eval()
    sums: dict[str, torch.Tensor] = {}
    for x in patches:
        _, attention, _ = original.forward_with_attention(x[None].cpu())
        for name, exc in attention.items():
            sums[name] = sums.get(name, 0) + exc[0]
    device = next(model.parameters()).device
    model.restart_excitations({name: (total / len(patches)).to(device) for name, total in sums.items()})


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


class Trainer:
    """One training run in named steps: ``setup``, ``train_epoch`` (of ``train_step``), ``validate``, ``save``, ``finish``.

    ``run()`` reads as the loop it is; to add to a run (a new loss term, a
    sampling rule, an extra log) override or wrap one step.
    """

    def __init__(self, cfg: TrainConfig, *, resume: str | Path | None = None, progress_json: bool = False):
        enable_huge_pages()
        self.cfg = cfg
        self.resume = resume
        self.dist = init_distributed()
        self.emit = Emitter(progress_json, self.dist.main)
        self.progress_json = progress_json
        self.device = torch.device(f"cuda:{self.dist.local_rank}" if torch.cuda.is_available() else "cpu")
        self.run_dir = Path(resume or cfg.output)
        self.start_epoch, self.best = 0, -1.0
        self.elapsed_before = 0.0  # wall time of the epochs before a resume
        self.postprocessing: dict = {}  # the init checkpoint's thresholds and clean-up, carried into this run's checkpoints
        self.others_start: dict | None = None  # the starting model's Dice on the replay cases kept out (data.replay_check_cases)
        self.others_now: dict | None = None
        self.others_best: dict | None = None  # theirs at the best epoch: what the best checkpoint does to other patients
        self.start_mean_dice: float | None = None  # a fine-tune's starting model on the validation cases (epoch 0)
        self.start_cases: set[str] = set()  # the case ids the init checkpoint trained on
        self._lock = None  # the run folder's, held while this training writes there

    def run(self) -> Path:
        """Train per the config; returns the run folder (checkpoints best.* and last.*)."""
        try:
            self.setup()
            self.validate_start()
            for epoch in range(self.start_epoch, self.cfg.epochs):
                loss = self.train_epoch(epoch)
                metrics = self.validate(epoch)
                self.step_schedule(metrics)
                self.save(epoch, loss, metrics)
                # announced once saved: a program that stops the run on this event keeps this epoch
                self.emit(events.EPOCH, epoch=epoch + 1, epochs=self.cfg.epochs, loss=loss, lr=self.lr_used, eta_s=round(self.eta, 1))
                if self.dist.world > 1:
                    dist.barrier()
            return self.finish()
        finally:
            if self._lock is not None:
                self._lock.release()

    # ------------------------------------------------------------------ set-up

    def setup(self) -> None:
        cfg = self.cfg
        self._claim_run_folder()
        state = self._resume_state()
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        self.model, squeeze_changed_from = self._build_model()
        self.anchor = self._l2sp_anchor()
        self._setup_data()
        if squeeze_changed_from is not None and state is None:
            patches = [self.dataset[i][0] for i in range(min(len(self.train_refs), EXCITATION_RESTART_PATCHES))]
            restart_excitations(self.model, squeeze_changed_from, patches)
            if self.dist.main:
                log.info("SE squeeze changed to %s: the excitation MLPs restart at the initial model's mean excitation over %d training patches", cfg.model.config.get("se_squeeze"), len(patches))
        self.optimizer = make_optimizer(cfg, [p for p in self.model.parameters() if p.requires_grad])
        self.scheduler = make_scheduler(cfg, self.optimizer)
        self.use_amp = cfg.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        if state is not None:
            try:
                self.model.load_state_dict({k: v.to(self.device) for k, v in state["model"].items()})
            except RuntimeError:
                raise ValueError(f"--resume {self.run_dir}: its saved state belongs to another network than {cfg.model.name} {cfg.model.config}; resume with the run's own config.yaml") from None
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self._follow_schedule_of_resumed_run()
            self.scaler.load_state_dict(state["scaler"])
            torch.set_rng_state(state["torch_rng"])
            self.start_epoch, self.best = int(state["epoch"]) + 1, float(state["best"])
            self.others_start, self.others_best = state.get("others_start"), state.get("others_best")
            self.start_mean_dice = state.get("start_mean_dice")
            self.elapsed_before = float(state.get("elapsed_s", 0.0))
            if self.dist.main and self.start_epoch == cfg.epochs:
                log.info("%s: all %d epochs are trained; nothing to do (resume with epochs=N to train longer)", self.run_dir, cfg.epochs)
            elif self.dist.main:
                log.info("resuming after epoch %d of %d at learning rate %.2e", self.start_epoch, cfg.epochs, self.optimizer.param_groups[0]["lr"])
        self.network = self.model
        if self.dist.world > 1:
            ids = [self.dist.local_rank] if self.device.type == "cuda" else None
            self.network = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.loss_fn = region_loss(cfg.bce_weight)
        self.info = self._checkpoint_info()
        if self.dist.main:
            save_config(cfg, self.run_dir / "config.yaml")
            split = {"train": [r.case_id for r in self.train_refs], "val": [r.case_id for r in self.val_refs], "replay": [r.case_id for r in self.replay_refs],
                     "replay_check": [r.case_id for r in self.check_refs]}
            write_text_atomic(self.run_dir / "data.json", json.dumps(split, indent=2))
        self.writer = _tensorboard(self.run_dir) if self.dist.main else None
        self.emit(events.START, run_dir=str(self.run_dir), epochs=cfg.epochs, start_epoch=self.start_epoch, train_cases=len(self.train_refs),
                  val_cases=len(self.val_refs), validation=self.validation_kind, device=str(self.device))
        from tqdm import tqdm

        self.total_steps = (cfg.epochs - self.start_epoch) * cfg.steps_per_epoch
        quiet = True if self.progress_json or not self.dist.main else None  # None: off when not a terminal
        self.bar = tqdm(total=self.total_steps, unit="step", desc="training", disable=quiet, dynamic_ncols=True)
        self.steps_done, self.eta, self.t_start = 0, 0.0, time.perf_counter()

    def _claim_run_folder(self) -> None:
        """One training per run folder; a new run never replaces another's checkpoints; leftovers of a kill go."""
        from filelock import FileLock, Timeout

        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise ValueError(f"{self.run_dir}: is a file; the run folder (-o) is where checkpoints and logs go")
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"{self.run_dir}: cannot create the run folder: {exc.strerror or exc}") from None
        if self.dist.main:
            self._lock = FileLock(str(self.run_dir / ".training.lock"))
            try:
                self._lock.acquire(timeout=0)
            except Timeout:
                raise ValueError(f"{self.run_dir}: another training is writing to this run folder; choose another -o") from None
            if not self.resume and (self.run_dir / "last.json").exists():
                raise ValueError(f"{self.run_dir}: holds a run already (last.json); continue it with --resume {self.run_dir} or choose another -o")
            remove_stale_temporaries(self.run_dir, RUN_FILES)

    def _resume_state(self) -> dict | None:
        if not self.resume:
            return None
        state_path = self.run_dir / STATE_FILE
        if not state_path.is_file():
            raise FileNotFoundError(f"{state_path}: nothing to resume (no finished epoch saved)")
        self._check_resumed_config()
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        done = int(state["epoch"]) + 1
        if self.cfg.epochs < done:
            raise ValueError(f"--resume {self.run_dir}: it has trained {done} epochs already; epochs={self.cfg.epochs} is fewer (give epochs={done} or more to train on)")
        return state

    def _check_resumed_config(self) -> None:
        """A resumed run continues the run its config.yaml describes: only :data:`RESUMABLE_KEYS` may change.

        Otherwise the checkpoints would mix two trainings under one config (and the learning rate, kept in the
        saved optimizer, would silently ignore an ``lr=`` override). A setting left empty takes the run's.
        """
        saved_path = self.run_dir / "config.yaml"
        try:
            saved = _flat(to_dict(load_config(saved_path)))
        except ValueError as exc:
            raise ValueError(f"--resume {self.run_dir}: {exc}") from None
        given = _flat(to_dict(self.cfg))
        changed = sorted(k for k, v in given.items()
                         if k not in RESUMABLE_KEYS and k != "output" and v not in (None, {}, []) and v != saved.get(k))
        if changed:
            listed = ", ".join(f"{k}: {saved.get(k)!r} -> {given[k]!r}" for k in changed)
            raise ValueError(f"--resume {self.run_dir}: a resumed run keeps its settings ({saved_path}); only {', '.join(RESUMABLE_KEYS)} "
                             f"may change, not {listed}. To train on from these weights with other settings, start a new run "
                             f"with --init {self.run_dir / 'last.json'}")

    def _follow_schedule_of_resumed_run(self) -> None:
        """The learning rate of the next epoch as the config's schedule now gives it.

        The optimizer was saved with the rate its last epoch stepped to; when ``epochs`` grew on resume, a poly or
        cosine schedule stretches to the new length and that rate (0 at the end of a finished run) is no longer it.
        """
        if not isinstance(self.scheduler, torch.optim.lr_scheduler.LambdaLR):
            return
        for group, base, factor in zip(self.optimizer.param_groups, self.scheduler.base_lrs, self.scheduler.lr_lambdas):
            group["lr"] = base * factor(self.scheduler.last_epoch)
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def _build_model(self) -> tuple[nn.Module, nn.Module | None]:
        """The model, and the init checkpoint's own when the fine-tune changes its SE squeeze (see :func:`_start_from`).

        A fine-tune takes the architecture (and how it runs) from its initial checkpoint.
        """
        cfg = self.cfg
        squeeze_changed_from = None
        if cfg.init:
            model, init_info, squeeze_changed_from = _start_from(cfg)
            self.start_cases = {Path(c).name for c in init_info.provenance.get("train_cases") or []}
            cfg.patch_size = cfg.patch_size or init_info.preprocessing.get("patch_size")
            cfg.inference = cfg.inference or init_info.preprocessing.get("inference")
            if cfg.augment.sequence_dropout is None:
                cfg.augment.sequence_dropout = float(init_info.preprocessing.get("sequence_dropout") or 0.0)
            self.postprocessing = {k: init_info.preprocessing[k] for k in POSTPROCESSING_KEYS if k in init_info.preprocessing}  # a fine-tune keeps them
        else:
            cfg.model.config = dict(cfg.model.config or {"preset": "lite"})
            try:
                model = build_model(cfg.model.name, cfg.model.config)
            except (TypeError, ValueError, KeyError) as exc:
                raise ValueError(f"model: cannot build {cfg.model.name} with config {cfg.model.config}: {exc}") from None
        cfg.patch_size = list(cfg.patch_size or DEFAULT_PATCH_SIZE)
        cfg.augment.sequence_dropout = float(cfg.augment.sequence_dropout or 0.0)
        divisor = size_divisor(model, cfg.model.name)
        if any(v % divisor for v in cfg.patch_size):
            fitted = [max(divisor, round(v / divisor) * divisor) for v in cfg.patch_size]
            raise ValueError(f"patch_size {cfg.patch_size} must be multiples of {divisor} for this {cfg.model.name}, e.g. {fitted}")
        cfg.inference = cfg.inference or "windows"
        if cfg.freeze_encoder:
            freeze_encoder(model)
        return model.to(self.device), squeeze_changed_from

    def _l2sp_anchor(self) -> list[tuple[nn.Parameter, torch.Tensor]] | None:
        """The trainable weights paired with their starting values, for ``l2sp`` (None: no penalty)."""
        cfg = self.cfg
        if not cfg.l2sp:
            return None
        if cfg.l2sp < 0 or not cfg.init:
            raise ValueError(f"l2sp={cfg.l2sp}: the penalty pulls a fine-tune toward its init checkpoint; give a positive weight and init=CHECKPOINT")
        return [(p, p.detach().clone()) for p in self.model.parameters() if p.requires_grad]

    def _setup_data(self) -> None:
        cfg = self.cfg
        self.train_refs, self.val_refs = split_cases(discover_cases(cfg.data.roots), cfg.data)
        self.validation_kind = "held_out" if self.val_refs else "none"
        if cfg.data.validate_on_train and not self.val_refs:
            self.val_refs, self.validation_kind = list(self.train_refs), "training_cases"
        self.replay_refs = discover_cases(cfg.data.replay_roots) if cfg.data.replay_roots else []
        own = {r.case_id for r in self.train_refs + self.val_refs}
        corrected = sorted(r.case_id for r in self.replay_refs if r.case_id in own)
        if corrected:  # the replayed original mask would contradict the correction being taught
            self.replay_refs = [r for r in self.replay_refs if r.case_id not in own]
            if self.dist.main:
                log.info("replay leaves out %s: the training data holds their own (corrected) masks", ", ".join(corrected))
        self.check_refs = self._replay_check_cases()
        if cfg.init and self.validation_kind == "training_cases" and not self.replay_refs and self.dist.main:
            log.warning("fine-tuning on %d corrected case(s) without replay data: on real scans such a fine-tune segmented other patients "
                        "worse (python -m benchmarks.finetune_heldout); add original labelled cases, 'data.replay_roots=[ORIGINALS]', "
                        "to harm them less", len(self.train_refs))
        partial = [r for r in self.train_refs + self.val_refs + self.replay_refs if r.missing]
        if partial and not cfg.augment.sequence_dropout:
            named = "; ".join(f"{r.folder} lacks {', '.join(r.missing)}" for r in partial[:3]) + (f"; and {len(partial) - 3} more" if len(partial) > 3 else "")
            raise ValueError(f"cases with sequences missing ({named}): this model is not trained for missing sequences; "
                             "start from one that is (the bundled default) or set augment.sequence_dropout")
        cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else self.run_dir.parent / ".cache"
        self.dataset = PatchDataset(self.train_refs + self.replay_refs, cache_dir, cfg.patch_size, cfg.augment)
        self.val_arrays = [load_preprocessed(r, cache_dir) for r in self.val_refs]
        self.check_arrays = [load_preprocessed(r, cache_dir) for r in self.check_refs]
        self.training_spacing = training_spacing(self.train_refs)

    def _replay_check_cases(self) -> list:
        """``data.replay_check_cases`` replay cases taken out of the replay (a fixed draw), at most half of them; cases the
        starting model never trained on first, since on those the check sees what new patients meet."""
        wanted = self.cfg.data.replay_check_cases
        if wanted < 0:
            raise ValueError(f"data.replay_check_cases is {wanted}: give 0 (no check) or the number of replay cases to keep out")
        n = min(wanted, len(self.replay_refs) // 2)
        if n < wanted and self.replay_refs and self.dist.main:
            log.warning("data.replay_check_cases=%d, but %d replay case(s) keep only %d out of the replay to check other patients on",
                        wanted, len(self.replay_refs), n)
        drawn = np.random.default_rng(12345).permutation(len(self.replay_refs)).tolist()
        kept_out = set(sorted(drawn, key=lambda i: self.replay_refs[i].case_id in self.start_cases)[:n])
        check = [r for i, r in enumerate(self.replay_refs) if i in kept_out]
        self.replay_refs = [r for i, r in enumerate(self.replay_refs) if i not in kept_out]
        if check and all(r.case_id in self.start_cases for r in check) and self.dist.main:
            log.warning("the replay cases kept out to check other patients (%s) were all learnt by the starting model: on real scans such cases "
                        "held while new patients were segmented worse (python -m benchmarks.finetune_heldout); add labelled cases it never "
                        "trained on to the replay data for a check that can tell", ", ".join(r.case_id for r in check))
        return check

    def _checkpoint_info(self) -> CheckpointInfo:
        cfg = self.cfg
        return CheckpointInfo(
            architecture={"name": cfg.model.name, "config": cfg.model.config},
            label_convention=cfg.label_convention,
            preprocessing={"crop": "nonzero-box", "normalize": "zscore-over-brain", "patch_size": list(cfg.patch_size), "inference": cfg.inference,
                           "spacing_mm": self.training_spacing, "sequence_dropout": cfg.augment.sequence_dropout,
                           **self.postprocessing},
            provenance=provenance(
                seed=cfg.seed,
                git_revision=_git_revision(),
                init=cfg.init,
                train_cases=[str(r.folder) for r in self.train_refs],
                val_cases=[str(r.folder) for r in self.val_refs],
                replay_cases=[str(r.folder) for r in self.replay_refs],
                replay_check_cases=[str(r.folder) for r in self.check_refs],
                world_size=self.dist.world,
            ),
        )

    # ------------------------------------------------------------------ training

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """One optimizer step on a batch; returns its loss."""
        cfg = self.cfg
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.use_amp):
            loss = self.loss_fn(self.network(x).float(), y)
        penalty = self.cfg.l2sp * sum(((p - p0) ** 2).sum() for p, p0 in self.anchor) if self.anchor else 0.0
        self.scaler.scale(loss + penalty).backward()
        if cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach())

    def train_epoch(self, epoch: int) -> float:
        """All steps of one epoch; returns the mean loss."""
        cfg = self.cfg
        self.model.train()
        indices = _epoch_indices(cfg, epoch, len(self.train_refs), len(self.replay_refs), self.dist)
        set_transform_seed(self.dataset, (cfg.seed * 100003 + epoch) * self.dist.world + self.dist.rank)
        losses = []
        for step in range(cfg.steps_per_epoch):
            batch = [self.dataset[i] for i in indices[step * cfg.batch_size : (step + 1) * cfg.batch_size]]
            x = torch.stack([b[0] for b in batch]).to(self.device)
            y = torch.stack([b[1] for b in batch]).to(self.device)
            losses.append(self.train_step(x, y))
            self.steps_done += 1
            self.eta = (time.perf_counter() - self.t_start) / self.steps_done * (self.total_steps - self.steps_done)
            self.bar.update(1)
            self.bar.set_postfix(epoch=epoch + 1, loss=f"{losses[-1]:.4f}")
            if self.progress_json:
                self.emit(events.STEP, epoch=epoch + 1, epochs=cfg.epochs, step=step + 1, steps=cfg.steps_per_epoch, loss=losses[-1], eta_s=round(self.eta, 1))
        self.lr_used = self.optimizer.param_groups[0]["lr"]
        return float(np.mean(losses))

    def validate_start(self) -> None:
        """A fine-tune's starting model on the validation cases, as epoch 0: a run that ends worse can say so."""
        if self.cfg.init and self.start_epoch == 0 and self.val_arrays and self.dist.main:
            metrics = validate(Predictor(model=self.model, info=self.info, device=self.device), self.val_arrays)
            self.emit(events.VALIDATION, epoch=0, **metrics)
            self.start_mean_dice = metrics["mean_dice"]
        if self.start_epoch == 0:
            self.others_start = self.check_others(0)

    def validate(self, epoch: int) -> dict | None:
        """Metrics on the validation cases every ``val_every`` epochs and at the end (main process only)."""
        cfg = self.cfg
        due = (epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs
        if not (self.val_arrays and due and self.dist.main):
            return None
        metrics = validate(Predictor(model=self.model, info=self.info, device=self.device), self.val_arrays)
        self.emit(events.VALIDATION, epoch=epoch + 1, **metrics)
        self.others_now = self.check_others(epoch + 1)
        return metrics

    @property
    def check_learnt_by_start(self) -> int:
        """How many of the kept-out replay cases the starting model trained on: for those the check measures forgetting,
        not what new patients meet."""
        return sum(r.case_id in self.start_cases for r in self.check_refs)

    def check_others(self, epoch: int) -> dict | None:
        """Dice on the replay cases kept out of the replay (main process only): what the fine-tune does to other patients."""
        if not (self.check_arrays and self.dist.main):
            return None
        dice = validate(Predictor(model=self.model, info=self.info, device=self.device), self.check_arrays)["dice"]
        self.emit(events.OTHERS, epoch=epoch, dice=dice, mean_dice=float(np.mean(list(dice.values()))), cases=[r.case_id for r in self.check_refs],
                  learnt_by_start=self.check_learnt_by_start)
        return dice

    def step_schedule(self, metrics: dict | None) -> None:
        if self.cfg.schedule != "plateau":
            self.scheduler.step()
        elif metrics is not None or self.dist.world > 1:
            value = torch.tensor([metrics["mean_dice"] if metrics else 0.0])
            if self.dist.world > 1:
                dist.broadcast(value, 0)
            self.scheduler.step(float(value))

    # ------------------------------------------------------------------ saving

    def save(self, epoch: int, loss: float, metrics: dict | None) -> None:
        """Checkpoints (last, and best by validation mean Dice), the exact resume state, the logs."""
        if not self.dist.main:
            return
        if self.writer is not None:
            self.writer.add_scalar("loss/train", loss, epoch + 1)
            self.writer.add_scalar("lr", self.lr_used, epoch + 1)
            for r in REGIONS if metrics else ():
                self.writer.add_scalar(f"dice/{r}", metrics["dice"][r], epoch + 1)
        elapsed = self.elapsed_before + time.perf_counter() - self.t_start
        self.info.metrics = {"epoch": epoch + 1, "train_loss": loss, "elapsed_s": round(elapsed, 1), **(metrics or {})}
        if metrics and self.others_now is not None and self.others_start is not None:
            self.info.metrics["other_patients"] = {"cases": [r.case_id for r in self.check_refs], "learnt_by_start": self.check_learnt_by_start,
                                                   "start": self.others_start, "dice": self.others_now}
        if metrics and metrics["mean_dice"] > self.best:
            self.best = metrics["mean_dice"]
            self.others_best = self.others_now
            save_checkpoint(self.run_dir / "best", self.model, self.info)
        save_checkpoint(self.run_dir / "last", self.model, self.info)
        if self.cfg.keep_epochs:
            save_checkpoint(self.run_dir / f"epoch_{epoch + 1:03d}", self.model, self.info)
        if not self.val_arrays:
            save_checkpoint(self.run_dir / "best", self.model, self.info)
        _atomic_torch_save(
            {  # the weights too: a kill between two files must not pair one epoch's weights with another's state
                "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                "epoch": epoch,
                "best": self.best,
                "others_start": self.others_start,
                "start_mean_dice": self.start_mean_dice,
                "others_best": self.others_best,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "elapsed_s": elapsed,
            },
            self.run_dir / STATE_FILE,
        )
        _log_row(self.run_dir / "metrics.csv", epoch + 1, loss, self.lr_used, metrics)

    def finish(self) -> Path:
        self.bar.close()
        if self.start_mean_dice is not None and self.best < self.start_mean_dice and self.dist.main:
            log.warning("the best checkpoint's validation mean Dice, %.3f, is below the starting model's, %.3f (epoch 0): this run made "
                        "the starting model (init) worse on its validation cases; keep it unless you know why", self.best, self.start_mean_dice)
        if self.others_start and self.others_best and events.fell_by(self.others_start, self.others_best) > events.OTHERS_TOLERANCE and self.dist.main:
            log.warning("the best checkpoint segments the %d replay case(s) kept out of the fine-tune (%s) worse than the starting model: %s; "
                        "it may be worse for other patients too", len(self.check_refs), ", ".join(r.case_id for r in self.check_refs),
                        ", ".join(f"{r} {self.others_start[r]:.3f} -> {self.others_best[r]:.3f}" for r in REGIONS))
        if self.writer is not None:
            self.writer.close()
        self.emit(events.DONE, run_dir=str(self.run_dir), best=str(self.run_dir / "best.json"), best_mean_dice=self.best,
                  seconds=round(time.perf_counter() - self.t_start, 1))
        if self.dist.world > 1:
            dist.destroy_process_group()
        return self.run_dir


def _flat(tree: dict, prefix: str = "") -> dict:
    """{'data': {'roots': [...]}} -> {'data.roots': [...]}: a config's settings by their override names."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "config":  # model.config is one setting (the architecture's keywords)
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def train(cfg: TrainConfig, *, resume: str | Path | None = None, progress_json: bool = False) -> Path:
    """Train per ``cfg``; returns the run folder (checkpoints best.* and last.*)."""
    return Trainer(cfg, resume=resume, progress_json=progress_json).run()


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
    with open(path, "a", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        if new:
            w.writeheader()
        w.writerow(row)
