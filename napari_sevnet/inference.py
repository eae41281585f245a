"""Predictor: from a (4, Z, Y, X) case to nested WT/TC/ET masks, probabilities and SE attention.

The pipeline is the field's standard one (nnU-Net, MONAI): crop to the
non-zero brain box, z-score each modality over brain voxels, run MONAI's
``sliding_window_inference`` with Gaussian weighting in windows of the size
the model was trained on, optionally average the 8 mirror flips (test-time
augmentation), paste the probabilities back into the full grid and threshold
them into nested regions. The same code runs validation in the trainer, the
plugin and ``sevnet-predict``.

Why windows of the training patch size: instance normalisation takes its
statistics from whatever the network sees. A model trained on 96^3 patches
and run on the whole 144x176x144 brain crop in one pass sees other
statistics, and it shows: WT Dice 0.84 in one pass against 0.98 in 96^3
windows (the fine-tuned real case TCGA-DU-7294), 0.96 in 112^3 and 0.92 in
128^3 windows. A model trained on brain-sized patches (its checkpoint says
``preprocessing.inference = "whole_crop"``) runs the whole brain crop in one
pass instead: the statistics it sees match training, and one pass over the
crop costs a third of the overlapping windows. A crop too large for one pass
(``WHOLE_CROP_MAX_VOXELS``: an unstripped or high-resolution scan) falls back
to windows of the training patch size.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from napari_sevnet.assumptions import TRAINING_SPACING_MM, input_warnings, needs_resampling
from napari_sevnet.checkpoint import CheckpointInfo, bundled_checkpoint, load_checkpoint, sequence_caveats, training_caveats
from napari_sevnet.errors import Cancelled, InputError
from napari_sevnet.io import MODALITIES, MODALITY_LABELS
from napari_sevnet.model import size_divisor
from napari_sevnet.regions import REGIONS, make_nested, postprocess

ProgressCallback = Callable[[float, str], None]

#: window overlap: on TCGA-DU-7294 (96^3 windows) 0.25 scored the Dice of 0.5 in 0.6 of the time
DEFAULT_OVERLAP = 0.25
#: largest padded crop run in one pass (a skull-stripped 1 mm brain is about 4e6 voxels; memory grows with it)
WHOLE_CROP_MAX_VOXELS = 8_000_000
INFERENCE_MODES = ("windows", "whole_crop")
MIRROR_PASSES = 8  # test-time augmentation: every combination of flips along Z, Y and X


def enable_huge_pages() -> None:
    """Let PyTorch back its large CPU tensors with transparent huge pages (call before the first large tensor).

    A 3D network's CPU tensors are tens of MB each; without huge pages the
    kernel zero-fills them 4 KiB at a time on every pass (half the CPU time
    went to the system): a 96^3 window 0.70 -> 0.49 s on 2 cores. PyTorch reads
    the variable once, at its first large allocation; ``THP_MEM_ALLOC_ENABLE=0``
    set by the user keeps it off. Called where this project's compute starts
    (the Predictor, the command lines, the trainer), not at import: napari
    imports this package whenever it probes a NIfTI file.
    """
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' -> CUDA when available, else CPU; 'cuda' without a GPU is a clear error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("CUDA was requested but no CUDA GPU is available to PyTorch")
    return device


def brain_box(image: np.ndarray, margin: int = 0) -> tuple[slice, slice, slice]:
    """Bounding box of voxels non-zero in any modality (the skull-stripped brain)."""
    nonzero = np.any(image != 0, axis=0)
    if not nonzero.any():
        return tuple(slice(0, n) for n in nonzero.shape)
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(nonzero.any(axis=other))
        box.append(slice(max(int(idx[0]) - margin, 0), min(int(idx[-1]) + 1 + margin, nonzero.shape[axis])))
    return tuple(box)


def normalize(image: np.ndarray) -> np.ndarray:
    """Z-score each modality over the brain (voxels non-zero in any modality); zero outside."""
    brain = np.any(image != 0, axis=0)
    out = np.zeros_like(image, dtype=np.float32)
    if not brain.any():
        return out
    for c in range(image.shape[0]):
        values = image[c][brain]
        std = float(values.std())
        out[c][brain] = (values - float(values.mean())) / (std if std > 0 else 1.0)
    return out


def preprocess(image: np.ndarray) -> tuple[np.ndarray, tuple[slice, slice, slice]]:
    """Crop to the brain box and normalize: the input the networks are trained on."""
    box = brain_box(image)
    return normalize(image[(slice(None), *box)]), box


def _resize(volumes: np.ndarray, shape) -> np.ndarray:
    """(C, Z, Y, X) float volumes resampled to ``shape`` (trilinear)."""
    x = torch.from_numpy(np.ascontiguousarray(volumes, dtype=np.float32))[None]
    return F.interpolate(x, size=tuple(int(n) for n in shape), mode="trilinear", align_corners=False)[0].numpy()


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """Entropy in bits of a Bernoulli probability: 0 when sure, 1 at p = 0.5."""
    q = np.clip(p, 1e-7, 1 - 1e-7)
    return (-(q * np.log2(q) + (1 - q) * np.log2(1 - q))).astype(np.float32)


#: the checkpoint's preprocessing entries that say how probabilities become masks (a fine-tune and publish carry them)
POSTPROCESSING_KEYS = ("thresholds", "min_component_ml", "min_et_voxels", "fill_core_holes")


def per_region(value: float | dict[str, float], *, default: float, number_for: tuple[str, ...] = REGIONS) -> tuple[float, float, float]:
    """A per-region setting as (WT, TC, ET) from a dict by region name (``default`` where absent) or one number for ``number_for``."""
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(REGIONS))
        if unknown:
            raise ValueError(f"unknown regions {unknown} in a per-region setting; known: {list(REGIONS)}")
        return tuple(float(value.get(r, default)) for r in REGIONS)
    return tuple(float(value) if r in number_for else default for r in REGIONS)


def _dropout_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0]


@dataclass
class Prediction:
    """What one Predictor run returns, all on the full (Z, Y, X) grid of the input."""

    regions: np.ndarray  # (3, Z, Y, X) bool, nested WT/TC/ET
    probabilities: np.ndarray  # (3, Z, Y, X) float32 in [0, 1]
    attention: dict[str, np.ndarray]  # stage -> mean SE excitation (C,)
    box: tuple[slice, slice, slice]  # the brain box that was segmented
    timings: dict[str, float] = field(default_factory=dict)
    device: str = "cpu"
    uncertainty: np.ndarray | None = None  # (3, Z, Y, X) float32: entropy of the mean probability, in bits
    disagreement: np.ndarray | None = None  # (3, Z, Y, X) bool: the ensemble members do not all agree
    members: int = 1  # forward passes averaged (mirror flips x dropout samples)
    tta: bool = False  # mirror flips were averaged (``members`` says how many passes)
    postprocessing: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # how the input differs from what the model was trained on
    notes: list[str] = field(default_factory=list)  # what was done about it (resampling, missing sequences)
    sequences: tuple[str, ...] = MODALITIES  # the sequences the model was given (the others were zero)
    checkpoint: str | None = None  # the checkpoint that made it (the missing-sequence model when the default cannot)


class Predictor:
    """Segment cases with one checkpoint.

    ``Predictor()`` uses the bundled default weights; ``Predictor(path)`` any
    napari-sevnet checkpoint. ``tta`` and ``uncertainty`` given here are the
    defaults of :meth:`predict`, which can change them per call, so one loaded
    model serves every caller. Calls are serialised by a lock; nothing is kept
    between calls but the model.
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike | None = None,
        device: str | torch.device = "auto",
        *,
        tta: bool | int = False,
        overlap: float = DEFAULT_OVERLAP,
        threshold: float | dict[str, float] | None = None,
        whole_crop: bool | None = None,
        model: torch.nn.Module | None = None,
        info: CheckpointInfo | None = None,
        uncertainty: bool = False,
        mc_samples: int = 0,
        min_et_voxels: int | None = None,
        min_component_ml: float | dict[str, float] | None = None,
        fill_core_holes: bool | None = None,
    ):
        enable_huge_pages()
        self.device = resolve_device(device)
        if model is None:
            self.checkpoint = str(checkpoint or bundled_checkpoint())
            model, info = load_checkpoint(self.checkpoint, self.device)
        else:
            self.checkpoint = str(checkpoint) if checkpoint else None
        self.model = model.to(self.device).eval()
        self.info = info
        self.tta = tta
        self.overlap = overlap
        name = info.architecture["name"] if info else "sevnet"
        self.divisor = size_divisor(self.model, name)
        patch = (info.preprocessing.get("patch_size") if info else None) or [128, 128, 128]
        self.patch_size = tuple(int(p) for p in patch)
        if any(p % self.divisor for p in self.patch_size):
            raise InputError(self.checkpoint, f"preprocessing.patch_size {list(self.patch_size)} must be multiples of {self.divisor} for this network")
        mode = (info.preprocessing.get("inference") if info else None) or "windows"
        if mode not in INFERENCE_MODES:
            raise ValueError(f"checkpoint asks for inference mode {mode!r}; known: {INFERENCE_MODES}")
        self.whole_crop = mode == "whole_crop" if whole_crop is None else bool(whole_crop)
        self.uncertainty = uncertainty
        self.mc_samples = int(mc_samples)
        if self.mc_samples and not _dropout_layers(self.model):
            raise ValueError("MC-dropout needs a model with dropout; this one has none (train with model.config.dropout > 0)")
        declared = info.preprocessing if info else {}
        self.thresholds = per_region(declared.get("thresholds", 0.5) if threshold is None else threshold, default=0.5)
        # one number is the whole tumour's smallest piece (how checkpoints before per-region clean-up declare it)
        self.min_component_ml = per_region(declared.get("min_component_ml", 0.0) if min_component_ml is None else min_component_ml, default=0.0, number_for=("WT",))
        self.min_et_voxels = int(declared.get("min_et_voxels", 0) if min_et_voxels is None else min_et_voxels)
        self.fill_core_holes = bool(declared.get("fill_core_holes", False) if fill_core_holes is None else fill_core_holes)
        self.training_spacing = tuple(float(v) for v in (declared.get("spacing_mm") or TRAINING_SPACING_MM))
        self.model_caveats = training_caveats(self.checkpoint)  # read once: every result carries them
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ public

    def predict(
        self,
        image: np.ndarray,
        *,
        spacing: tuple[float, float, float] | None = None,
        sequences: tuple[str, ...] | None = None,
        tta: bool | int | None = None,
        uncertainty: bool | None = None,
        progress: ProgressCallback | None = None,
        cancel: Callable[[], bool] | threading.Event | None = None,
    ) -> Prediction:
        """Segment one case ``image`` (4, Z, Y, X) in the checkpoint's modality order.

        ``sequences``: the sequences present (None: all four); missing ones are
        zero. A model not trained for missing sequences refuses such a case by
        name; the bundled default hands it to the bundled missing-sequence model.
        ``spacing``: the voxel size in mm; a case at another spacing than the model
        was trained at is resampled to it and the result back to the case's grid
        (a note says so), and the input is checked against the model's other
        assumptions (warnings). ``tta`` / ``uncertainty``: this call's settings
        (None: the Predictor's defaults).
        ``tta`` True averages the 8 mirror flips; a number averages that many of
        them (2: the scan and its left-right mirror, the cheapest ensemble).
        """
        image = np.asarray(image)
        if image.ndim != 4 or image.shape[0] != 4:
            raise ValueError(f"expected a (4, Z, Y, X) image, got shape {image.shape}")
        sequences = tuple(m for m in MODALITIES if m in (sequences or MODALITIES))
        if len(sequences) < len(MODALITIES) and not self.handles_missing_sequences:
            missing = ", ".join(MODALITY_LABELS[m] for m in MODALITIES if m not in sequences)
            raise InputError(self.checkpoint, f"this model was trained with all four sequences and the case has no {missing}: choose a model trained for missing sequences (the bundled default is one)")
        if len(sequences) < len(MODALITIES):
            image = np.where(np.isin(np.arange(len(MODALITIES)), [MODALITIES.index(m) for m in sequences])[:, None, None, None], image, 0).astype(np.float32)
        tta = self.tta if tta is None else tta
        passes = MIRROR_PASSES if tta is True else max(int(tta), 1)
        uncertainty = self.uncertainty if uncertainty is None else bool(uncertainty)
        is_cancelled = cancel.is_set if isinstance(cancel, threading.Event) else (cancel or (lambda: False))
        report = progress or (lambda fraction, message: None)
        timings = {}
        warnings = self.model_caveats + input_warnings(image, spacing or self.training_spacing) + sequence_caveats(self.checkpoint, sequences)
        notes = []
        with self._lock:
            t0 = time.perf_counter()
            report(0.0, "preprocessing")
            work = self._at_training_spacing(image, spacing)
            if work is not image:
                notes.append(f"resampled from {'x'.join(f'{s:.2f}' for s in spacing)} mm to the model's {'x'.join(f'{t:.2f}' for t in self.training_spacing)} mm and back")
            crop, box = preprocess(work)
            timings["preprocess_s"] = time.perf_counter() - t0

            t1 = time.perf_counter()
            try:
                probs, attention, disagreement, members = self._infer(crop, report, is_cancelled, passes, uncertainty)
            except torch.cuda.OutOfMemoryError:
                if self.device.type != "cuda":
                    raise
                probs, attention, disagreement, members = self._infer_in_less_memory(crop, report, is_cancelled, passes, uncertainty, notes)
            timings["inference_s"] = time.perf_counter() - t1
            if not np.all(np.isfinite(probs)):
                raise InputError(self.checkpoint, "the model gave NaN or infinite probabilities on this case: its weights are damaged or it diverged in training")

            t2 = time.perf_counter()
            full = np.zeros((3, *work.shape[1:]), dtype=np.float32)
            full[(slice(None), *box)] = probs
            members_disagree = None
            if disagreement is not None:
                members_disagree = np.zeros(full.shape, dtype=bool)
                members_disagree[(slice(None), *box)] = disagreement
            if work is not image:  # back onto the case's own grid
                full = _resize(full, image.shape[1:])
                members_disagree = _resize(members_disagree, image.shape[1:]) > 0.5 if members_disagree is not None else None
                box = brain_box(image)
            regions = make_nested(full > np.asarray(self.thresholds, dtype=np.float32)[:, None, None, None])
            if len(sequences) < len(MODALITIES):
                notes.append(f"segmented without {', '.join(MODALITY_LABELS[m] for m in MODALITIES if m not in sequences)} (a model trained with missing sequences)")
            result = Prediction(regions=regions, probabilities=full, attention=attention, box=box, timings=timings, device=str(self.device), members=members,
                                tta=passes > 1, warnings=warnings, notes=notes, sequences=sequences, checkpoint=self.checkpoint)
            result.postprocessing = {"thresholds": dict(zip(REGIONS, self.thresholds))} | postprocess(
                regions, spacing or self.training_spacing, dict(zip(REGIONS, self.min_component_ml)), self.min_et_voxels, self.fill_core_holes)
            if uncertainty:
                result.uncertainty = binary_entropy(full)
                result.disagreement = members_disagree
            timings["postprocess_s"] = time.perf_counter() - t2
            timings["total_s"] = time.perf_counter() - t0
            report(1.0, "done")
        return result

    @property
    def handles_missing_sequences(self) -> bool:
        """Whether the model was trained with sequences left out (``preprocessing.sequence_dropout`` > 0)."""
        return bool(self.info and float(self.info.preprocessing.get("sequence_dropout") or 0) > 0)

    def feature_map(self, image: np.ndarray, stage: str, channel: int, *, spacing: tuple[float, float, float] | None = None) -> np.ndarray:
        """Channel ``channel`` of one stage's feature maps (Z, Y, X) on the image's grid, for display: computed as
        ``predict`` sees the case (at the model's spacing when it resamples), one channel up-sampled (a stage's all
        would take gigabytes on a fine scan)."""
        image = np.asarray(image)
        work = self._at_training_spacing(image, spacing)
        crop, box = preprocess(work)
        x, pads = self._pad(torch.from_numpy(crop)[None].to(self.device))
        with self._lock, torch.inference_mode():
            _, _, feats = self.model.forward_with_attention(x, keep_features=True)
        if stage not in feats:
            raise ValueError(f"unknown stage {stage!r}; stages: {list(feats)}")
        if not 0 <= channel < feats[stage].shape[1]:
            raise ValueError(f"stage {stage} has channels 0 to {feats[stage].shape[1] - 1}, not {channel}")
        fmap = F.interpolate(feats[stage][:, channel : channel + 1].float(), size=x.shape[2:], mode="trilinear", align_corners=False)
        full = np.zeros((1, *work.shape[1:]), dtype=np.float32)
        full[(slice(None), *box)] = self._unpad(fmap, pads)[0].cpu().numpy()
        return (full if work is image else _resize(full, image.shape[1:]))[0]

    def _at_training_spacing(self, image: np.ndarray, spacing: tuple[float, float, float] | None) -> np.ndarray:
        """``image`` resampled to the model's training spacing, or ``image`` itself when its ``spacing`` is near it (or unknown)."""
        if spacing is None or not needs_resampling(spacing, self.training_spacing):
            return image
        return _resize(image, tuple(max(int(round(n * s / t)), 1) for n, s, t in zip(image.shape[1:], spacing, self.training_spacing)))

    # ------------------------------------------------------------------ internals

    def _pad(self, x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        pads = [(-s) % self.divisor for s in x.shape[2:]]
        spec = []
        for p in reversed(pads):
            spec += [p // 2, p - p // 2]
        return F.pad(x, spec), pads

    @staticmethod
    def _unpad(x: torch.Tensor, pads: list[int]) -> torch.Tensor:
        sl = [slice(None), slice(None)]
        for p, s in zip(pads, x.shape[2:]):
            sl.append(slice(p // 2, s - (p - p // 2)))
        return x[tuple(sl)]

    def _fits_one_pass(self, x: torch.Tensor) -> bool:
        return int(np.prod([s + (-s) % self.divisor for s in x.shape[2:]])) <= WHOLE_CROP_MAX_VOXELS

    def _forward(self, x: torch.Tensor, attention_sum: dict, counts: list[int]) -> torch.Tensor:
        """Logits for a batch of windows, adding the SE excitations into ``attention_sum``."""
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.device.type == "cuda"):
            if hasattr(self.model, "forward_with_attention"):
                logits, attention, _ = self.model.forward_with_attention(x)
                for name, exc in attention.items():
                    total = exc.float().sum(0).cpu().numpy()
                    attention_sum[name] = attention_sum.get(name, 0) + total
                counts[0] += x.shape[0]
            else:
                logits = self.model(x)
        return logits.float()

    def _infer(self, crop: np.ndarray, report: ProgressCallback, is_cancelled, passes: int, uncertainty: bool):
        """Mean probabilities, mean SE attention, member disagreement (or None) and the member count."""
        # the scan itself first, then its left-right mirror (X), then the other flips
        flips = [axes for n in range(4) for axes in itertools.combinations((4, 3, 2), n)][:passes]
        members = [axes for axes in flips for _ in range(max(self.mc_samples, 1))]
        x = torch.from_numpy(crop)[None].to(self.device)
        attention_sum: dict[str, np.ndarray] = {}
        counts = [0]
        acc = votes = None
        cut = torch.tensor(self.thresholds, device=self.device).view(1, 3, 1, 1, 1)
        dropout = _dropout_layers(self.model) if self.mc_samples else []
        try:
            for layer in dropout:
                layer.train()  # MC-dropout: sample the dropout masks at inference
            with torch.inference_mode():
                for i, axes in enumerate(members):
                    if is_cancelled():
                        raise Cancelled("segmentation cancelled")
                    xi = torch.flip(x, axes) if axes else x
                    if self.whole_crop and self._fits_one_pass(xi):
                        padded, pads = self._pad(xi)
                        logits = self._unpad(self._forward(padded, attention_sum, counts), pads)
                    else:
                        logits = self._sliding(xi, attention_sum, counts, report, is_cancelled, i, len(members))
                    p = torch.sigmoid(logits)
                    p = torch.flip(p, axes) if axes else p
                    acc = p if acc is None else acc + p
                    if uncertainty:
                        vote = (p > cut).to(torch.uint8)
                        votes = vote if votes is None else votes + vote
                    report((i + 1) / len(members), f"pass {i + 1}/{len(members)}")
        finally:
            for layer in dropout:
                layer.eval()
        probs = (acc / len(members))[0].cpu().numpy()
        attention = {k: v / max(counts[0], 1) for k, v in attention_sum.items()}
        disagreement = ((votes > 0) & (votes < len(members)))[0].cpu().numpy() if votes is not None else None
        return probs, attention, disagreement, len(members)

    def _infer_in_less_memory(self, crop, report, is_cancelled, passes: int, uncertainty: bool, notes: list[str]):
        """The GPU ran out of memory (a laptop's small one): windows instead of the whole brain in one pass, then the CPU
        (for this and later calls: a GPU too small once stays too small); each step is said in ``notes``."""
        torch.cuda.empty_cache()
        if self.whole_crop:
            self.whole_crop = False
            try:
                out = self._infer(crop, report, is_cancelled, passes, uncertainty)
                notes.append("the GPU ran out of memory for the whole brain in one pass: segmented in windows (slower; later cases too)")
                return out
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
        self.device = torch.device("cpu")
        self.model.to(self.device)
        notes.append("the GPU ran out of memory: segmented on the CPU instead (slower; later cases too); choose the CPU, or free the GPU, to avoid the retry")
        return self._infer(crop, report, is_cancelled, passes, uncertainty)

    def _sliding(self, x, attention_sum, counts, report, is_cancelled, pass_index, passes):
        from monai.inferers import sliding_window_inference

        roi = self.patch_size  # a smaller crop is zero-padded to it, as the trainer pads small crops
        steps = 1
        for s, r in zip(x.shape[2:], roi):
            interval = max(int(r * (1 - self.overlap)), 1)
            steps *= max(-(-(s - r) // interval), 0) + 1 if s > r else 1
        done = [0]

        def window_fn(batch):
            if is_cancelled():
                raise Cancelled("segmentation cancelled")
            out = self._forward(batch, attention_sum, counts)
            done[0] += batch.shape[0]
            report((pass_index + min(done[0] / steps, 1.0)) / passes, f"window {done[0]}/{steps}")
            return out

        return sliding_window_inference(x, roi, sw_batch_size=1, predictor=window_fn, overlap=self.overlap, mode="gaussian", padding_mode="constant")
