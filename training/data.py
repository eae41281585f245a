"""Training data: find cases, split them, cache the preprocessed crops, sample augmented patches.

Any folder of BraTS 2021 / 2023 case folders works, and so does a fine-tuning
dataset written by the export (its cases are BraTS-layout folders too). The
preprocessing is the Predictor's own (crop to the brain box, z-score), cached
as ``.npy`` keyed by the source files' paths, sizes and modification times, so
an epoch never decompresses NIfTI again.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from napari_sevnet.errors import InputError
from napari_sevnet.export import active_cases, read_manifest
from napari_sevnet.files import atomic_output
from napari_sevnet.inference import preprocess
from napari_sevnet.io import MODALITIES, find_case_files, find_cases, load_case, role_of
from napari_sevnet.regions import NECROSIS_ALONE, necrosis_alone
from training.config import AugmentConfig, DataConfig

log = logging.getLogger(__name__)


@dataclass
class CaseRef:
    case_id: str
    folder: Path
    missing: tuple[str, ...] = ()  # sequences the case lacks (zero channels when loaded): only a model trained with sequence dropout learns from it


def discover_cases(roots: list[str | Path]) -> list[CaseRef]:
    """Case folders (holding BraTS-named files with a segmentation) below each root, sorted by id.

    A root may itself be one case folder. In an exported fine-tuning dataset
    only the newest version of each case is used (its manifest says which, leaving out
    withdrawn ones), and a listed case whose files are gone is an error, not skipped.
    A case with one to three sequences is found, with what it lacks (``CaseRef.missing``).
    """
    refs: dict[str, CaseRef] = {}
    withdrawn: set[str] = set()  # cases a manifest lists, every version of them withdrawn
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            raise InputError(root, "training data folder not found")
        manifest = read_manifest(root)
        if manifest is not None:
            active = active_cases(manifest)
            withdrawn |= {record["case_id"] for record in manifest["cases"]} - {record["case_id"] for record in active}
            folders = [(root / record["folder"], record["case_id"]) for record in active]
        else:
            folders = [(folder, None) for folder in find_cases([root], labelled=True)]
        for folder, listed_as in folders:
            try:
                case_id, files, _ = find_case_files(folder, allow_missing=True)
            except InputError as exc:
                if listed_as is not None:
                    raise _listed_but_unreadable(root, folder, listed_as, str(exc)) from None
                continue
            if "seg" not in files:
                if listed_as is not None:
                    raise _listed_but_unreadable(root, folder, listed_as, "its mask (_seg file) is missing")
                continue
            if case_id in refs and refs[case_id].folder.resolve() != folder.resolve():
                raise InputError(folder, f"holds case {case_id}, which {refs[case_id].folder} holds too: one case would train twice, or its "
                                 "other mask (a correction?) not at all; keep one of them in the training data")
            refs.setdefault(case_id, CaseRef(case_id, folder, tuple(m for m in MODALITIES if m not in files)))
    if not refs and withdrawn:
        raise InputError(", ".join(map(str, roots)), f"every case its dataset.json lists is withdrawn ({', '.join(sorted(withdrawn))}): "
                         "export corrected cases into it, or take one back into training with sevnet-export --restore CASE_ID -d DATASET")
    if not refs:
        raise InputError(", ".join(map(str, roots)), "no labelled BraTS cases (t1, t1ce, t2 or flair files and a seg file) found")
    return [refs[k] for k in sorted(refs)]


def _listed_but_unreadable(root: Path, folder: Path, case_id: str, problem: str) -> InputError:
    """A case the dataset's manifest lists but whose files are gone: training without it would drop a correction unsaid."""
    return InputError(folder, f"is listed in {root / 'dataset.json'} but cannot be read ({problem}): put its files back, or take the case "
                      f"out of training with `sevnet-export --withdraw {case_id} -d {root}`")


def training_spacing(cases: list[CaseRef]) -> list[float]:
    """The median voxel size (mm, Z/Y/X) of the training cases, read from their headers: the model's own spacing."""
    import nibabel as nib

    from napari_sevnet.io import grid_of

    spacings = []
    for ref in cases:
        _, files, _ = find_case_files(ref.folder, allow_missing=True)
        first = next(files[m] for m in ("t1", "t1ce", "t2", "flair", "image") if m in files)
        spacings.append(grid_of(nib.load(str(first))).spacing)
    return [round(float(v), 3) for v in np.median(spacings, axis=0)] if spacings else [1.0, 1.0, 1.0]


def split_cases(cases: list[CaseRef], cfg: DataConfig) -> tuple[list[CaseRef], list[CaseRef]]:
    """Train/validation split from a JSON list, a fixed count, or fold ``cfg.fold`` of ``cfg.folds``."""
    by_id = {c.case_id: c for c in cases}
    if cfg.split:
        spec = json.loads(Path(cfg.split).read_text(encoding="utf-8"))
        missing = [i for i in spec.get("train", []) + spec.get("val", []) if i not in by_id]
        if missing:
            raise InputError(cfg.split, f"split names cases not found in the data: {missing[:5]}")
        leaked = sorted(set(spec.get("held_out", [])) & set(spec.get("train", []) + spec.get("val", [])))
        if leaked:
            raise InputError(cfg.split, f"held-out cases {leaked} are also listed for training or validation")
        validated_on_training = sorted(set(spec.get("train", [])) & set(spec.get("val", [])))
        if validated_on_training:
            raise InputError(cfg.split, f"cases {validated_on_training} are listed for both training and validation: the validation Dice would not be held-out")
        return [by_id[i] for i in spec["train"]], [by_id[i] for i in spec.get("val", [])]
    if cfg.val_cases is not None and not 0 <= cfg.val_cases < len(cases):
        raise ValueError(f"data.val_cases is {cfg.val_cases} but {len(cases)} labelled case(s) were found: at least one must be left to train on (0 turns validation off)")
    if len(cases) < 2 or (cfg.val_cases is None and len(cases) < cfg.keep_out_from):
        return list(cases), []
    order = np.random.default_rng(12345).permutation(len(cases))
    if cfg.val_cases is not None:
        val_idx = set(order[: cfg.val_cases].tolist())
    else:
        folds = np.array_split(order, cfg.folds)
        val_idx = set(folds[cfg.fold % cfg.folds].tolist())
    return [c for i, c in enumerate(cases) if i not in val_idx], [c for i, c in enumerate(cases) if i in val_idx]


def _cache_key(folder: Path) -> str:
    h = hashlib.sha1()
    for p in sorted(folder.iterdir()):
        if p.is_file() and role_of(p.name):
            st = p.stat()
            h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def load_preprocessed(ref: CaseRef, cache_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(image (4, z, y, x) float32 normalized crop, regions (3, z, y, x) uint8), cached on disk."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"{ref.case_id}-{_cache_key(ref.folder)}.npz"
    if path.is_file():
        with np.load(path) as data:
            return data["image"], data["regions"]
    case = load_case(ref.folder, allow_missing=True)
    for line in case.warnings:  # voxels without a value, read as background: trained on, but said
        log.warning("%s: %s", ref.folder, line)
    if necrosis_alone(case.regions):  # most likely a one-label whole-tumour mask under a BraTS name: trained on, but said
        log.warning("%s: %s: %s; trained on as such, it teaches necrosis wherever the mask means tumour: relabel it, or leave the case out",
                    ref.folder, Path(case.paths["seg"]).name, NECROSIS_ALONE)
    image, box = preprocess(case.image)
    regions = case.regions[(slice(None), *box)].astype(np.uint8)
    with atomic_output(path, suffix=".npz") as tmp:
        np.savez(tmp, image=image.astype(np.float32), regions=regions)
    return image, regions


def patch_transform(patch_size: list[int], aug: AugmentConfig, train: bool = True):
    """MONAI transform: pad, foreground-weighted random crop, then (training) spatial and per-modality intensity noise."""
    from monai import transforms as T

    keys = ["image", "label"]
    steps = [
        T.SpatialPadd(keys=[*keys, "fg"], spatial_size=patch_size, mode="constant"),
        # sample on the single-channel WT: MONAI drops channel 0 of multi-channel labels as "background"
        T.RandCropByPosNegLabeld(
            keys=keys,
            label_key="fg",
            spatial_size=patch_size,
            pos=aug.foreground_fraction,
            neg=1.0 - aug.foreground_fraction,
            num_samples=1,
        ),
    ]
    if train:
        if aug.flip:
            steps += [T.RandFlipd(keys=keys, prob=0.5, spatial_axis=a) for a in range(3)]
        if aug.rotate_degrees > 0 or aug.scale > 0:  # one resampling for both
            r = float(np.deg2rad(aug.rotate_degrees))
            steps.append(T.RandAffined(
                keys=keys, prob=aug.affine_prob, rotate_range=(r, r, r) if r else None,
                scale_range=(aug.scale,) * 3 if aug.scale else None, mode=("bilinear", "nearest"), padding_mode="zeros",
            ))
        if aug.elastic:
            steps.append(T.Rand3DElasticd(keys=keys, sigma_range=(5, 8), magnitude_range=(50, 150), prob=0.2, mode=("bilinear", "nearest")))
        if aug.bias_field > 0:
            steps.append(RandBiasFieldPerModality(aug.bias_field, prob=0.5))
        if aug.intensity_scale > 0:
            steps.append(T.RandScaleIntensityd(keys="image", factors=aug.intensity_scale, prob=1.0, channel_wise=True))
        if aug.intensity_shift > 0:
            steps.append(T.RandShiftIntensityd(keys="image", offsets=aug.intensity_shift, prob=1.0, channel_wise=True))
        if aug.gamma > 0:
            steps.append(RandGammaPerModality(aug.gamma, prob=0.3))
        if aug.sequence_dropout:
            steps.append(RandDropSequences(aug.sequence_dropout))
    return T.Compose(steps)


def _randomizable_map_transform():
    """Base of this module's random transforms: applied with probability ``prob`` to the "image" key."""
    from monai.transforms import MapTransform, RandomizableTransform

    class _Base(RandomizableTransform, MapTransform):
        def __init__(self, prob: float):
            RandomizableTransform.__init__(self, prob)
            MapTransform.__init__(self, ["image"])

    return _Base


class _PerModalityInBrain(_randomizable_map_transform()):
    """Changes each modality's brain voxels with probability ``prob`` (``changed``), then restores their mean and
    spread, so the z-scored statistics the model sees stay put; the zero background stays zero."""

    def changed(self, values: np.ndarray, brain: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, data):
        d = dict(data)
        image = np.array(d["image"], dtype=np.float32, copy=True)
        brain = np.any(image != 0, axis=0)
        if not brain.any():
            return d
        for c in range(image.shape[0]):
            self.randomize(None)
            if not self._do_transform:
                continue
            v = image[c][brain]
            mean, std = float(v.mean()), float(v.std())
            out = self.changed(v, brain)
            out_std = float(out.std())
            image[c][brain] = (out - float(out.mean())) / (out_std if out_std > 0 else 1.0) * std + mean
        d["image"] = image
        return d


class RandGammaPerModality(_PerModalityInBrain):
    """Contrast gamma per modality inside the brain, keeping its mean and spread and the zero background.

    MONAI's RandAdjustContrastd takes one gamma for all channels and min-max
    scales over the whole patch, which would lift the zero background.
    """

    def __init__(self, gamma: float, prob: float):
        super().__init__(prob)
        self.range = (max(1.0 - gamma, 0.1), 1.0 + gamma)

    def changed(self, values, brain):
        lo, span = float(values.min()), float(np.ptp(values)) or 1.0
        return (((values - lo) / span) ** self.R.uniform(*self.range)) * span + lo


class RandBiasFieldPerModality(_PerModalityInBrain):
    """A smooth multiplicative intensity field per modality inside the brain, keeping its mean, spread and zero background.

    Each sequence gets its own degree-3 Legendre field exp(f), coefficients
    uniform in +-``coefficient`` (MONAI's RandBiasField draws them in [0, c)
    and multiplies the raw image, which for z-scored input would stretch the
    negative values the wrong way). The z-scored intensities are shifted so the
    brain's darkest voxel is zero, multiplied, then restored to the patch's
    mean and spread, as a bias field seen before normalisation would be.
    """

    TERMS = [t for t in itertools.product(range(4), repeat=3) if 0 < sum(t) <= 3]  # the 19 non-constant ones of degree <= 3

    def __init__(self, coefficient: float, prob: float):
        super().__init__(prob)
        self.coefficient = coefficient

    def field(self, shape) -> np.ndarray:
        coeffs = np.zeros((4, 4, 4))
        for term in self.TERMS:
            coeffs[term] = self.R.uniform(-self.coefficient, self.coefficient)
        coords = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape]
        return np.exp(np.polynomial.legendre.leggrid3d(*coords, coeffs)).astype(np.float32)

    def changed(self, values, brain):
        return (values - float(values.min())) * self.field(brain.shape)[brain]


class RandDropSequences(_randomizable_map_transform()):
    """With probability ``prob``, zero a random non-empty set of the image's sequences, keeping at least one.

    Each of the 14 proper non-empty subsets of the four sequences is kept
    equally often: one, two or three sequences missing, as clinics acquire them.
    A zero channel is what the Predictor feeds for a missing sequence. A patch
    of a case that lacks sequences is left as it is when the subset drawn keeps
    none of those it has (no patch without an image).
    """

    SUBSETS = [s for n in range(1, 4) for s in itertools.combinations(range(4), n)]

    def __call__(self, data):
        self.randomize(None)
        if not self._do_transform:
            return data
        keep = self.SUBSETS[self.R.randint(len(self.SUBSETS))]
        if not any(np.any(data["image"][c]) for c in keep):
            return data
        d = dict(data)
        image = np.array(d["image"], dtype=np.float32, copy=True)
        image[[c for c in range(image.shape[0]) if c not in keep]] = 0
        d["image"] = image
        return d


class PatchDataset(torch.utils.data.Dataset):
    """Indexable list of cases; each item is one random augmented patch from that case."""

    def __init__(self, cases: list[CaseRef], cache_dir: Path, patch_size: list[int], aug: AugmentConfig):
        self.cases = cases
        self.arrays = [load_preprocessed(c, cache_dir) for c in cases]
        self.transform = patch_transform(patch_size, aug)

    def __len__(self):
        return len(self.cases)

    def __getitem__(self, index):
        image, regions = self.arrays[index]
        item = {"image": image, "label": regions.astype(np.float32), "fg": regions[:1]}
        out = self.transform(item)[0]
        return torch.as_tensor(np.asarray(out["image"]), dtype=torch.float32), torch.as_tensor(np.asarray(out["label"]), dtype=torch.float32)


def set_transform_seed(dataset: PatchDataset, seed: int) -> None:
    """Seed MONAI's random transforms (they keep their own RandomState)."""
    dataset.transform.set_random_state(seed=seed % (2**32))
