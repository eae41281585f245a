"""Which file is which sequence when the names are not BraTS names: guessed, confirmed by the user, remembered.

A clinic's export holds ``FLAIR.nii.gz``, ``T1_post.nii.gz``, ``AX_T2.nii``.
:func:`guess_roles` proposes a role for each file from the words in its
name; the Assign dock shows the proposal, the user confirms or changes it,
and :func:`remember` keeps the choice for that folder in the user's own
configuration folder (``$SEVNET_CONFIG_DIR``, else
``$XDG_CONFIG_HOME/napari-sevnet``), never in the data folder. The reader
then opens that folder directly (:func:`load_assigned_or_named`). Files named by
their sequence alone (``t1.nii.gz``, ``flair.nii.gz``) need no one to confirm
them: :mod:`napari_sevnet.io` reads them as it reads BraTS names.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from napari_sevnet.errors import InputError
from napari_sevnet.files import write_text_atomic
from napari_sevnet.io import MODALITIES, Case, case_id_of_files, find_case_files, load_case, named_case_id, nifti_stem, role_of, sequence_named, without_unreadable_mask

ROLES = (*MODALITIES, "seg")
#: words in a file or layer name that say its sequence (after lower-casing and splitting on anything not a letter or digit)
FLAIR_WORDS = {"flair", "t2f", "fla", "t2flair", "darkfluid"}  # Siemens names its 3D FLAIR "SPACE dark-fluid"
CONTRAST_WORDS = {"ce", "c", "gd", "post", "contrast", "enh", "gad", "gado", "km", "kontrast"}  # KM: Kontrastmittel, German protocols
T1CE_WORDS = {"t1ce", "t1c", "t1gd", "t1post", "t1contrast", "t1gad"}
# vendors' names of 3D T1-weighted sequences count as T1 (MPRAGE, SPGR/FSPGR/BRAVO, VIBE; Philips' sT1W)
T1_WORDS = {"t1", "t1n", "t1w", "t1pre", "t1native", "st1w", "mprage", "spgr", "fspgr", "bravo", "vibe"}
T2_WORDS = {"t2", "t2w"}
# T2*-weighted gradient echo and susceptibility series (Siemens' t2_fl2d_tra_hemo and t2_swi_tra with its magnitude,
# phase and minimum-intensity projection, GE's SWAN and MERGE, Philips' T2 FFE) are not the T2 (spin echo) BraTS means
T2STAR_WORDS = {"t2star", "t2s", "star", "swi", "swan", "hemo", "gre", "ffe", "fl2d", "fl3d", "medic", "merge", "susceptibility", "mag", "pha", "phase", "mip", "minip"}
SEG_WORDS = {"seg", "mask", "label", "labels", "segmentation"}


def role_from_name(name: str) -> str | None:
    """The sequence (or 'seg') a name suggests: 'T1_post' -> 't1ce', 'AX FLAIR' -> 'flair', else None."""
    words = [w for w in re.split(r"[^a-z0-9]+", (nifti_stem(name) or name).lower()) if w]
    joined = "".join(words)
    if FLAIR_WORDS & set(words) or "flair" in joined or "darkfluid" in joined:
        return "flair"
    if T1CE_WORDS & set(words) or (T1_WORDS & set(words) and CONTRAST_WORDS & set(words)):
        return "t1ce"
    if T1_WORDS & set(words):
        return "t1"
    if T2_WORDS & set(words):
        return None if T2STAR_WORDS & set(words) or re.search(r"t2\s*\*", name.lower()) else "t2"
    if SEG_WORDS & set(words):
        return "seg"
    return None


def series_order(path: Path) -> list:
    """Sort key that puts a scanner's series in their numbers' order ('3_t1_mprage' before '10_t2_tse'), not as text."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def guess_roles(files: list[Path]) -> dict[str, Path]:
    """A role for each file whose name says one, each role used once (the first file that claims it, in series order)."""
    roles: dict[str, Path] = {}
    for path in sorted(files, key=series_order):
        role = role_from_name(path.name)
        if role is not None and role not in roles:
            roles[role] = path
    return roles


def also_named(files: list[Path], chosen) -> dict[Path, str]:
    """{file: role} of the ``files`` not ``chosen`` (paths or names) whose names say a role all the same: a repeat, another
    plane, which the user may want instead of the one proposed."""
    taken = {Path(p).name for p in chosen}
    return {p: role for p in files if p.name not in taken and (role := role_from_name(p.name))}


def nifti_files(folder: str | os.PathLike) -> list[Path]:
    """A folder's NIfTI files in series-number order (how the Assign dock and sevnet-assign list them)."""
    return sorted((p for p in Path(folder).iterdir() if p.is_file() and nifti_stem(p.name)), key=series_order)


def config_file() -> Path:
    base = os.environ.get("SEVNET_CONFIG_DIR") or Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "napari-sevnet"
    return Path(base) / "assignments.json"


def _all_remembered() -> dict:
    try:
        data = json.loads(config_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def remembered(folder: str | os.PathLike) -> dict[str, Path] | None:
    """The assignment remembered for ``folder`` whose files all still exist, else None."""
    folder = Path(folder).resolve()
    entry = _all_remembered().get(str(folder))
    if not isinstance(entry, dict):
        return None
    mapping = {role: folder / name for role, name in entry.items() if role in ROLES and isinstance(name, str)}
    if not any(m in mapping for m in MODALITIES) or not all(p.is_file() for p in mapping.values()):
        return None
    return mapping


def check_choice(folder: Path, chosen: dict[str, Path]) -> dict[str, Path]:
    """``chosen`` (role -> file) if it can be a case: at least one sequence, no file for two roles (the Assign dock's and
    sevnet-assign's rule)."""
    if not any(m in chosen for m in MODALITIES):
        raise InputError(folder, "choose a file for at least one sequence (T1, T1ce, T2, FLAIR)")
    repeated = {p.name for p in chosen.values() if list(chosen.values()).count(p) > 1}
    if repeated:
        raise InputError(folder, f"{', '.join(sorted(repeated))} is chosen for more than one sequence")
    return chosen


def remember(folder: str | os.PathLike, mapping: dict[str, str | os.PathLike]) -> Path:
    """Keep ``mapping`` (role -> file in ``folder``) for the next time the folder is opened."""
    from filelock import FileLock

    folder = Path(folder).resolve()
    target = config_file()
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        data = _all_remembered()
        data[str(folder)] = {role: Path(path).name for role, path in mapping.items() if path}
        write_text_atomic(target, json.dumps(data, indent=2) + "\n")
    return target


def forget(folder: str | os.PathLike) -> bool:
    """Drop the choice remembered for ``folder`` (a wrong one, or a path that names a patient); whether there was one."""
    from filelock import FileLock

    target = config_file()
    with FileLock(str(target) + ".lock"):
        data = _all_remembered()
        if data.pop(str(Path(folder).resolve()), None) is None:
            return False
        write_text_atomic(target, json.dumps(data, indent=2) + "\n")
    return True


def case_files(path: str | os.PathLike, *, allow_missing: bool = True) -> tuple[str, dict[str, Path]]:
    """(case id, {role: file}) of a case as :func:`load_assigned_or_named` will read it, without reading the scans."""
    path = Path(path)
    mapping = remembered(path if path.is_dir() else path.parent)
    if mapping is not None:
        return case_id_of_files([p for role, p in mapping.items() if role != "seg"]), mapping
    case_id, files, _ = find_case_files(path, allow_missing=allow_missing)
    return case_id, files


def load_assigned_or_named(path: str | os.PathLike, *, allow_missing: bool = True, read_mask: bool = True) -> Case:
    """Load a case by its BraTS names, or by the assignment remembered for its folder; say what to do when neither works."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    mapping = remembered(folder)
    try:
        if mapping is not None:
            return load_case(mapping=mapping, allow_missing=allow_missing, read_mask=read_mask)
        case = load_case(path, allow_missing=allow_missing, read_mask=read_mask)
        unnamed = [p.name for p in nifti_files(folder) if _unrecognised(p, case.case_id)]
        if case.missing and unnamed and path.is_dir():  # the missing sequences may be the files whose names say nothing
            raise InputError(folder, f"case {case.case_id!r} has no {', '.join(case.missing)} by its BraTS names")
        return case
    except InputError as exc:
        files = nifti_files(folder)
        named = role_of(Path(exc.path).name) if exc.path else None
        if (named and named[1] == "seg") or (mapping and exc.path and Path(exc.path) == mapping.get("seg")):
            raise  # the mask's own problem: no hint about the scans
        on_grids = "must share one grid" in exc.problem or re.search(r"shape .* differs", exc.problem)
        if on_grids or _on_own_grids(files):
            # the cause napari says as it opens the Prepare dock: the grids, and a file's own problem (a 2D file), not
            # what the folder read as one case said ("several cases"), which would mislead
            own = f"; {Path(exc.path).name}: {exc.problem}" if exc.path and Path(exc.path).is_file() else ""
            why = exc if on_grids else InputError(folder, f"its scans lie each on its own grid (shapes or voxel sizes differ), as a scanner writes its series{own}")
            raise InputError(exc.path, f"{exc.problem}. These look like raw series, each on its own grid: prepare them first "
                             "(co-register, 1 mm, skull strip) with Plugins > napari-sevnet > Prepare raw scans, sevnet-predict --prepare FOLDER -o OUT, "
                             "or sevnet-prepare FOLDER -o OUT", remedy="Prepare raw scans") from why
        if mapping is not None:  # assigned by hand or named by sequence: the names are not the problem
            raise
        unrecognised = [p.name for p in files if _unrecognised(p, _case_id_of(files))]
        single = "is a single 3D volume" in exc.problem
        if not (unrecognised or single):
            raise
        found = ", ".join(unrecognised or [p.name for p in files])
        raise InputError(
            exc.path, f"{exc.problem}. Not recognised as BraTS names: {found}. Rename them (<id>_t1, <id>_t1ce, <id>_t2, <id>_flair .nii.gz, or t1, t1ce, t2, flair .nii.gz) "
            "or assign them to sequences with Plugins > napari-sevnet > Assign sequences, or on the command line with sevnet-assign FOLDER, "
            "which remember the choice for this folder (napari and every command then open it as assigned)", remedy="Assign sequences",
        ) from exc


def load_to_segment(path: str | os.PathLike, *, allow_missing: bool = True) -> tuple[Case, str | None]:
    """A case to segment, and what was left out: a mask that cannot be read (a clinic's painted with one label, 0/255),
    which segmenting does not use, is left unread and said, where it failed the whole case before."""
    case, mask_error = without_unreadable_mask(lambda read_mask: load_assigned_or_named(path, allow_missing=allow_missing, read_mask=read_mask))
    if mask_error is None:
        return case, None
    return case, f"its mask {Path(mask_error.path).name} was not read ({mask_error.problem.split(';')[0]}); the scans are segmented without it"


def _on_own_grids(files: list[Path]) -> bool:
    """Whether a folder's scans lie on different grids (shapes or voxel sizes, from the headers): raw series, not a case."""
    import nibabel as nib
    import numpy as np

    grids = set()
    for path in files:
        try:
            header = nib.load(str(path)).header
        except Exception:  # noqa: BLE001 - an unreadable file is said when the case is read
            continue
        if (role_of(path.name) or (None, sequence_named(path.name)))[1] == "seg":
            continue
        grids.add((tuple(int(n) for n in header.get_data_shape()[:3]), tuple(np.round(header.get_zooms()[:3], 2).tolist())))
    return len(grids) > 1


def _unrecognised(path: Path, case_id: str | None) -> bool:
    """Whether a file's name says nothing of the case: neither a BraTS name of ``case_id`` nor a sequence's name alone."""
    named = named_case_id(path)
    return (named is None or named != case_id) and not (named is None and sequence_named(path.name))


def _case_id_of(files: list[Path]) -> str | None:
    """The case id most BraTS-named files of a folder share (None when none is BraTS-named)."""
    ids = [named_case_id(p) for p in files if role_of(p.name)]
    return max(set(ids), key=ids.count) if ids else None
