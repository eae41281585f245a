"""Checkpoints as data: weights in safetensors, everything else in a JSON beside them.

``name.safetensors`` holds only tensors; ``name.json`` holds what is needed to
rebuild and use the model: the architecture and its config, the modality
order of the input channels, the region order of the outputs, the label
convention of the training data, the preprocessing, the patch size, and
provenance (data, command, date, metrics). Loading never unpickles anything:
a PyTorch pickle (``.pt``/``.pth``/``.ckpt``) is refused with a message saying so.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from napari_sevnet.errors import InputError
from napari_sevnet.files import atomic_output, write_text_atomic
from napari_sevnet.io import MODALITIES
from napari_sevnet.regions import REGIONS

FORMAT = "napari-sevnet-checkpoint"
#: 2: SEV-Net's SE squeeze became a config value (``se_squeeze``) whose default changed; see _migrate
FORMAT_VERSION = 2
REQUIRED_FIELDS = ("format", "architecture", "modalities", "regions", "preprocessing")
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".bin")
WEIGHTS_DIR = Path(__file__).parent / "weights"
#: the default model of every entry point (Segment, Worklist, sevnet-predict, the demo)
BUNDLED = WEIGHTS_DIR / "sevnet_lite_brats.json"
#: trained on synthetic phantoms only: for tests and demos that need accuracy on phantoms, and the start of the real recipe
PHANTOM = WEIGHTS_DIR / "sevnet_lite_phantom.json"

MIN_PATCH, MAX_PATCH = 8, 512  # voxels per axis of a training patch (inference windows have its size)
MAX_PARAMETERS = 500_000_000  # the faithful SEV-Net has 65 M
DEFAULT_PREPROCESSING = {"crop": "nonzero-box", "normalize": "zscore-over-brain", "patch_size": [128, 128, 128]}


@dataclass
class CheckpointInfo:
    """The JSON side of a checkpoint."""

    architecture: dict
    modalities: list[str] = field(default_factory=lambda: list(MODALITIES))
    regions: list[str] = field(default_factory=lambda: list(REGIONS))
    label_convention: str = "brats2021"
    preprocessing: dict = field(default_factory=lambda: dict(DEFAULT_PREPROCESSING))
    provenance: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **self.__dict__}


def checkpoint_files(path: str | os.PathLike) -> tuple[Path, Path]:
    """(weights, json) for a path given as either file or the shared stem."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise InputError(
            path,
            "is a pickle-based PyTorch file; napari-sevnet loads only safetensors checkpoints "
            "(a pickle can run arbitrary code when loaded). Convert it in a trusted session with "
            "napari_sevnet.checkpoint.save_checkpoint.",
        )
    stem = path.with_suffix("") if path.suffix.lower() in (".json", ".safetensors") else path
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def provenance(**extra) -> dict:
    """Who/when/how for a checkpoint: date, command line, versions, plus ``extra``."""
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "torch": torch.__version__,
        **extra,
    }


def save_checkpoint(path: str | os.PathLike, model: nn.Module, info: CheckpointInfo) -> Path:
    """Write ``path``.safetensors and ``path``.json atomically (weights first, then the JSON)."""
    from safetensors.torch import save_file

    module = getattr(model, "module", model)  # unwrap DistributedDataParallel
    weights, meta = checkpoint_files(path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    with atomic_output(weights) as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT})
    write_text_atomic(meta, json.dumps(info.to_json(), indent=2) + "\n")
    return meta


def read_info(path: str | os.PathLike) -> CheckpointInfo:
    """Read and validate the JSON side of a checkpoint."""
    weights, meta = checkpoint_files(path)
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if not weights.is_file():  # neither half: a typo, a moved model
            raise InputError(path, "checkpoint not found (neither its .json nor its .safetensors)") from None
        raise InputError(meta, "checkpoint description (.json) not found next to the weights") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(meta, f"unreadable checkpoint description: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(meta, "checkpoint description must be a JSON object")
    missing = [k for k in REQUIRED_FIELDS if k not in data]
    if missing:
        raise InputError(meta, f"checkpoint description lacks fields {missing}")
    if data["format"] != FORMAT:
        raise InputError(meta, f"not a napari-sevnet checkpoint (format {data['format']!r})")
    arch = data["architecture"]
    if not isinstance(arch, dict) or "name" not in arch:
        raise InputError(meta, "architecture must be an object with a 'name'")
    if list(data["modalities"]) != list(MODALITIES):
        raise InputError(meta, f"model expects input channels {data['modalities']}, this version feeds {list(MODALITIES)}")
    if list(data["regions"]) != list(REGIONS):
        raise InputError(meta, f"model outputs regions {data['regions']}, expected {list(REGIONS)}")
    _migrate(data)
    patch = (data.get("preprocessing") or {}).get("patch_size")
    if patch is not None and not (isinstance(patch, list) and len(patch) == 3 and all(isinstance(v, int) and MIN_PATCH <= v <= MAX_PATCH for v in patch)):
        raise InputError(meta, f"preprocessing.patch_size {patch!r} must be three whole numbers from {MIN_PATCH} to {MAX_PATCH}")
    fields = {k: data[k] for k in CheckpointInfo.__dataclass_fields__ if k in data}
    return CheckpointInfo(**fields)


def _migrate(data: dict) -> None:
    """Read an older checkpoint as the network it was trained as.

    Version 1 SEV-Nets squeezed the stage output after its normalisation; the
    default is now the pre-norm squeeze, so such a checkpoint names the old one.
    """
    arch = data["architecture"]
    if int(data.get("format_version", 1)) < 2 and arch["name"] in ("sevnet", "vnet"):
        arch["config"] = {"se_squeeze": "output", **(arch.get("config") or {})}


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, CheckpointInfo]:
    """Rebuild the model described by the JSON and load the safetensors weights into it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from napari_sevnet.model import build_model

    weights, meta = checkpoint_files(path)
    info = read_info(meta)
    name, config = info.architecture["name"], info.architecture.get("config", {})
    try:
        with torch.device("meta"):  # sized before anything is allocated: a small JSON may ask for a huge network
            parameters = sum(p.numel() for p in build_model(name, config).parameters())
        if parameters > MAX_PARAMETERS:
            raise ValueError(f"it has {parameters / 1e6:.0f} M parameters, over the {MAX_PARAMETERS / 1e6:.0f} M this loader accepts")
        model = build_model(name, config)
    except (TypeError, ValueError) as exc:
        raise InputError(meta, f"cannot build architecture {info.architecture}: {exc}") from None
    if not weights.is_file():
        raise InputError(weights, "checkpoint weights (.safetensors) not found")
    _check_safetensors_header(weights)
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise InputError(weights, f"not a readable safetensors file ({exc})") from None
    damaged = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if damaged:
        raise InputError(weights, f"{len(damaged)} weight tensors hold NaN or infinite values (e.g. {damaged[0]}): the training diverged or the file is damaged")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = [line.strip() for line in str(exc).splitlines() if line.strip()][1:3]
        raise InputError(weights, "weights do not fit the architecture in the JSON: " + "; ".join(first)) from None
    return model.to(device).eval(), info


def _check_safetensors_header(path: Path) -> None:
    """Compare what the header declares with what the file holds, before the loader allocates any of it."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            header_len = int.from_bytes(fh.read(8), "little")
            if not 2 <= header_len <= min(size - 8, 100 * 1024**2):
                raise ValueError(f"header length {header_len}")
            header = json.loads(fh.read(header_len))
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise InputError(path, f"not a readable safetensors file ({exc})") from None
    if ends and 8 + header_len + max(ends) > size:
        raise InputError(path, f"its header declares {max(ends) / 1024**2:.1f} MiB of tensors but the file holds {(size - 8 - header_len) / 1024**2:.1f} MiB: truncated or forged")


def bundled_checkpoint() -> Path:
    """The default weights shipped inside the package (see their ``model_card``)."""
    return _shipped(BUNDLED)


def _readable_json(path: str | os.PathLike) -> dict | None:
    """The checkpoint's JSON, or None when there is none to read (for descriptions, never for loading)."""
    try:
        return json.loads(checkpoint_files(path)[1].read_text(encoding="utf-8"))
    except (OSError, ValueError, InputError):
        return None


def describe(path: str | os.PathLike) -> str:
    """One paragraph on what a checkpoint is and is for, from its model card (for tooltips and reports)."""
    data = _readable_json(path)
    if data is None:
        return f"{path}: no description readable"
    card = data.get("model_card") or {}
    lines = [card.get("name") or Path(path).stem]
    sources = (card.get("training_data") or {}).get("sources")
    if sources:
        lines.append("Trained on " + "; ".join(sources) + ".")
    held_out = card.get("held_out_figures") or {}
    figures = held_out.get("mean")
    if figures:
        # a model retrained on every case after its recipe was scored on held-out ones carries that recipe's figures
        seen = set((data.get("provenance") or {}).get("train_cases") or []) & set(held_out.get("cases") or [])
        whose = " of the same recipe trained without those cases (an estimate for unseen cases)" if seen else ""
        lines.append(f"Held-out Dice{whose} " + ", ".join(f"{r} {figures[r]['dice']:.2f}" for r in REGIONS if r in figures) + ".")
    lines.append(card.get("intended_use") or data.get("intended_use") or "")
    return "\n".join(line for line in lines if line)


#: excitations whose spread across held-out cases is under this share of their spread across channels barely respond to the case
STATIC_ATTENTION_RATIO = 0.1


def attention_caveat(path: str | os.PathLike | None) -> str | None:
    """A warning for the Attention view when the model card measured SE excitations that hardly change between cases."""
    card = ((_readable_json(path) if path is not None else None) or {}).get("model_card") or {}
    spread = (card.get("held_out_figures") or {}).get("se_spread")
    if not spread or spread["across_cases"] >= STATIC_ATTENTION_RATIO * spread["across_channels"]:
        return None
    return (f"This model's SE excitations vary little between cases (spread {spread['across_cases']:.3f} across held-out cases against "
            f"{spread['across_channels']:.2f} across channels): the bars show what it weighs for any scan, not what is particular to this one.")


def training_caveats(path: str | os.PathLike | None) -> list[str]:
    """A warning for every result of a model whose card says it never saw a patient's scan (the phantom weights),
    and of a fine-tune without a card of its own: it was measured on nothing but the cases it trained on."""
    data = (_readable_json(path) if path is not None else None) or {}
    card, made = data.get("model_card") or {}, data.get("provenance") or {}
    caveats = []
    if (card.get("training_data") or {}).get("synthetic_only"):
        caveats.append("the model was trained on synthetic phantoms only and never validated on patient scans: "
                       "its mask of a real case is not to be relied on (the bundled default is trained on expert-labelled BraTS cases)")
    trained, validated = set(made.get("train_cases") or []), set(made.get("val_cases") or [])
    if made.get("init") and not card.get("held_out_figures") and validated <= trained:
        cases = len(trained)
        others = (data.get("metrics") or {}).get("other_patients")
        checked = (f"; on {len(others['cases'])} original case(s) kept out of its replay ({others.get('learnt_by_start', 0)} learnt by the model it "
                   "started from) its Dice went "
                   + ", ".join(f"{r} {others['start'][r]:.2f} -> {others['dice'][r]:.2f}" for r in others["start"])) if others else ""
        caveats.append(f"the model was fine-tuned from {Path(made['init']).name} on {cases} case(s) and measured only on cases it trained on{checked}: "
                       "on other patients' real scans, such a fine-tune segmented worse than the model it started from "
                       "(README, 'Fine-tuning on one corrected case'); check its masks of every new scan closely (the cases it was fine-tuned on have their corrected masks already)")
    return caveats


def sequence_caveats(path: str | os.PathLike | None, sequences) -> list[str]:
    """Warnings for a result segmented from only ``sequences``, with the held-out figures of ``path``'s model card."""
    from napari_sevnet.assumptions import sequence_set_warnings

    if set(MODALITIES) <= set(sequences):
        return []  # every prediction passes here: a complete case reads no model card
    data = (_readable_json(path) if path is not None else None) or {}
    figures = (data.get("model_card") or {}).get("held_out_figures_by_sequences")
    seen = set((data.get("provenance") or {}).get("train_cases") or []) & set((figures or {}).get("cases") or [])
    return sequence_set_warnings(sequences, figures, "this model's recipe trained without those cases" if seen else "this model")


def phantom_checkpoint() -> Path:
    """The weights trained on synthetic phantoms only (tests, phantom demos); not for patient data."""
    return _shipped(PHANTOM)


def _shipped(path: Path) -> Path:
    if not path.is_file():
        raise InputError(path, "these bundled weights are missing from this installation")
    return path
