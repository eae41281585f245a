"""Export corrected masks into a fine-tuning dataset that ``sevnet-train`` reads as it is.

A dataset folder::

    DATASET/
      dataset.json      the manifest: every exported case version (the newest of each case trains)
      <case>/           version 1: <case>_t1/_t1ce/_t2/_flair.nii.gz, <case>_seg.nii.gz, export.json
      <case>_v2/        the same case exported again (version 2), ...
      runs/             fine-tuning runs started from the plugin

A version can be withdrawn (:func:`withdraw`: a wrong patient, a mask found
wrong later): its record is marked, its files stay, and training uses the
newest version that is not withdrawn; :func:`restore` takes the mark back.

Nothing is lost or half-written: a version is written into a hidden staging
folder and renamed into place in one step (the commit); the manifest is then
replaced atomically, all under a file lock. Each version folder carries its own
record (``export.json``), so when a process dies between the rename and the
manifest, the next export finds the committed version and completes the
manifest; leftovers of a killed export's staging folder are deleted then.
Exporting a case again adds a version; ``replace=True`` deletes the older
versions, and only after the new one is committed.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_sevnet.errors import InputError
from napari_sevnet.files import write_text_atomic
from napari_sevnet.io import MODALITIES, Case, write_mask, write_volume
from napari_sevnet.metrics import dice
from napari_sevnet.regions import REGIONS, convention_name, make_nested, volumes_ml

MANIFEST_NAME = "dataset.json"
RECORD_NAME = "export.json"
LOCK_NAME = ".dataset.lock"
STAGING_PREFIX = ".staging-"
RUNS_DIR = "runs"
FORMAT = "napari-sevnet-dataset"
FORMAT_VERSION = 2  # the newest this reads; a dataset is written as 1 until a record in it is withdrawn
WITHDRAWALS_FORMAT = 2  # records may be withdrawn: a reader of version 1 would train on them, so it must refuse
LOCK_TIMEOUT_S = 30
_CASE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


@dataclass
class ExportResult:
    case_id: str
    version: int
    folder: Path
    record: dict


#: names the dataset itself uses: a case folder may not take them
RESERVED_NAMES = {MANIFEST_NAME, RECORD_NAME, RUNS_DIR}


def check_case_id(case_id) -> str:
    """A case id names a folder inside the dataset: no separators, no '..', nothing hidden, none of the dataset's own names."""
    reserved = isinstance(case_id, str) and (case_id.lower() in RESERVED_NAMES or case_id.lower().endswith((".json", ".lock")))
    if not isinstance(case_id, str) or not _CASE_ID.fullmatch(case_id) or ".." in case_id or reserved:
        raise InputError(
            repr(case_id),
            "is not a valid case id: use 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit, "
            f"without '..', not ending in .json or .lock and none of {sorted(RESERVED_NAMES)} (it names a folder inside the dataset)",
        )
    return case_id


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def edit_statistics(model_regions: np.ndarray, corrected: np.ndarray, spacing) -> dict:
    """Per region: voxels and mL added / removed by the correction, and Dice(model output, correction)."""
    voxel_ml = float(np.prod(spacing)) / 1000.0
    stats = {}
    for i, region in enumerate(REGIONS):
        model, fixed = np.asarray(model_regions[i], bool), np.asarray(corrected[i], bool)
        added, removed = int(np.count_nonzero(fixed & ~model)), int(np.count_nonzero(model & ~fixed))
        stats[region] = {
            "model_voxels": int(model.sum()),
            "corrected_voxels": int(fixed.sum()),
            "added_voxels": added,
            "removed_voxels": removed,
            "added_ml": round(added * voxel_ml, 3),
            "removed_ml": round(removed * voxel_ml, 3),
            "dice_model_vs_corrected": round(dice(model, fixed), 5),
        }
    return stats


# --------------------------------------------------------------------------- manifest


def _new_manifest(convention: str) -> dict:
    return {"format": FORMAT, "format_version": 1, "label_convention": convention, "modalities": list(MODALITIES), "regions": list(REGIONS), "cases": []}


def read_manifest(dataset: str | os.PathLike) -> dict | None:
    """The dataset's manifest, or None when the folder has none; a broken one is an InputError."""
    path = Path(dataset) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"unreadable dataset manifest: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("cases"), list):
        raise InputError(path, f"is not a napari-sevnet dataset manifest (format {FORMAT!r} with a 'cases' list)")
    version = manifest.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise InputError(path, f"format_version {version!r} must be a whole number (was the manifest edited by hand?)")
    if version > FORMAT_VERSION:
        raise InputError(path, f"manifest format version {version} is newer than this napari-sevnet reads ({FORMAT_VERSION})")
    for index, record in enumerate(manifest["cases"]):
        _check_record(record, f"cases[{index}]", path)
    return manifest


def _check_record(record, where: str, path: Path) -> None:
    """A manifest record as the export writes it, its folder directly inside the dataset (symlinks resolved)."""
    if not isinstance(record, dict):
        raise InputError(path, f"{where} is not a record (was the manifest edited by hand?)")
    for key, kind in (("case_id", str), ("version", int), ("folder", str)):
        value = record.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise InputError(path, f"{where}.{key} is {value!r}, not a {kind.__name__} (was the manifest edited by hand?)")
    try:
        check_case_id(record["case_id"])
    except InputError as exc:
        raise InputError(path, f"{where}.case_id {exc}") from None
    replaces = record.get("replaces", [])
    if not isinstance(replaces, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in replaces):
        raise InputError(path, f"{where}.replaces must be a list of version numbers, not {replaces!r}")
    withdrawn = record.get("withdrawn")
    if withdrawn is not None and not (isinstance(withdrawn, dict) and isinstance(withdrawn.get("at"), str)):
        raise InputError(path, f"{where}.withdrawn must be null or a record with the time ('at') it was withdrawn, not {withdrawn!r}")
    folder = record["folder"]
    dataset = path.parent.resolve()
    if Path(folder).name != folder or folder in ("", ".", "..") or (dataset / folder).resolve().parent != dataset:
        raise InputError(path, f"{where}.folder {folder!r} is not a folder directly inside the dataset: nothing outside it is read or deleted")


def active_cases(manifest: dict) -> list[dict]:
    """The newest version of each case that is not withdrawn: what training uses. The others stay for the record."""
    newest: dict[str, dict] = {}
    for record in manifest["cases"]:
        if record.get("withdrawn"):
            continue
        if record["case_id"] not in newest or record["version"] > newest[record["case_id"]]["version"]:
            newest[record["case_id"]] = record
    return [newest[k] for k in sorted(newest)]


def _used_versions(manifest: dict, case_id: str) -> set[int]:
    used = set()
    for record in manifest["cases"]:
        if record["case_id"] == case_id:
            used.add(record["version"])
            used.update(record.get("replaces", []))
    return used


def _commit_record(dataset: Path, manifest: dict, record: dict) -> None:
    """Enter a committed version into the manifest, then delete the versions it replaces."""
    replaced = set(record.get("replaces", []))
    gone = [r for r in manifest["cases"] if r["case_id"] == record["case_id"] and r["version"] in replaced]
    manifest["cases"] = [r for r in manifest["cases"] if r not in gone] + [record]
    write_text_atomic(dataset / MANIFEST_NAME, json.dumps(manifest, indent=2))
    for old in gone:
        _remove_version_folder(dataset / old["folder"], old)


def _remove_version_folder(folder: Path, record: dict) -> None:
    """Delete a replaced version's folder, but only one that holds that version's own record."""
    try:
        own = json.loads((folder / RECORD_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if (own.get("case_id"), own.get("version")) == (record["case_id"], record["version"]):
        shutil.rmtree(folder, ignore_errors=True)


def _recover(dataset: Path, manifest: dict) -> None:
    """Finish what a killed export left (call under the lock): drop staging, adopt committed versions."""
    known = {(r["case_id"], r["version"]) for r in manifest["cases"]}
    replaced = {(r["case_id"], v) for r in manifest["cases"] for v in r.get("replaces", [])}
    for entry in sorted(dataset.iterdir()):
        if entry.name.startswith(STAGING_PREFIX) and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
            continue
        try:
            record = json.loads((entry / RECORD_NAME).read_text(encoding="utf-8"))
            _check_record(record, entry.name, dataset / MANIFEST_NAME)
            key = (record["case_id"], record["version"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not an exported version (or not a sound one): leave it alone
        if key in known or record.get("folder") != entry.name:
            continue
        if key in replaced:
            _remove_version_folder(entry, record)  # a replace that died before deleting the old version
        else:
            _commit_record(dataset, manifest, record)  # committed, but the manifest was not yet updated
            known.add(key)


# --------------------------------------------------------------------------- withdraw


def _lock(dataset: Path):
    """The dataset's lock, acquired (an InputError when another writer holds it or it cannot be made)."""
    from filelock import FileLock, Timeout

    try:
        lock = FileLock(str(dataset / LOCK_NAME), timeout=LOCK_TIMEOUT_S)
        lock.acquire()
    except Timeout:
        raise InputError(dataset, f"another export has held this dataset for {LOCK_TIMEOUT_S} s; try again when it is done") from None
    except OSError as exc:
        raise InputError(dataset, f"cannot lock the dataset: {exc.strerror or exc}") from None
    return lock


def _mark(dataset, case_id: str, version: int | None, withdrawn: dict | None) -> list[dict]:
    """Set the ``withdrawn`` mark of ``case_id``'s versions (all, or ``version``) to ``withdrawn``; returns those changed."""
    dataset = Path(dataset)
    manifest = read_manifest(dataset)
    if manifest is None:
        raise InputError(dataset, f"has no {MANIFEST_NAME}: not a napari-sevnet dataset")
    lock = _lock(dataset)
    try:
        manifest = read_manifest(dataset)  # again, under the lock
        versions = [r for r in manifest["cases"] if r["case_id"] == case_id]
        if not versions:
            known = sorted({r["case_id"] for r in manifest["cases"]})
            raise InputError(dataset / MANIFEST_NAME, f"lists no case {case_id!r} (it lists {', '.join(known) or 'none'})")
        chosen = [r for r in versions if version is None or r["version"] == version]
        if not chosen:
            raise InputError(dataset / MANIFEST_NAME, f"case {case_id} has no version {version} (it has {sorted(r['version'] for r in versions)})")
        changed = [r for r in chosen if bool(r.get("withdrawn")) != bool(withdrawn)]
        for record in changed:
            record["withdrawn"] = withdrawn
        if changed:
            manifest["format_version"] = max(manifest.get("format_version", 1), WITHDRAWALS_FORMAT)
            write_text_atomic(dataset / MANIFEST_NAME, json.dumps(manifest, indent=2))
    finally:
        lock.release()
    return changed


def withdraw(dataset, case_id: str, *, version: int | None = None, note: str | None = None) -> list[dict]:
    """Take ``case_id`` (every version, or only ``version``) out of training; its files and record stay.

    Returns the records newly withdrawn. Training then uses the newest version
    left, and the worklist no longer counts the case as done.
    """
    mark = {"at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "note": note or None}
    return _mark(dataset, case_id, version, mark)


def training_record(dataset, case_id: str) -> dict | None:
    """The version of ``case_id`` that training uses now (None: the case is left out)."""
    return next((r for r in active_cases(read_manifest(dataset) or {"cases": []}) if r["case_id"] == case_id), None)


def restore(dataset, case_id: str, *, version: int | None = None) -> list[dict]:
    """Undo :func:`withdraw` for ``case_id`` (every version, or only ``version``); returns the records restored."""
    return _mark(dataset, case_id, version, None)


# --------------------------------------------------------------------------- export


def _write_modalities(case: Case, staging: Path, folder_name: str) -> dict[str, str]:
    """The case's sequences with the source voxels and affine: 3D source files are copied byte for byte.

    A sequence the case lacks is not written (a volume of zeros would stand for a scan that was never taken, and no
    reader accepts one); the record's ``sequences`` says which there are.
    """
    names = {}
    for i, m in enumerate(MODALITIES):
        if m not in case.sequences:
            continue
        source = case.paths.get(m)
        single_file = source is not None and list(case.paths.values()).count(source) == 1
        if single_file:
            suffix = ".nii.gz" if source.name.lower().endswith(".gz") else ".nii"
            names[m] = f"{folder_name}_{m}{suffix}"
            shutil.copyfile(source, staging / names[m])
        else:  # a Decathlon 4D file or an in-memory case: write this channel on the source grid
            names[m] = f"{folder_name}_{m}.nii.gz"
            write_volume(case.image[i], case.grid, staging / names[m])
    return names


def _source_record(case: Case) -> dict:
    files = {}
    for role, path in case.paths.items():
        path = Path(path)
        files[role] = {"path": str(path.resolve()), "sha256": sha256_of(path)} if path.is_file() else {"path": str(path), "sha256": None}
    return {"case_id": case.case_id, "layout": case.layout, "files": files}


def _check_same_scans(manifest: dict, case_id: str, source: dict, dataset: Path) -> None:
    """A new version of ``case_id`` must come from that case's scans: sharing none of them, it is another patient
    under the same id, and as the newest version it would silently take the first one's place in training."""
    earlier = [r for r in active_cases(manifest) if r["case_id"] == case_id]
    if not earlier:
        return
    def scans(record: dict) -> dict:
        return {role: f for role, f in (record.get("files") or {}).items() if role != "seg" and isinstance(f, dict) and f.get("sha256")}

    kept = scans(earlier[0].get("source") or {})
    before, now = {f["sha256"] for f in kept.values()}, {f["sha256"] for f in scans(source).values()}
    if before and now and not before & now:
        shown = next(iter(kept.values()))["path"]
        raise InputError(dataset / MANIFEST_NAME, f"case {case_id} (version {earlier[0]['version']}) was exported from other scans ({shown}); "
                         f"this case shares none of them, so it is another patient or visit under the same id: give it its own case id "
                         f"(sevnet-export --case-id, the Export dock's Case id)")


def _checkpoint_record(checkpoint, gone_ok: bool = False) -> dict | None:
    if checkpoint is None:
        return None
    from napari_sevnet.checkpoint import checkpoint_files, read_info

    weights_path, meta_path = checkpoint_files(checkpoint)
    if gone_ok and not (weights_path.is_file() and meta_path.is_file()):  # moved or deleted since it made the result
        return {"path": str(meta_path.resolve()), "weights_sha256": None, "architecture": None, "gone_at_export": True}
    info = read_info(meta_path)
    if not weights_path.is_file():
        raise InputError(weights_path, "checkpoint weights not found")
    return {"path": str(meta_path.resolve()), "weights_sha256": sha256_of(weights_path), "architecture": info.architecture}


def _prepare_dataset(dataset: Path) -> None:
    if dataset.exists() and not dataset.is_dir():
        raise InputError(dataset, "is a file, not a dataset folder")
    if dataset.is_dir() and not (dataset / MANIFEST_NAME).exists():
        visible = [p.name for p in dataset.iterdir() if not p.name.startswith(".")]
        if visible:
            raise InputError(dataset, f"is not empty and has no {MANIFEST_NAME}: choose a new or empty folder, or an existing napari-sevnet dataset")
    try:
        dataset.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(dataset, f"cannot create the dataset folder: {exc.strerror or exc}") from None


def export_case(
    case: Case,
    corrected: np.ndarray,
    dataset: str | os.PathLike,
    *,
    case_id: str | None = None,
    model_regions: np.ndarray | None = None,
    checkpoint: str | os.PathLike | None = None,
    annotator: str | None = None,
    note: str | None = None,
    replace: bool = False,
    label_convention: str | None = None,
    interactions: dict | None = None,
    checkpoint_gone_ok: bool = False,
) -> ExportResult:
    """Add ``case`` with its corrected regions (3, Z, Y, X on the case's canonical grid) to ``dataset``.

    ``model_regions`` (the model's output before correction) gives the edit
    statistics; ``checkpoint`` is the model that produced it; ``interactions``
    how the correction was made ({"click": {"edits": in effect, "voxels": they changed, "undone": taken back},
    "edge": ..., "brush": ..., "fill": ...}). ``checkpoint_gone_ok``: a model moved or deleted since it made the
    result (a recovered correction, days later) is recorded by its path alone instead of stopping the export.
    """
    dataset = Path(dataset)
    try:
        case_id = check_case_id(case_id or case.case_id)
    except InputError as exc:
        if case_id:
            raise
        raise InputError(exc.path, f"{exc.problem}. It is the case's own id, from its folder or file names (which may name the patient): "
                         "give the dataset's id for it (sevnet-export --case-id, the Export dock's Case id)") from None
    corrected = make_nested(np.asarray(corrected, bool))
    if corrected.shape != (len(REGIONS), *case.shape):
        raise InputError(None, f"corrected mask has shape {corrected.shape[1:]}, the case {case.case_id} has {case.shape}")
    if model_regions is not None and np.shape(model_regions) != corrected.shape:
        raise InputError(None, f"model output has shape {np.shape(model_regions)[1:]}, the case {case.case_id} has {case.shape}")
    _prepare_dataset(dataset)
    lock = _lock(dataset)
    try:
        manifest = read_manifest(dataset) or _new_manifest(convention_name(label_convention or "brats2021"))
        if label_convention and convention_name(label_convention) != manifest["label_convention"]:
            raise InputError(dataset / MANIFEST_NAME, f"the dataset uses {manifest['label_convention']} labels, not {convention_name(label_convention)}")
        _recover(dataset, manifest)
        source = _source_record(case)
        _check_same_scans(manifest, case_id, source, dataset)
        used = _used_versions(manifest, case_id)
        version = max(used, default=0) + 1
        folder_name = case_id if version == 1 else f"{case_id}_v{version}"
        target = dataset / folder_name
        if target.exists():
            raise InputError(target, "already exists but is not a version in the dataset manifest; move it out of the dataset first")
        record = {
            "case_id": case_id,
            "version": version,
            "folder": folder_name,
            "exported_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "annotator": annotator or None,
            "note": note or None,
            "label_convention": manifest["label_convention"],
            "source": source,
            "sequences": list(case.sequences),  # those the case has: a fine-tune needs a model trained for missing ones otherwise
            "checkpoint": _checkpoint_record(checkpoint, checkpoint_gone_ok),
            "volumes_ml": volumes_ml(corrected, case.spacing),
            "edits": edit_statistics(model_regions, corrected, case.spacing) if model_regions is not None else None,
            "interactions": interactions or None,
            "replaces": sorted(r["version"] for r in manifest["cases"] if r["case_id"] == case_id) if replace else [],
        }
        staging = dataset / f"{STAGING_PREFIX}{uuid.uuid4().hex}"
        try:
            staging.mkdir()
            record["files"] = _write_modalities(case, staging, folder_name)
            record["files"]["seg"] = write_mask(corrected, case.grid, staging / f"{folder_name}_seg.nii.gz", manifest["label_convention"]).name
            write_text_atomic(staging / RECORD_NAME, json.dumps(record, indent=2))
            os.rename(staging, target)  # the commit
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise InputError(dataset, f"export failed, nothing was added: {exc.strerror or exc}") from None
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _commit_record(dataset, manifest, record)
    finally:
        lock.release()
    return ExportResult(case_id, version, target, record)
