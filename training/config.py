"""Typed training configuration: YAML in, ``key=value`` overrides on top, effective YAML out.

Paths in a config are relative to the config file's folder (no absolute paths
in the shipped configs); overrides on the command line are relative to the
working directory.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

OPTIMIZERS = ("adam", "adamw", "nadam", "sgd")
SCHEDULES = ("poly", "cosine", "plateau", "constant")
#: patch size of a run that names none and starts from no checkpoint
DEFAULT_PATCH_SIZE = (96, 96, 96)


INFERENCE_MODES = ("windows", "whole_crop")


@dataclass
class ModelConfig:
    name: str = "sevnet"  # sevnet | vnet | unet3d | segresnet | eenet | unet2d
    # None: {"preset": "lite"}, or with `init` the initial checkpoint's config; with `init`, keys given here
    # are changed on top of it (e.g. se_squeeze), as long as the weights still fit
    config: dict | None = None


@dataclass
class DataConfig:
    roots: list[str] = field(default_factory=list)  # folders of BraTS-layout case folders (or fine-tune datasets)
    split: str | None = None  # JSON {"train": [case ids], "val": [...]}; else k folds
    folds: int = 5
    fold: int = 0
    val_cases: int | None = None  # fixed number of validation cases instead of 1/folds
    keep_out_from: int = 2  # a fold is kept out to validate on from this many cases on; fewer are all trained on
    replay_roots: list[str] = field(default_factory=list)  # original cases mixed into fine-tuning
    replay_fraction: float = 0.5
    # that many replay cases are kept out of the replay and scored before and during fine-tuning: other patients, whose
    # Dice tells whether the fine-tune harms them (0: none; at most half the replay cases)
    replay_check_cases: int = 0
    cache_dir: str | None = None  # default: <output>/../.cache
    validate_on_train: bool = False  # fine-tuning a few corrected cases: report how well the model now fits them


@dataclass
class AugmentConfig:
    foreground_fraction: float = 0.67
    flip: bool = True
    intensity_scale: float = 0.1  # per modality: x (1 +- this)
    intensity_shift: float = 0.1  # per modality: + (+- this) standard deviations
    gamma: float = 0.0  # per modality, probability 0.3: contrast gamma in [1 - this, 1 + this]
    rotate_degrees: float = 0.0  # random rotation about each axis, up to this
    scale: float = 0.0  # random zoom in [1 - this, 1 + this] (one resampling with the rotation)
    affine_prob: float = 0.3  # probability of the rotation / zoom when either is on
    elastic: bool = False
    # per modality, probability 0.5: a smooth multiplicative field (degree-3 Legendre, coefficients in +- this) as an
    # uncorrected receive coil leaves; 0 turns it off (BraTS scans are not bias-corrected, README "Bias-field")
    bias_field: float = 0.0
    # probability that a patch loses a random non-empty set of its sequences (zeroed; at least one stays): a model that
    # segments cases with missing sequences. None: the init checkpoint's (a fine-tune keeps the ability), else 0
    sequence_dropout: float | None = None


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    patch_size: list[int] | None = None  # None: the init checkpoint's (a fine-tune keeps its windows), else DEFAULT_PATCH_SIZE
    # how the trained model is run (validation, Predictor): windows of patch_size, or the whole brain crop in one
    # pass (for patches nearly as large as a brain); None: the init checkpoint's, else "windows"
    inference: str | None = None
    batch_size: int = 2
    epochs: int = 50
    steps_per_epoch: int = 50
    optimizer: str = "adamw"
    lr: float = 3e-3
    weight_decay: float = 1e-5
    momentum: float = 0.99
    schedule: str = "poly"
    warmup_epochs: int = 0
    amp: bool = True
    grad_clip: float = 12.0
    bce_weight: float = 1.0  # the loss: soft Dice + this x binary cross-entropy per region; 0: Dice alone
    val_every: int = 5
    seed: int = 0
    num_workers: int = 0
    output: str = "runs/sevnet"
    init: str | None = None  # fine-tuning: start from this checkpoint
    # also keep each epoch's weights as epoch_NNN (for stochastic weight averaging: python -m training.average run/epoch_*.json)
    keep_epochs: bool = False
    freeze_encoder: bool = False
    # fine-tuning: weight of an L2 penalty pulling the weights back to the init checkpoint's (L2-SP, Li et al. 2018), so
    # a fine-tune on few cases moves only the weights those cases need moved; 0: none
    l2sp: float = 0.0
    label_convention: str = "brats2021"

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, not {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, not {self.schedule!r}")
        if self.patch_size is not None and not (
            isinstance(self.patch_size, (list, tuple)) and len(self.patch_size) == 3 and all(isinstance(v, int) and not isinstance(v, bool) and 8 <= v <= 512 for v in self.patch_size)
        ):
            raise ValueError(f"patch_size must be three whole numbers from 8 to 512, e.g. [128, 160, 128]; got {self.patch_size!r}")
        for key in ("epochs", "steps_per_epoch", "batch_size", "val_every"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be at least 1, got {getattr(self, key)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not self.bce_weight >= 0:
            raise ValueError(f"bce_weight must be 0 or more, got {self.bce_weight}")
        if self.inference is not None and self.inference not in INFERENCE_MODES:
            raise ValueError(f"inference must be one of {INFERENCE_MODES}, not {self.inference!r}")


SCALAR_WORDS = {int: "a whole number", float: "a number", str: "text"}  # what an override's value should have been
_SECTIONS = {"model": ModelConfig, "data": DataConfig, "augment": AugmentConfig}


def _build(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known: {sorted(names)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        section = _SECTIONS.get(key) if cls is TrainConfig else None
        kwargs[key] = _build(section, value, f"{where}.{key}") if section else _coerce(value, hints[key], f"{where}.{key}")
    return cls(**kwargs)


def _coerce(value, hint, where: str):
    """Scalars to their declared type ('1e-4' -> 1e-4: YAML 1.1 reads that as a string); a lone path where a list is due becomes a list."""
    if value is None:
        return None
    if hint == list[str] and isinstance(value, str):
        return [value]  # data.roots=/path written without brackets
    if hint == list[str] and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise ValueError(f"{where}: expected a list of paths, e.g. [/data/brats], got {value!r}")
    for scalar in (bool, int, float):
        if hint is scalar or hint == scalar | None:
            if scalar is bool:
                if not isinstance(value, bool):
                    raise ValueError(f"{where}: expected true or false, got {value!r}")
                return value
            try:
                return scalar(value)
            except (TypeError, ValueError):
                raise ValueError(f"{where}: expected {SCALAR_WORDS.get(scalar, scalar.__name__)}, got {value!r}") from None
    return value


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(data: dict) -> TrainConfig:
    return _build(TrainConfig, data or {}, "config")


def _resolve_paths(data: dict, base: Path) -> None:
    def resolved(path):
        return str((base / path).resolve()) if isinstance(path, str) and path and not Path(path).is_absolute() else path

    d = data.get("data", {})
    if not isinstance(d, dict):
        return  # the config's type check names it
    for key in ("roots", "replay_roots"):
        if key in d:
            d[key] = [resolved(p) for p in d[key]] if isinstance(d[key], list) else resolved(d[key])
    for key in ("split", "cache_dir"):
        if key in d:
            d[key] = resolved(d[key])
    for key in ("init", "output"):
        if key in data:
            data[key] = resolved(data[key])


def parse_override(text: str) -> tuple[list[str], Any]:
    """'optimizer.lr=1e-4' -> (['optimizer', 'lr'], 0.0001), values parsed as YAML."""
    if "=" not in text:
        raise ValueError(f"override {text!r} is not key=value")
    key, value = text.split("=", 1)
    return key.strip().split("."), _read_yaml(value, f"override {key.strip()}")


class _NoAliasLoader(yaml.SafeLoader):
    """YAML without anchors and aliases: a config never needs them, and nested aliases (a "billion laughs" file of a
    few hundred bytes) make a loader build an object graph of billions of entries."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, f"aliases (*{event.anchor}) are not allowed in a config", event.start_mark)
        return super().compose_node(parent, index)


MAX_CONFIG_BYTES = 1024 * 1024


def _read_yaml(text: str, where: str):
    if len(text) > MAX_CONFIG_BYTES:
        raise ValueError(f"{where}: a config of {len(text)} bytes is not a config (limit {MAX_CONFIG_BYTES})")
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader without aliases
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f", line {mark.line + 1}" if mark is not None else ""
        raise ValueError(f"{where}{line}: cannot read config: {getattr(exc, 'problem', None) or exc}") from None


def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """Read a YAML config (paths relative to it), apply dotted ``key=value`` overrides."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"{path}: cannot read config: {exc}") from None
        data = _read_yaml(text, str(path)) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a config is a mapping of keys, not {type(data).__name__}")
        _resolve_paths(data, path.parent)
    given: dict = {}
    for text in overrides:
        keys, value = parse_override(text)
        node = given
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    _resolve_paths(given, Path.cwd())  # a path typed on the command line means one from where it was typed
    _merge(data, given)
    return from_dict(data)


def _merge(into: dict, given: dict) -> None:
    for key, value in given.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict) and key != "config":
            _merge(into[key], value)
        else:
            into[key] = value


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")
