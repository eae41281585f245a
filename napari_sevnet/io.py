"""Find a case's files (any BraTS naming), read them into one canonical grid, write masks back.

Inside the project a case is four float32 modality arrays in the fixed order
:data:`MODALITIES`, shaped (Z, Y, X) in the canonical orientation: the file's
voxel axes are permuted and flipped (never resampled) so that X runs to the
patient's Right, Y to Anterior and Z to Superior (nibabel's closest-canonical
RAS), then stored Z-first. The file's own affine and orientation are kept so a
mask is written back on exactly the source grid: load -> write -> load gives
the same voxels and the same affine.

Layouts recognised (``load_case`` takes a folder or any one file of a case):

* BraTS 2021: ``<id>_t1, _t1ce, _t2, _flair, _seg`` (``.nii`` or ``.nii.gz``)
* BraTS 2023: ``<id>-t1n, -t1c, -t2w, -t2f, -seg``
* Decathlon Task01 (MSD): one 4D image ``imagesTr/<id>.nii.gz`` (FLAIR, T1w,
  T1gd, T2w) and ``labelsTr/<id>.nii.gz``
* anything else: an explicit ``{modality: path}`` mapping

Every problem a user's files can have raises :class:`~napari_sevnet.errors.InputError`
naming the file; writes go to a temporary file that is renamed into place.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

from napari_sevnet import regions as reg
from napari_sevnet.errors import InputError
from napari_sevnet.files import atomic_output

MODALITIES = ("t1", "t1ce", "t2", "flair")
MODALITY_LABELS = {"t1": "T1", "t1ce": "T1ce", "t2": "T2", "flair": "FLAIR"}

#: file-name suffix (after the case id, before .nii[.gz]) -> role, per naming scheme
NAMINGS: dict[str, dict[str, str]] = {
    "brats2021": {"_t1": "t1", "_t1ce": "t1ce", "_t2": "t2", "_flair": "flair", "_seg": "seg"},
    "brats2023": {"-t1n": "t1", "-t1c": "t1ce", "-t2w": "t2", "-t2f": "flair", "-seg": "seg"},
}
#: channel order of the Decathlon Task01 4D image
MSD_CHANNELS = ("flair", "t1", "t1ce", "t2")

#: refuse volumes whose float32 copy would exceed this many bytes (before allocating)
MAX_VOLUME_BYTES = int(os.environ.get("SEVNET_MAX_VOLUME_BYTES", 4 * 1024**3))
#: refuse a case whose four float32 sequences together would exceed this (checked on the headers, before reading)
MAX_CASE_BYTES = int(os.environ.get("SEVNET_MAX_CASE_BYTES", 8 * 1024**3))
AFFINE_TOLERANCE_MM = 1e-3
_CANONICAL = axcodes2ornt(("R", "A", "S"))
_NIFTI_SUFFIX = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)


@dataclass
class SourceGrid:
    """What is needed to write an array of the canonical grid back onto the file's grid."""

    affine: np.ndarray  # the source file's voxel -> world (RAS mm) affine
    shape: tuple[int, int, int]  # the source file's voxel shape (i, j, k)
    orientation: np.ndarray  # nibabel ornt of the source axes
    header: nib.Nifti1Header | None = None  # copied into written masks (qform/sform codes, units)

    def to_canonical(self, data: np.ndarray) -> np.ndarray:
        """Source (i, j, k) array -> canonical (Z, Y, X)."""
        ras = apply_orientation(data, ornt_transform(self.orientation, _CANONICAL))
        return np.ascontiguousarray(np.transpose(ras, (2, 1, 0)))

    def from_canonical(self, data: np.ndarray) -> np.ndarray:
        """Canonical (Z, Y, X) array -> source (i, j, k), exactly inverting :meth:`to_canonical`."""
        ras = np.transpose(data, (2, 1, 0))
        return np.ascontiguousarray(apply_orientation(ras, ornt_transform(_CANONICAL, self.orientation)))

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along canonical (Z, Y, X)."""
        zooms = np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))  # per source axis
        axis_of = {int(self.orientation[i, 0]): i for i in range(3)}  # RAS axis -> source axis
        return tuple(float(zooms[axis_of[a]]) for a in (2, 1, 0))


@dataclass
class Case:
    """One multi-modal MRI case on the canonical grid."""

    case_id: str
    image: np.ndarray  # (4, Z, Y, X) float32 in MODALITIES order
    grid: SourceGrid
    paths: dict[str, Path]  # role -> file read (a 4D MSD file appears for every modality)
    regions: np.ndarray | None = None  # (3, Z, Y, X) bool, WT/TC/ET
    label_convention: str | None = None  # convention the segmentation file used
    layout: str = "brats2021"
    sequences: tuple[str, ...] = MODALITIES  # the sequences present (a missing one is zero in ``image``)
    warnings: tuple[str, ...] = ()  # what reading the files changed that may make a result wrong (voxels without a value)

    @property
    def spacing(self) -> tuple[float, float, float]:
        return self.grid.spacing

    @property
    def missing(self) -> tuple[str, ...]:
        return tuple(m for m in MODALITIES if m not in self.sequences)

    @property
    def reference(self) -> Path:
        """The file whose grid the case is on (its first sequence): masks are checked against it."""
        return next(self.paths[m] for m in MODALITIES if m in self.paths)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.image.shape[1:])


# --------------------------------------------------------------------------- discovery


def nifti_stem(name: str) -> str | None:
    """The name without .nii / .nii.gz, or None for a file that is not NIfTI."""
    return _NIFTI_SUFFIX.sub("", name) if _NIFTI_SUFFIX.search(name) else None


def role_of(name: str) -> tuple[str, str, str] | None:
    """(case_id, role, naming) for a BraTS-named file, else None."""
    stem = nifti_stem(name)
    if stem is None:
        return None
    for naming, table in NAMINGS.items():
        # longest suffix first so '_t1ce' is not read as '_t1' + 'ce'
        for suffix in sorted(table, key=len, reverse=True):
            if stem.lower().endswith(suffix) and len(stem) > len(suffix):
                return stem[: -len(suffix)], table[suffix], naming
    return None


#: a case's files named by their sequence alone, as many tools write one (``t1.nii.gz``, ``flair.nii.gz``, ``seg.nii.gz``;
#: BraTS 2023's ``t1n``, ``t1c``, ``t2w``, ``t2f``): as plain as BraTS names; the case is named after its folder.
#: name -> (role, naming); ``seg`` is in both namings (the scans' names say which)
SEQUENCE_NAMES = {suffix.lstrip("_-"): (role, naming) for naming, table in NAMINGS.items() for suffix, role in table.items()}


def sequence_named(name: str) -> str | None:
    """The role of a file named by its sequence alone ('T1ce.nii' -> 't1ce'), else None."""
    return SEQUENCE_NAMES.get((nifti_stem(name) or "").lower(), (None,))[0]


def _named_by_sequence(entries: list[Path]) -> dict[str, Path] | None:
    """{role: file} of a folder's files named by their sequence alone; None when none is, when other files have BraTS
    names, or when a sequence is missing and other files, named otherwise, may be it (the Assign dock's work).
    A sequence named twice (``t1.nii`` beside ``t1.nii.gz``) is an error, as a BraTS name twice is."""
    mapping: dict[str, Path] = {}
    others = []
    for path in entries:
        role = sequence_named(path.name)
        if role is None:
            others += [path] if nifti_stem(path.name) else []
        elif role in mapping:
            raise InputError(path.parent, f"duplicate {role} files: {mapping[role].name}, {path.name}")
        else:
            mapping[role] = path
    if not any(m in mapping for m in MODALITIES) or any(role_of(p.name) for p in others):
        return None
    return mapping if not others or all(m in mapping for m in MODALITIES) else None


def find_cases(inputs: list[str | os.PathLike], *, labelled: bool = False) -> list[Path]:
    """The cases named by ``inputs``: each is a case (its folder or one of its files) or a folder of case folders.

    A folder holding NIfTI files is one case; any other folder stands for its
    (non-hidden) sub-folders. With ``labelled`` only cases with a segmentation
    (and one to four sequences) are kept and anything else below a folder is
    skipped (training data); without it every sub-folder but a folder of masks
    only (earlier predictions written beside the cases) is returned, so the
    caller reports the ones that are not cases.
    """
    cases: list[Path] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir() and not any(nifti_stem(p.name) for p in path.iterdir() if p.is_file()):
            subs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".") and not _holds_masks_only(p))
            candidates = subs or [path]
        else:
            candidates = [path]
        if labelled:
            candidates = [c for c in candidates if _is_labelled_case(c)]
        cases.extend(candidates)
    return cases


def holds_nifti(folder: Path) -> bool:
    try:
        return any(nifti_stem(p.name) for p in folder.iterdir())
    except OSError:
        return False


def _holds_masks_only(folder: Path) -> bool:
    roles = [role_of(p.name) for p in folder.iterdir() if p.is_file() and nifti_stem(p.name)]
    return bool(roles) and all(r is not None and r[1] == "seg" for r in roles)


def _is_labelled_case(path: Path) -> bool:
    try:
        _, files, _ = find_case_files(path, allow_missing=True)
    except InputError:
        return False
    return "seg" in files


def find_segmentations(folder: str | os.PathLike, *, exclude: frozenset[Path] = frozenset()) -> dict[str, list[Path]]:
    """Case id -> its ``<case>_seg`` / ``<case>-seg`` NIfTI files anywhere below ``folder`` (a ``seg.nii.gz`` is
    its folder's case, as in a case whose files are named by their sequence alone).

    Every file is listed, so a caller can refuse a case found twice rather
    than guess (a guess scores the wrong mask). ``exclude`` (resolved paths)
    are skipped: the predictions, when they lie below the references.
    """
    found: dict[str, list[Path]] = {}
    for p in sorted(Path(folder).rglob("*")):
        parsed = role_of(p.name) or ((p.parent.name, "seg", None) if sequence_named(p.name) == "seg" else None)
        if parsed and parsed[1] == "seg" and p.is_file() and p.resolve() not in exclude:
            found.setdefault(_unless_a_plane(parsed[0], p.parent), []).append(p)
    return found


def find_submissions(folder: str | os.PathLike, case_ids: set[str]) -> dict[str, Path]:
    """Case id -> ``<case>.nii.gz`` directly in ``folder``, for the ids in ``case_ids``: the BraTS challenges' prediction layout."""
    found = {}
    for p in sorted(Path(folder).iterdir()) if Path(folder).is_dir() else []:
        stem = nifti_stem(p.name)
        if stem in case_ids and p.is_file():
            found[stem] = p
    return found


def find_case_files(path: str | os.PathLike, *, allow_missing: bool = False) -> tuple[str, dict[str, Path], str]:
    """Locate the files of the case at ``path`` (a folder or one of its files).

    Returns ``(case_id, {role: path}, layout)`` with roles from MODALITIES plus
    'seg', or for the Decathlon layout ``{'image': 4D, 'seg': label}``. With
    ``allow_missing`` one to three sequences may be absent.
    """
    path = Path(path)
    _check_readable(path)
    by_sequence_only = False  # a file named by its sequence opens its own case, never another named otherwise beside it
    if path.is_file():
        parsed = role_of(path.name)
        if parsed is None and sequence_named(path.name) is None:
            return _msd_files(path)
        folder, wanted_id, by_sequence_only = path.parent, parsed[0] if parsed else None, parsed is None
    else:
        folder, wanted_id = path, None

    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        raise InputError(folder, f"cannot list folder: {exc.strerror or exc}") from None
    found: dict[str, dict[str, list[Path]]] = {}
    namings: dict[str, set[str]] = {}
    for entry in entries:
        parsed = role_of(entry.name)
        if parsed is None:
            continue
        case_id, role, naming = parsed
        found.setdefault(case_id, {}).setdefault(role, []).append(entry)
        namings.setdefault(case_id, set()).add(naming)
    # a mask saved beside one case's scans under a name of its own ("corrected_seg.nii.gz") is no second case:
    # the folder is that case; the file itself opens that case with it as the mask
    scanned = {cid: roles for cid, roles in found.items() if any(m in roles for m in MODALITIES)}
    if wanted_id is not None:
        if set(found.get(wanted_id, {})) == {"seg"} and len(scanned) == 1:
            case_id, roles = next(iter(scanned.items()))
            found = {case_id: {**roles, "seg": [path]}}
        else:
            found = {wanted_id: found.get(wanted_id, {})}
    elif len(scanned) == 1:
        found = scanned
    by_sequence = _named_by_sequence(entries) if by_sequence_only or not found else None
    if by_sequence_only and by_sequence is None:
        return _msd_files(path)
    if by_sequence is not None:
        case_id = folder.resolve().name
        _check_sequences(case_id, sorted(by_sequence), folder, allow_missing)
        schemes = {SEQUENCE_NAMES[nifti_stem(f.name).lower()][1] for role, f in by_sequence.items() if role != "seg"}
        return case_id, by_sequence, "brats2023" if "brats2023" in schemes else "brats2021"
    if not found:
        nifti = [e for e in entries if nifti_stem(e.name)]
        if len(nifti) == 1:
            return _msd_files(nifti[0])
        nested = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith(".") and holds_nifti(e))
        if not nifti and nested:  # patient / visit folders: one level deeper than asked
            raise InputError(folder, f"holds no scans itself but case folders ({', '.join(nested[:3])}{', ...' if len(nested) > 3 else ''}): open one of them, "
                                     "or choose this folder as a folder of cases (the Worklist dock, sevnet-predict)")
        raise InputError(
            folder,
            "no BraTS case files found: expected <id>_t1/_t1ce/_t2/_flair.nii.gz (2021), "
            "<id>-t1n/-t1c/-t2w/-t2f.nii.gz (2023) or t1/t1ce/t2/flair.nii.gz (the sequence alone), or give an explicit modality mapping",
        )
    if len(found) > 1:
        raise InputError(folder, f"holds files of several cases ({', '.join(sorted(found))}); open one file or one case folder")
    case_id, roles = next(iter(found.items()))
    for role, files in roles.items():
        if len(files) > 1:
            raise InputError(folder, f"duplicate {role} files: {', '.join(f.name for f in files)}")
    layout = sorted(namings[case_id])[0] if len(namings[case_id]) == 1 else "mixed"
    case_id = _unless_a_plane(case_id, folder)
    _check_sequences(case_id, sorted(roles), folder, allow_missing)
    return case_id, {role: files[0] for role, files in roles.items()}, layout


#: what a clinic's series names start with: the plane (``AX_T2.nii.gz``, ``SAG_T1.nii.gz``), never a case's id
PLANE_WORDS = {"ax", "axial", "tra", "trans", "transverse", "transversal", "sag", "sagittal", "cor", "coronal"}


def _unless_a_plane(case_id: str, folder: Path) -> str:
    """The case id a BraTS-like name gives (``AX`` of ``AX_T2.nii.gz``), or the folder's name where that is a plane:
    every patient's ``AX_T2`` would otherwise be case ``AX``, their outputs and exports colliding."""
    return (Path(folder).resolve().name or case_id) if case_id.lower() in PLANE_WORDS else case_id


def named_case_id(path: Path) -> str | None:
    """The case a file's BraTS-like name gives it (its folder's for a plane's name, ``AX_SEG.nii.gz``), else None."""
    parsed = role_of(Path(path).name)
    return _unless_a_plane(parsed[0], Path(path).parent) if parsed else None


def _check_sequences(case_id: str, roles: list[str], where, allow_missing: bool) -> None:
    """All four sequences, or with ``allow_missing`` at least one; the message names what is missing."""
    missing = [m for m in MODALITIES if m not in roles]
    if not missing:
        return
    if not allow_missing:
        raise InputError(where, f"case {case_id!r} is missing modalities {missing} (found {roles}); a model trained for missing sequences can segment it (--allow-missing)")
    if len(missing) == len(MODALITIES):
        raise InputError(where, f"case {case_id!r} has no MRI sequence (found {roles or 'nothing'}): it needs at least one of {[MODALITY_LABELS[m] for m in MODALITIES]}")


def _msd_files(image: Path) -> tuple[str, dict[str, Path], str]:
    case_id = nifti_stem(image.name)
    if case_id is None:
        raise InputError(image, "not a NIfTI file (.nii or .nii.gz)")
    files = {"image": image}
    if image.parent.name == "labelsTr":
        files = {"image": image.parent.parent / "imagesTr" / image.name, "seg": image}
    else:
        label = image.parent.parent / "labelsTr" / image.name
        if label.is_file():
            files["seg"] = label
    return case_id, files, "msd"


def _check_readable(path: Path) -> None:
    try:
        path.stat()
    except OSError as exc:
        if getattr(exc, "errno", None) == 40:  # ELOOP
            raise InputError(path, "symbolic link loop") from None
        raise InputError(path, f"cannot access: {exc.strerror or exc}") from None
    if not os.access(path, os.R_OK):
        raise InputError(path, "permission denied (not readable)")


# --------------------------------------------------------------------------- reading


def read_nifti(path: str | os.PathLike, *, allow_4d: bool = False) -> tuple[np.ndarray, nib.Nifti1Image]:
    """Read one NIfTI file into a numeric array, checking everything a user's file can get wrong."""
    path = Path(path)
    _check_readable(path)
    if path.is_dir():
        raise InputError(path, "is a folder, expected a NIfTI file")
    if path.stat().st_size == 0:
        raise InputError(path, "empty file (0 bytes)")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for malformed files
        raise InputError(path, f"not a readable NIfTI file ({_describe(exc)})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(path, f"not a NIfTI image (nibabel read it as {type(img).__name__})")
    shape = tuple(int(s) for s in img.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    expected = (3, 4) if allow_4d else (3,)
    if len(shape) not in expected:
        raise InputError(path, f"has {len(shape)} dimensions {shape}, expected a 3D volume" + (" or one 4D image" if allow_4d else ""))
    if min(shape) < 1:
        raise InputError(path, f"has an empty dimension {shape}")
    if int(np.prod(shape, dtype=np.float64)) * 4 > MAX_VOLUME_BYTES:
        gib = np.prod(shape, dtype=np.float64) * 4 / 1024**3
        raise InputError(path, f"dimensions {shape} need {gib:.1f} GiB as float32, over the {MAX_VOLUME_BYTES / 1024**3:.1f} GiB limit (SEVNET_MAX_VOLUME_BYTES)")
    dtype = img.get_data_dtype()
    if dtype.fields is not None or np.issubdtype(dtype, np.complexfloating) or dtype.kind not in "iufb":
        raise InputError(path, f"unsupported voxel type {dtype} (RGB or complex images are not MRI intensities)")
    _check_scaling_and_voxel_size(img, path)
    offset = float(img.header.get("vox_offset", 0))
    if not np.isfinite(offset) or offset < 0 or (not path.name.lower().endswith(".gz") and offset > path.stat().st_size):
        raise InputError(path, f"header's data offset {offset} lies outside the file")
    try:
        data = np.asanyarray(img.dataobj).reshape(shape)
    except Exception as exc:  # noqa: BLE001 - a parsed header over broken data fails in many ways (EOF, zlib, overflow, ...)
        raise InputError(path, f"truncated or corrupt data ({_describe(exc)})") from None
    affine = img.affine
    if affine is None or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise InputError(path, "header holds no valid voxel-to-world affine (singular or non-finite)")
    return data, img


def _check_scaling_and_voxel_size(img, path: Path) -> None:
    """Header values nibabel would silently accept (or repair while loading) but that make every figure wrong."""
    try:
        with nib.openers.ImageOpener(str(path)) as fobj:
            header = type(img.header).from_fileobj(fobj, check=False)  # the fields as stored, before nibabel's repairs
    except Exception:  # noqa: BLE001 - the loader already read it once; nothing more to learn here
        return
    slope = header.get("scl_slope")
    if slope is not None and np.isfinite(slope) and slope < 0:
        raise InputError(path, f"header's intensity scale scl_slope is {float(slope):g}: it negates the stored values, and MRI magnitudes are never negative (fix the header)")
    if int(header.get("sform_code", 0)) == 0:  # qform (or nothing): the voxel size comes from pixdim
        zooms = np.asarray(header["pixdim"][1:4], dtype=float)
        if not np.all(np.isfinite(zooms)) or np.any(zooms <= 0):
            raise InputError(path, f"header's voxel size (pixdim) is {zooms.tolist()}: zero or negative, so volumes in mL would be wrong (nibabel reads it as 1 mm)")


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def no_value_warning(name: str, missing: int, total: int) -> str:
    """What a scan's NaN voxels, read as background, mean for the result (the case reader's and the raw series' words)."""
    return (f"{name}: {missing:,} voxels ({100 * missing / total:.1f}%) have no value (NaN) and were read as 0, background (some tools write NaN "
            "outside the field of view); where they lie inside the head the mask there is not to be relied on")


def _as_intensity(data: np.ndarray, path: Path, warnings: list[str]) -> np.ndarray:
    """A scan's voxels as float32; NaN (no value: SPM and some registration tools write it outside the field of view)
    is read as 0, background, and said in ``warnings``, since where it lies inside the head the mask there is a guess."""
    data = np.asarray(data, dtype=np.float32)
    if np.isinf(data).any():
        raise InputError(path, f"{int(np.count_nonzero(np.isinf(data)))} voxels are infinite (a damaged or wrongly scaled file)")
    missing = np.isnan(data)
    if missing.all():
        raise InputError(path, "every voxel is NaN (no value)")
    if missing.any():
        data = np.where(missing, np.float32(0), data)
        warnings.append(no_value_warning(path.name, int(np.count_nonzero(missing)), missing.size))
    if not np.any(data):
        raise InputError(path, "every voxel is zero (an empty modality)")
    return data


def grid_of(img: nib.Nifti1Image) -> SourceGrid:
    """The source grid of a loaded NIfTI image (what writes a mask back onto it)."""
    affine = np.asarray(img.affine, dtype=np.float64)
    header = img.header.copy()
    return SourceGrid(affine=affine, shape=tuple(int(s) for s in img.shape[:3]), orientation=io_orientation(affine), header=header)


def _same_grid(a: SourceGrid, b: SourceGrid, path: Path, ref: Path) -> None:
    if a.shape != b.shape:
        raise InputError(path, f"shape {b.shape} differs from {ref.name} {a.shape}")
    if not np.allclose(a.affine, b.affine, atol=AFFINE_TOLERANCE_MM):
        za = np.sqrt((a.affine[:3, :3] ** 2).sum(0)).round(3).tolist()
        zb = np.sqrt((b.affine[:3, :3] ** 2).sum(0)).round(3).tolist()
        what = f"voxel spacing {zb} differs from {za}" if not np.allclose(za, zb, atol=1e-3) else "affine (position/orientation) differs"
        raise InputError(path, f"{what} of {ref.name}: modalities must share one grid")


def _check_case_size(files: dict[str, Path]) -> None:
    """Refuse, from the headers alone, a case whose sequences together need more memory than allowed."""
    voxels = 0
    for path in files.values():
        try:
            n = int(np.prod(nib.load(str(path)).shape[:3], dtype=np.float64))
        except Exception:  # noqa: BLE001 - an unreadable file is reported by read_nifti, naming it
            return
        if n * 4 > MAX_VOLUME_BYTES:
            return  # read_nifti refuses this one file by name
        voxels += n
    if voxels * 4 > MAX_CASE_BYTES:
        folder = Path(next(iter(files.values()))).parent
        raise InputError(folder, f"its sequences together need {voxels * 4 / 1024**3:.1f} GiB as float32, over the {MAX_CASE_BYTES / 1024**3:.1f} GiB limit per case (SEVNET_MAX_CASE_BYTES)")


def load_case(
    path: str | os.PathLike | None = None,
    *,
    mapping: Mapping[str, str | os.PathLike] | None = None,
    label_convention: str | None = None,
    allow_missing: bool = False,
    read_mask: bool = True,
) -> Case:
    """Load a case from a folder, any one of its files, or an explicit ``{role: path}`` mapping.

    ``mapping`` keys are the MODALITIES plus optional 'seg'. ``label_convention``
    forces how a segmentation is read ('brats2021', 'brats2023', 'msd'); by
    default the file says it (:func:`label_convention_of`). With
    ``allow_missing`` a case with one to three of the four sequences loads: the
    missing ones are zero and ``Case.sequences`` lists those present. Without
    ``read_mask`` the case's mask is left unread and out of ``Case.paths``.
    """
    if mapping is not None:
        files = {str(k).lower(): Path(v) for k, v in mapping.items()}
        unknown = sorted(set(files) - {*MODALITIES, "seg"})
        if unknown:
            raise InputError(None, f"unknown roles {unknown} in modality mapping; use {list(MODALITIES)} and 'seg'")
        present = [m for m in MODALITIES if m in files]
        case_id, layout = case_id_of_files([files[m] for m in present]), "mapping"
        _check_sequences(case_id, present, None, allow_missing)
    elif path is not None:
        case_id, files, layout = find_case_files(path, allow_missing=allow_missing)
    else:
        raise InputError(None, "give a case path or a modality mapping")

    warnings: list[str] = []
    if layout == "msd":
        data, img = read_nifti(files["image"], allow_4d=True)
        if data.ndim == 3:
            raise InputError(files["image"], "is a single 3D volume; a case needs T1, T1ce, T2 and FLAIR: open the folder that holds all four")
        if data.ndim != 4 or data.shape[3] != len(MSD_CHANNELS):
            raise InputError(files["image"], f"Decathlon image must be 4D with {len(MSD_CHANNELS)} channels ({', '.join(MSD_CHANNELS)}), got shape {data.shape}")
        grid = grid_of(img)
        channels = {name: _as_intensity(data[..., i], files["image"], warnings) for i, name in enumerate(MSD_CHANNELS)}
        image = np.stack([grid.to_canonical(channels[m]) for m in MODALITIES])
        paths = {m: files["image"] for m in MODALITIES}
        convention = label_convention or "msd"
    else:
        present = [m for m in MODALITIES if m in files]
        _check_case_size({m: files[m] for m in present})
        grid = None
        volumes = {}
        for m in present:
            data, img = read_nifti(files[m])
            g = grid_of(img)
            if grid is None:
                grid, ref = g, files[m]
            else:
                _same_grid(grid, g, files[m], ref)
            volumes[m] = grid.to_canonical(_as_intensity(data, files[m], warnings))
        shape = next(iter(volumes.values())).shape
        image = np.stack([volumes[m] if m in volumes else np.zeros(shape, np.float32) for m in MODALITIES])
        paths = {m: files[m] for m in present}
        convention = label_convention

    case = Case(case_id=case_id, image=image, grid=grid, paths=paths, layout=layout, sequences=tuple(m for m in MODALITIES if m in paths),
                warnings=tuple(warnings))
    if "seg" in files and read_mask:
        # a seg.nii.gz beside t1n/t1c/t2w/t2f.nii.gz: BraTS 2023 labels unless the file says otherwise, as a -seg name would
        bare_2023 = layout == "brats2023" and sequence_named(files["seg"].name) is not None
        case.regions, case.label_convention = read_segmentation(files["seg"], grid, case.reference, convention, default="brats2023" if bare_2023 else None)
        case.paths["seg"] = files["seg"]
    return case


def without_unreadable_mask(load) -> tuple[Case, InputError | None]:
    """``load(read_mask)``'s case, and (read again without it) the error of its mask when the mask alone failed."""
    try:
        return load(True), None
    except InputError as exc:
        try:  # the two reads differ in the mask alone: if this one works, the mask was what failed
            return load(False), exc
        except InputError:
            raise exc from exc.__cause__  # not this second read's error; what the first came from (a remedy says it)


def case_id_of_files(paths: list[Path]) -> str:
    """The id of a case given file by file: the one their BraTS names share, else the folder that holds them all.

    Not the first file's stem: a clinic names every patient's series alike (``T1_pre.nii.gz``), and two patients
    under one id would be one case to the export (the second a new version of the first) and to a batch's outputs.
    """
    if not paths:
        return "case"
    parsed = [role_of(p.name) for p in paths]
    if all(parsed) and len({named[0] for named in parsed}) == 1 and parsed[0][0].lower() not in PLANE_WORDS:
        return parsed[0][0]
    folders = {p.absolute().parent for p in paths}  # as the user named them: a link's target folder is not the case's
    if len(folders) == 1 and next(iter(folders)).name:
        return folders.pop().name
    return nifti_stem(paths[0].name) or paths[0].stem


def read_segmentation(path: str | os.PathLike, grid: SourceGrid, reference: Path, convention: str | None = None, *, default: str | None = None) -> tuple[np.ndarray, str]:
    """A label file on ``grid`` (that of ``reference``) -> ((3, Z, Y, X) WT/TC/ET bool, convention used).

    A mask on the same world grid in another voxel order (RAS instead of LPS)
    is re-oriented like the scans. The convention: ``convention`` when given,
    else what the file says (:func:`label_convention_of`), else ``default``.
    The mask of another case is refused (:func:`_other_case_of`).
    """
    path = Path(path)
    other = _other_case_of(path, Path(reference))
    if other:
        raise InputError(path, f"this is the mask of case {other[0]} (beside it: {other[1]}), but the case is {role_of(Path(reference).name)[0]} ({reference}); give that case's mask, or copy the file under another name if it is meant for this case")
    data, img = read_nifti(path)
    mask_grid = grid_of(img)
    if not _same_world_grid(grid, mask_grid):
        _same_grid(grid, mask_grid, path, reference)  # raises, saying what differs
    labels = mask_grid.to_canonical(np.asarray(data))
    return _labels_to_regions(labels, convention or label_convention_of(path, img, default), path)


def _other_case_of(mask: Path, reference: Path) -> tuple[str, str] | None:
    """(case id, evidence) when ``mask`` is plainly another case's: BraTS cases share one grid, so only
    the files can tell. Its BraTS name must name another case and the folder must hold that case's scans
    or sevnet-predict's report of it; a user's own name ("corrected_seg.nii.gz") is taken at its word."""
    named, case = role_of(mask.name), role_of(reference.name)
    if not (named and case and named[1] == "seg" and named[0].casefold() != case[0].casefold()):
        return None
    try:
        beside = sorted(mask.parent.iterdir())
    except OSError:  # a folder that cannot be listed tells nothing
        return None
    for entry in beside:
        parsed = role_of(entry.name)
        if (parsed and parsed[0] == named[0] and parsed[1] in MODALITIES) or entry.name == f"{named[0]}_report.json":
            return named[0], entry.name
    return None


def _same_world_grid(a: SourceGrid, b: SourceGrid) -> bool:
    """Whether two grids place the same voxels at the same world positions, whatever the voxel order."""
    if a.shape == b.shape and np.allclose(a.affine, b.affine, atol=AFFINE_TOLERANCE_MM):
        return True
    canonical = [(sorted(zip(g.orientation[:, 0], g.shape)), g.affine @ inv_ornt_aff(g.orientation, g.shape)) for g in (a, b)]
    return canonical[0][0] == canonical[1][0] and np.allclose(canonical[0][1], canonical[1][1], atol=AFFINE_TOLERANCE_MM)


def label_convention_of(path: Path, img, default: str | None = None) -> str | None:
    """The label convention a mask file declares: our own files say it in their description, BraTS files in
    their names (``_seg``: 2021, ``-seg``: 2023); else ``default`` (None: decided from the values, if they allow)."""
    description = bytes(img.header.get("descrip", b"")).split(b"\0")[0].decode("ascii", "replace")
    match = re.match(r"napari-sevnet (\w+) labels", description)
    if match and match.group(1) in reg.CONVENTIONS:
        return match.group(1)
    parsed = role_of(path.name)
    if parsed is not None and parsed[1] == "seg":
        return parsed[2]
    return default


def _labels_to_regions(labels: np.ndarray, convention: str | None, path: Path) -> tuple[np.ndarray, str]:
    try:
        if not np.all(np.isfinite(labels)):
            raise ValueError("segmentation holds NaN or infinite values")
        conv = reg.convention_name(convention) if convention else reg.guess_convention(labels)
        return reg.labels_to_regions(labels, conv), conv
    except ValueError as exc:
        hint = ("; to name the file's convention: --labels 2021, 2023 or msd where a command offers it (sevnet-export: --mask-labels), "
                "a BraTS name (<case>_seg.nii.gz: 2021 labels, <case>-seg.nii.gz: 2023) for training data") if "label" in str(exc) else ""
        raise InputError(path, f"{exc}{hint}") from None


def read_labels(path: str | os.PathLike, convention: str | None = None, *, default: str | None = None) -> tuple[np.ndarray, SourceGrid]:
    """A label file on its own grid -> ((3, Z, Y, X) WT/TC/ET bool, its grid): in ``convention``, else the one the file
    declares, else ``default``, else the one its values leave no doubt about."""
    path = Path(path)
    data, img = read_nifti(path)
    grid = grid_of(img)
    return _labels_to_regions(grid.to_canonical(np.asarray(data)), convention or label_convention_of(path, img, default), path)[0], grid


def read_whole_tumour(path: str | os.PathLike) -> tuple[np.ndarray, SourceGrid]:
    """A whole-tumour mask on its own grid -> ((Z, Y, X) bool, its grid): every non-zero voxel is tumour, whatever its
    label (a FLAIR-abnormality mask painted with one label, 0/1 or 0/255, or a full BraTS mask)."""
    path = Path(path)
    data, img = read_nifti(path)
    data = np.asarray(data)
    if not np.all(np.isfinite(data)) or not np.array_equal(np.rint(data), data):
        raise InputError(path, "holds values that are not whole numbers: a scan rather than a mask?")
    values = np.unique(data)
    if len(values) > 8 or values.min(initial=0) < 0:
        raise InputError(path, f"holds {len(values)} values from {values.min():g} to {values.max():g}: a scan rather than a whole-tumour mask?")
    grid = grid_of(img)
    return grid.to_canonical(data != 0), grid


def read_one_label_mask(path: str | os.PathLike, grid: SourceGrid) -> tuple[np.ndarray, int] | None:
    """((Z, Y, X) bool on ``grid``, the label) of a mask painted with one label (0/255, or 0/1), most likely a whole tumour;
    None for any other file, or one on another grid."""
    try:
        data, img = read_nifti(path)
    except InputError:
        return None
    values = np.unique(np.asarray(data))
    if len(values) != 2 or values[0] != 0 or not float(values[1]).is_integer() or not _same_world_grid(grid, grid_of(img)):
        return None
    return grid_of(img).to_canonical(np.asarray(data) != 0), int(values[1])


# --------------------------------------------------------------------------- writing


def atomic_write_nifti(img: nib.Nifti1Image, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Save ``img`` to ``path`` atomically; an existing file is only replaced with ``overwrite=True``."""
    path = Path(path)
    if nifti_stem(path.name) is None:
        raise InputError(path, "output name must end in .nii or .nii.gz")
    suffix = ".nii.gz" if path.name.lower().endswith(".gz") else ".nii"
    with atomic_output(path, overwrite=overwrite, suffix=suffix) as tmp:
        nib.save(img, tmp)
    return path


def mask_image(regions: np.ndarray, grid: SourceGrid, convention: str = "brats2021") -> nib.Nifti1Image:
    """A NIfTI label image of ``regions`` (3, Z, Y, X) on the source grid with the source affine."""
    labels = reg.regions_to_labels(regions, convention)
    data = grid.from_canonical(labels)
    if data.shape != tuple(grid.shape):
        raise ValueError(f"mask shape {data.shape} does not match the source grid {grid.shape}")
    header = grid.header.copy() if grid.header is not None else None
    img = nib.Nifti1Image(data.astype(np.uint8), grid.affine, header=header)
    img.set_data_dtype(np.uint8)
    img.header.set_slope_inter(1, 0)
    img.header["cal_min"], img.header["cal_max"] = 0, int(data.max(initial=0))
    img.header["descrip"] = f"napari-sevnet {reg.convention_name(convention)} labels".encode()[:79]
    return img


def write_mask(regions: np.ndarray, grid: SourceGrid, path: str | os.PathLike, convention: str = "brats2021", *, overwrite: bool = False) -> Path:
    """Write nested regions as a label NIfTI on the source grid (atomic, no silent overwrite)."""
    return atomic_write_nifti(mask_image(regions, grid, convention), path, overwrite=overwrite)


def write_volume(volume: np.ndarray, grid: SourceGrid, path: str | os.PathLike, *, overwrite: bool = False, eight_bit: bool = False) -> Path:
    """Write a float map (Z, Y, X) on the source grid (probabilities, uncertainty).

    ``eight_bit``: a map of values in [0, 1] stored in steps of 1/255 (the NIfTI
    scale factor restores them on reading): 0.7 MB instead of 11 MB for a
    probability map of a BraTS case, whose low bits are noise that does not compress.
    """
    data = grid.from_canonical(np.asarray(volume, dtype=np.float32))
    if eight_bit:
        img = nib.Nifti1Image(np.round(np.clip(data, 0.0, 1.0) * 255).astype(np.uint8), grid.affine)
        img.header.set_slope_inter(1.0 / 255, 0.0)
    else:
        img = nib.Nifti1Image(data, grid.affine)
        img.set_data_dtype(np.float32)
    return atomic_write_nifti(img, path, overwrite=overwrite)
