"""Recovery copies of corrections: what a clinician painted survives a crash, a closed viewer or a deleted layer.

After each edit of a result whose scans are files (debounced, written off the
GUI thread), its WT/TC/ET are kept in the recovery folder as ``<result>.npz``
with ``<result>.json`` (case, layer name, the scans with their sizes and
modification times, when, the edits tallied by tool). A model's result also
keeps, once, its output in ``<result>.model.npz`` (its own regions,
probabilities, SE attention and, when the run made one, its uncertainty map) and its provenance in the record (model,
device, thresholds, sequences), so a recovered result is a result again: the
learned clicks and the whole edge work on it, and its export says which model
made it and what the correction changed. When the same scans, unchanged, are
opened again, where they were or moved to another folder (a case folder, a ``sevnet-predict`` output, the Worklist), each
copy comes back as the layers "<case> WT (recovered)", with a notice saying
when it was made.
Exporting the result or saving it with the plugin's writer discards its copy
(the correction is safe elsewhere), and so does deleting the three layers of
a recovered result (deleting the original's never does); an untouched copy is dropped after
:data:`KEEP_DAYS`. The folder is ``$SEVNET_RECOVERY_DIR``, else ``recovery/``
in the user's cache. ``sevnet-recovery`` lists the copies, writes one as a mask
without napari (:func:`write_as_mask`) and deletes them on purpose.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_sevnet.errors import InputError
from napari_sevnet.files import atomic_output, private_dir, user_cache_dir, write_text_atomic
from napari_sevnet.regions import REGIONS

log = logging.getLogger(__name__)
FORMAT = "napari-sevnet-recovery"
KEEP_DAYS = 30
MODEL_SUFFIX = ".model.npz"  # a model's output beside the copy, written once
SAVE_AFTER_MS = 1500  # after the last edit: a brush stroke is several edits in a row, written once
_KEY = re.compile(r"[0-9a-f]{32}")  # a result's group id


def recovery_dir() -> Path:
    return Path(os.environ.get("SEVNET_RECOVERY_DIR") or user_cache_dir() / "recovery")


def _scans(paths: dict) -> dict:
    """The scan files with what tells a file changed since (size, modification time)."""
    found = {}
    for role, path in sorted(paths.items()):
        if role == "seg":
            continue
        stat = Path(path).stat()
        found[role] = {"path": str(Path(path).resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return found


@dataclass
class Recovery:
    key: str  # the result's group id
    case_id: str
    name: str  # the result's layer name without its region ("Brats18_X (run 2)")
    saved_at: str
    folder: Path
    model: dict | None = None  # the model's provenance (checkpoint, device, thresholds, sequences); None for a mask from files
    interactions: dict | None = None  # the edits tallied by tool when the copy was made (the export's statistics)

    @property
    def when(self) -> str:
        return _dt.datetime.fromisoformat(self.saved_at).astimezone().strftime("%Y-%m-%d %H:%M")

    def regions(self) -> np.ndarray:
        with np.load(self.folder / f"{self.key}.npz") as data:
            return _unpack(data)

    def uncertainty(self) -> np.ndarray | None:
        """The WT uncertainty map the run showed, if it made one and the copy kept it (else None, also when unreadable)."""
        output = self.folder / f"{self.key}{MODEL_SUFFIX}"
        if self.model is None or not output.is_file():
            return None
        try:
            with np.load(output) as data:
                return np.asarray(data["uncertainty"], np.float32) if "uncertainty" in data.files else None
        except (OSError, ValueError, KeyError) as exc:
            log.warning("%s: the uncertainty map kept with the copy is unreadable (%s)", output, exc)
            return None

    def info(self, case_id: str, grid, paths: dict):
        """The recovered result's LayerInfo (the case as opened now): the model's output and provenance when the copy kept them."""
        from napari_sevnet.layers import LayerInfo

        info = LayerInfo(group=self.key, case_id=case_id, grid=grid, paths=paths)
        if self.model is None:
            return info
        output = self.folder / f"{self.key}{MODEL_SUFFIX}"
        prediction = probabilities = attention = None
        try:
            if output.is_file():
                with np.load(output) as data:
                    prediction = _unpack(data)
                    probabilities = data["probabilities"] if "probabilities" in data.files else None
                    attention = {name.removeprefix("attention/"): data[name] for name in data.files if name.startswith("attention/")}
        except (OSError, ValueError, KeyError) as exc:  # the provenance stays; the clicks fall back and say so
            log.warning("%s: the model's output kept with the copy is unreadable (%s)", output, exc)
        sequences = self.model.get("sequences")
        return info.but(checkpoint=self.model.get("checkpoint"), device=self.model.get("device"), thresholds=self.model.get("thresholds"),
                        sequences=tuple(sequences) if sequences else None, prediction=prediction, probabilities=probabilities, attention=attention or None,
                        warnings=tuple(str(w) for w in self.model.get("warnings") or ()) or None)


def _pack(regions: np.ndarray) -> dict:
    """Boolean regions as the arrays :func:`_unpack` reads back (packed bits: 8x smaller before compression)."""
    regions = np.asarray(regions, bool)
    return {"bits": np.packbits(regions.ravel()), "shape": np.array(regions.shape)}


def _unpack(data) -> np.ndarray:
    shape = tuple(int(v) for v in data["shape"])
    return np.unpackbits(data["bits"], count=int(np.prod(shape))).reshape(shape).astype(bool)


def save(key: str, regions: np.ndarray, *, case_id: str, name: str, paths: dict, folder: Path | None = None, result=None,
         interactions: dict | None = None, uncertainty: np.ndarray | None = None) -> Path:
    """Keep (3, Z, Y, X) ``regions`` of the result ``key`` (replacing its earlier copy); returns the record's path.

    ``result``: the result's LayerInfo; a model's output in it is written once (float16 probabilities: 1-2 s, up to
    20 MB for a full case), with ``uncertainty`` (the run's WT map, if it made one), its provenance with every
    record. ``interactions``: the edits tallied so far by tool.
    """
    folder = private_dir(folder or recovery_dir())
    model = None
    if result is not None and result.checkpoint is not None:
        model = {"checkpoint": str(result.checkpoint), "device": result.device,
                 "thresholds": {region: float(v) for region, v in result.thresholds.items()} if result.thresholds else None,
                 "sequences": list(result.sequences) if result.sequences else None, "warnings": list(result.warnings or ())}
        if not (folder / f"{key}{MODEL_SUFFIX}").is_file() and result.prediction is not None:
            arrays = {f"attention/{stage}": np.asarray(weights) for stage, weights in (result.attention or {}).items()}
            if result.probabilities is not None:  # a sevnet-predict output opened without its probability maps has none
                arrays["probabilities"] = np.asarray(result.probabilities, np.float16)
            if uncertainty is not None:
                arrays["uncertainty"] = np.asarray(uncertainty, np.float16)
            with atomic_output(folder / f"{key}{MODEL_SUFFIX}", suffix=".npz") as tmp:
                np.savez_compressed(tmp, **_pack(result.prediction), **arrays)
    with atomic_output(folder / f"{key}.npz", suffix=".npz") as tmp:
        np.savez_compressed(tmp, **_pack(regions))
    record = {"format": FORMAT, "key": key, "case_id": case_id, "name": name, "saved_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "scans": _scans(paths), "model": model, "interactions": interactions or None}
    return write_text_atomic(folder / f"{key}.json", json.dumps(record, indent=2))


def discard(key: str, folder: Path | None = None) -> None:
    """Drop the copy of result ``key`` (it was exported or saved): a copy still due is called off, and one being
    written is removed after it (in the writing thread's order; :func:`flush` waits for it)."""
    saver = _SAVERS.get(key)
    if saver is not None:
        saver.cancel()
    _EXECUTOR.submit(_remove, key, Path(folder or (saver.folder if saver is not None else recovery_dir())))


def _remove(key: str, folder: Path) -> None:
    for suffix in (".json", ".npz", MODEL_SUFFIX):
        (folder / f"{key}{suffix}").unlink(missing_ok=True)


def records(folder: Path | None = None) -> list[tuple[dict, Recovery]]:
    """Every copy kept, as (its scans, its Recovery); copies past :data:`KEEP_DAYS` are dropped on the way."""
    folder = Path(folder or recovery_dir())
    if not folder.is_dir():
        return []
    oldest = _dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(days=KEEP_DAYS)
    found = []
    for record_path in folder.glob("*.json"):
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
            saved = _dt.datetime.fromisoformat(record["saved_at"])
            key = record["key"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if record.get("format") != FORMAT or not _KEY.fullmatch(str(key)) or record_path.stem != key:
            continue
        if saved < oldest:
            _remove(key, folder)
            continue
        if (folder / f"{key}.npz").is_file():
            found.append((record.get("scans"), Recovery(key, str(record["case_id"]), str(record["name"]), record["saved_at"], folder,
                                                        record.get("model") if isinstance(record.get("model"), dict) else None,
                                                        record.get("interactions") if isinstance(record.get("interactions"), dict) else None)))
    return found


def find(key: str, folder: Path | None = None) -> tuple[dict, Recovery]:
    """The copy whose key starts with ``key`` (six characters or more, as ``sevnet-recovery`` lists them), with its scans."""
    folder = Path(folder or recovery_dir())
    if not re.fullmatch(r"[0-9a-f]{6,32}", key):
        raise InputError(folder, f"{key!r} is not a copy's key: give at least its first six characters as listed")
    matches = [(scans, r) for scans, r in records(folder) if r.key.startswith(key)]
    if not matches:
        raise InputError(folder, f"no recovery copy's key starts with {key} (list them with sevnet-recovery)")
    if len(matches) > 1:
        raise InputError(folder, f"{len(matches)} recovery copies' keys start with {key}: give more of it")
    return matches[0]


def scans_now(scans: dict) -> str | None:
    """Why the scans a copy was made on cannot be taken as they were (gone, or changed since), or None."""
    for role, scan in sorted((scans or {}).items()):
        path = Path(scan["path"])
        try:
            stat = path.stat()
        except OSError:
            return f"its {role} scan {path} is gone"
        if (stat.st_size, stat.st_mtime_ns) != (scan["size"], scan["mtime_ns"]):
            return f"its {role} scan {path} changed after the copy was made"
    return None


def write_as_mask(recovery: Recovery, scans: dict, path: str | os.PathLike, convention: str = "brats2021", *, overwrite: bool = False) -> Path:
    """The copy's WT/TC/ET as a label NIfTI on its scans' grid, as the plugin's writer saves a result (without napari:
    a viewer that no longer starts, or scans opened elsewhere). Refused when the scans are gone or no longer on the copy's grid."""
    from napari_sevnet.io import MODALITIES, grid_of, write_mask

    reference = next((Path(scans[m]["path"]) for m in MODALITIES if m in (scans or {})), None)
    if reference is None or not reference.is_file():
        raise InputError(reference or recovery.folder / f"{recovery.key}.json", f"the scans of {recovery.name} are gone from where the copy was made: its grid cannot be written without them "
                         "(scans moved since: open them in napari, where the copy comes back)")
    import nibabel as nib

    try:
        grid = grid_of(nib.load(reference))
    except Exception as exc:  # nibabel raises several kinds for a file that is not NIfTI any more
        raise InputError(reference, f"cannot be read for the copy's grid ({exc})") from exc
    try:
        return write_mask(recovery.regions(), grid, path, convention, overwrite=overwrite)
    except InputError:  # the output's own problem (it exists, cannot be written), named as it is
        raise
    except ValueError as exc:  # mask_image: the copy's shape does not fit the scan's grid
        raise InputError(reference, f"its grid {grid.shape} is not the one {recovery.name}'s copy was made on") from exc


def remove(recovery: Recovery) -> None:
    """Delete a copy now (``sevnet-recovery --discard``): its mask, record and the model's output kept with it."""
    _remove(recovery.key, recovery.folder)


def _moved_alike(scans: dict) -> dict:
    """The scans as a move leaves them (file name, size, modification time; not the folder): a patient's folder moved
    or renamed since still finds its copies."""
    return {role: (Path(s["path"]).name, s["size"], s["mtime_ns"]) for role, s in scans.items()} if isinstance(scans, dict) else {}


def pending(paths: dict, folder: Path | None = None, kept: list[tuple[dict, Recovery]] | None = None) -> list[Recovery]:
    """The copies kept for these scans, unchanged since, where they are now or moved (oldest first); ``kept``:
    :func:`records` read once for many cases."""
    try:
        wanted = _scans(paths)
    except OSError:
        return []
    if not wanted:
        return []
    kept = records(folder) if kept is None else kept
    moved = _moved_alike(wanted)
    return sorted((recovery for scans, recovery in kept if scans == wanted or _moved_alike(scans) == moved), key=lambda r: r.saved_at)


def recovered_layers(case_id: str, grid, paths: dict | None, scale, shape, open_groups=(), translate=None) -> tuple[list, str | None]:
    """The kept copies of a case's results (the case read from ``paths``, on ``grid``) as WT/TC/ET layers (and the
    run's uncertainty map when it made one), not those open already (``open_groups``), and the words to tell the user."""
    from napari_sevnet.layers import region_labels, uncertainty_layer

    if not paths:
        return [], None
    paths = {role: str(path) for role, path in paths.items()}
    layers, names = [], []
    for recovery in pending(paths):
        if recovery.key in open_groups:
            continue
        try:
            regions = recovery.regions()
        except (OSError, ValueError, KeyError) as exc:
            log.warning("%s: recovery copy unreadable (%s); left in place", recovery.folder / f"{recovery.key}.npz", exc)
            continue
        if regions.shape != (len(REGIONS), *shape):
            continue
        info = recovery.info(case_id, grid, paths)
        offset = tuple(translate) if translate is not None else (0.0,) * len(shape)
        result = region_labels(regions, tuple(scale), offset, info)
        for layer, region in zip(result, REGIONS):
            layer.name = f"{case_id} {region} (recovered)"  # short enough for the layer list; the notice says when
        entropy = recovery.uncertainty()
        if entropy is not None and entropy.shape == tuple(shape):  # where the model was unsure: what the review was guided by
            result.append(uncertainty_layer(entropy, tuple(scale), offset, info))
            result[-1].name = f"{case_id} WT uncertainty (recovered)"
        layers += result
        warned = f", made with the warning{'s' if len(info.warnings) > 1 else ''}: {'; '.join(info.warnings)}" if info.warnings else ""
        names.append(f"{recovery.name} of {recovery.when}{warned}")  # what the run said may make it wrong is said again
        _RESTORED[recovery.key] = recovery.interactions or {}
    if not names:
        return [], None
    return layers, (f"{case_id}: corrections that were neither exported nor saved were recovered ({'; '.join(names)}) and added as "
                    "'(recovered)' layers: export or save them to keep them; deleting the three layers drops them")


# --------------------------------------------------------------------------- while napari runs

_EXECUTOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sevnet-recovery")  # one write at a time, in edit order
_SAVERS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # result key -> its saver
_WATCHED: weakref.WeakSet = weakref.WeakSet()
_QUITTING: weakref.WeakSet = weakref.WeakSet()  # applications whose quitting writes what is due
_RESTORED: dict[str, dict] = {}  # key -> the edits tallied before, of the copies added back as layers in this session


class _Saver:
    """Writes one result's copy shortly after its last edit (the regions are taken on the GUI thread, written in a thread)."""

    def __init__(self, editor, info, uncertainty=None):
        from qtpy.QtCore import QTimer

        self.editor, self.info = editor, info
        self.uncertainty = uncertainty  # () -> the run's uncertainty map now in the viewer, or None
        self.folder = recovery_dir()  # where this result's copy goes, whatever the environment says later
        self.timer = QTimer()
        self.timer.setSingleShot(True)
        self.timer.setInterval(SAVE_AFTER_MS)
        self.timer.timeout.connect(self.save)
        self.warned = False
        earlier = _RESTORED.get(info.group)
        if earlier and not editor.counts:  # a recovered result: the edits made before the copy still count in its export
            editor.counts = {source: {k: int(v) for k, v in tally.items()} for source, tally in earlier.items() if isinstance(tally, dict)}
        editor.on_change.append(self.timer.start)
        editor.recovery = self  # the editor keeps its saver alive

    def cancel(self) -> None:
        self.timer.stop()

    def save(self) -> None:
        wt = self.editor.layers[0]
        regions = np.stack([np.asarray(layer.data) > 0 for layer in self.editor.layers])
        name = wt.name.replace(" WT", "", 1)
        interactions = {source: dict(tally) for source, tally in self.editor.counts.items()}
        uncertainty = self.uncertainty() if self.uncertainty is not None else None  # written with the model's output, once
        future = _EXECUTOR.submit(save, self.info.group, regions, case_id=self.info.case_id or "case", name=name, paths=self.info.paths, folder=self.folder,
                                  result=self.info, interactions=interactions, uncertainty=uncertainty)
        future.add_done_callback(self._report)

    def _report(self, future) -> None:
        """In the writing thread: a copy that could not be written is said once per result, on the GUI thread."""
        exc = future.exception()
        if exc is not None and not self.warned:
            self.warned = True
            message = f"{self.info.case_id}: the corrections cannot be kept as a recovery copy ({exc}); export or save them, or set SEVNET_RECOVERY_DIR to a folder you can write"
            log.warning(message)
            if _RELAY is not None:
                _RELAY.failed.emit(message)


def watch(viewer) -> None:
    """Keep recovery copies of the edits of every result in ``viewer`` whose scans are files, as results arrive."""
    from napari_sevnet.editing import editor_of
    from napari_sevnet.layers import LayerInfo

    def region_groups(layers) -> set[str]:
        return {info.group for info in map(LayerInfo.from_layer, layers) if info is not None and info.region is not None}

    def attach(_event=None):
        for layer in viewer.layers:
            editor, info = editor_of(layer), LayerInfo.from_layer(layer)
            if editor is None or info is None or not info.paths or getattr(editor, "recovery", None) is not None:
                continue
            _SAVERS[info.group] = _Saver(editor, info, uncertainty=lambda group=info.group: _uncertainty_map(viewer, group))

    def dropped(event):
        """A recovered result whose region layers the user deleted, all three, is not wanted: its copy goes (never the
        original's; its uncertainty map left open does not hold it)."""
        info = LayerInfo.from_layer(event.value)
        if info is None or info.region is None or info.group not in _RESTORED or info.group in region_groups(viewer.layers):
            return
        _RESTORED.pop(info.group, None)
        discard(info.group)

    if viewer not in _WATCHED:
        from qtpy.QtCore import QCoreApplication

        _relay()
        app = QCoreApplication.instance()
        if app is not None and app not in _QUITTING:  # napari quit within a second of an edit: that edit is kept too
            _QUITTING.add(app)
            app.aboutToQuit.connect(flush)
        _WATCHED.add(viewer)
        viewer.layers.events.inserted.connect(attach)
        viewer.layers.events.removed.connect(dropped)
    attach()


def _uncertainty_map(viewer, group: str) -> np.ndarray | None:
    """The uncertainty map of result ``group`` among the viewer's layers (the data itself: napari never edits it in place)."""
    from napari_sevnet.layers import LayerInfo

    for layer in viewer.layers:
        info = LayerInfo.from_layer(layer)
        if info is not None and info.group == group and info.uncertainty is not None:
            return np.asarray(layer.data)
    return None


_RELAY = None  # carries a failed write's message from the writing thread to the GUI thread


def _relay() -> None:
    """Create the relay on the GUI thread (once): its signal reaches the GUI thread from the writing one."""
    global _RELAY
    if _RELAY is None:
        from qtpy.QtCore import QObject, Signal

        class Relay(QObject):
            failed = Signal(str)

        _RELAY = Relay()
        _RELAY.failed.connect(_warn)


def _warn(message: str) -> None:
    from napari.utils import notifications

    notifications.show_warning(message)


def flush(timeout: float = 30.0) -> None:
    """Write what is pending now (the tests, and a viewer closing): timers due are fired, the thread is waited for."""
    for saver in list(_SAVERS.values()):
        if saver.timer.isActive():
            saver.timer.stop()
            saver.save()
    _EXECUTOR.submit(lambda: None).result(timeout=timeout)
