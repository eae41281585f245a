"""Segment dock widget: pick the four modality layers and a model, run SEV-Net in the background.

Thin by design: it gathers choices, calls :class:`napari_sevnet.inference.Predictor`
in a ``thread_worker`` (progress bar, Cancel, the GUI stays live), and adds
the result as three new editable Labels layers "<case> WT/TC/ET (run N)". A
second run adds new layers; edits are never replaced. The dock follows what
the user looks at: its sequences are those of the newest case opened, or of
the case whose layer is selected, and its volumes panel shows the result
whose layer is selected (or the newest), following every edit, undo and redo
(the layers stay nested by themselves: :mod:`napari_sevnet.editing`).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, FileEdit, Label, ProgressBar, PushButton
from qtpy.QtCore import QObject, QTimer, Signal
from qtpy.QtWidgets import QSizePolicy

from napari_sevnet.errors import Cancelled, InputError
from napari_sevnet.io import MODALITIES, MODALITY_LABELS
from napari_sevnet.layers import LayerInfo, region_labels, uncertainty_layer
from napari_sevnet.regions import REGIONS, volumes_ml
from napari_sevnet.report import RESEARCH_USE
from napari_sevnet.widgets import shared_predictor
from napari_sevnet.widgets.base import DockWidget
from napari_sevnet.widgets.responsiveness import FrozenCollector, LayerInserter, PausingProgress, gui_workarounds, run_at_low_priority, warm_up

TOOLTIPS = {
    "model": "A napari-sevnet checkpoint (.json beside its .safetensors). Untick 'Bundled default model' to use it.",
    "device": "auto = CUDA when a GPU is available, else CPU.",
    "tta": "Average the 8 mirror flips, about 6x slower. On the held-out real cases it changed the default model's mean Dice WT +0.001, TC +0.002, ET -0.001.",
    "uncertainty": "Add a map of where the model is unsure (entropy over the 8 mirror flips; turns test-time augmentation on).",
    "outlines": "Draw the regions you are not editing as outlines, so every boundary stays visible (the selected region is filled).",
    "orientation": "Radiological: the patient's right on the screen's left, anterior up. Neurological: the right on the right.",
}


def _default_model_tooltip() -> str:
    from napari_sevnet.checkpoint import BUNDLED, describe

    return describe(BUNDLED)


def guess_modality_layer(layers, modality: str):
    """The image layer that holds ``modality``: our reader's metadata first, then the words of the layer name."""
    from napari_sevnet.assignments import role_from_name

    for layer in layers:
        info = LayerInfo.from_layer(layer)
        if info is not None and info.modality == modality:
            return layer
    return next((layer for layer in layers if role_from_name(layer.name) == modality), None)


class _Relay(QObject):
    """Carries progress from the worker thread to the GUI thread (queued signal)."""

    progressed = Signal(float, str)


def _case_key(info: LayerInfo) -> str:
    return str(Path(info.scan_path).parent) if info.scan_path else info.group


class SegmentWidget(DockWidget):
    def __init__(self, napari_viewer):
        super().__init__(napari_viewer)
        from napari_sevnet.display import ORIENTATIONS, orientation_setting
        from napari_sevnet.layers import prepare_viewer

        self._case = Label(label="Case", value="")
        self._modalities = {
            m: ComboBox(label=MODALITY_LABELS[m], choices=self._image_layers, nullable=True) for m in MODALITIES
        }
        self._bundled = CheckBox(text="Bundled default model", value=True, tooltip=_default_model_tooltip())
        self._checkpoint = FileEdit(label="Model", filter="*.json", tooltip=TOOLTIPS["model"], enabled=False)
        self._device = ComboBox(label="Device", choices=["auto", "cpu", "cuda"], value="auto", tooltip=TOOLTIPS["device"])
        self._tta = CheckBox(text="Test-time augmentation", value=False, tooltip=TOOLTIPS["tta"])
        self._uncertainty = CheckBox(text="Uncertainty map", value=False, tooltip=TOOLTIPS["uncertainty"])
        self._outlines = CheckBox(text="Outer regions as outlines", value=True, tooltip=TOOLTIPS["outlines"])
        self._orientation = ComboBox(label="View", choices=sorted(ORIENTATIONS, reverse=True), value=orientation_setting(), tooltip=TOOLTIPS["orientation"])
        self._run = PushButton(text="Run")
        self._cancel = PushButton(text="Cancel", enabled=False)
        # progress lives in the dock: napari's own bar processes events on every update and its spinner
        # repaints the whole window 30 times a second (see widgets/responsiveness.py)
        self._bar = ProgressBar(label="Progress", min=0, max=100, value=0)
        self._status = Label(value="")
        self._status.native.setWordWrap(True)  # a run's notes and warnings are read whole ...
        self._status.native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)  # ... and a new message never resizes the dock
        self._volumes = Label(value="")
        self._volumes.native.setWordWrap(True)
        self.extend([self._case, *self._modalities.values(), self._bundled, self._checkpoint, self._device, self._tta, self._uncertainty,
                     self._outlines, self._orientation, self._run, self._cancel, self._bar, self._status, self._volumes])

        self._relay = _Relay()
        self._relay.progressed.connect(self._on_progress)
        self._debounce = QTimer(self.native)  # dies with the dock
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(250)
        self._debounce.timeout.connect(self.update_volumes)
        self._cancel_event: threading.Event | None = None
        self._final_status = ""
        workarounds = gui_workarounds()
        self._inserter = LayerInserter(self.native, hold_repaints=workarounds)
        self._worker_running = False
        self._report = None
        self.result_layers: dict[str, object] = {}  # the result the volumes panel follows
        self.uncertainty_layer = None
        self.last_result = None
        self.volumes: dict[str, float] | None = None

        self._bundled.changed.connect(lambda v: setattr(self._checkpoint, "enabled", not v))
        self._uncertainty.changed.connect(lambda v: setattr(self._tta, "value", True) if v else None)
        self._outlines.changed.connect(self._on_outlines)
        self._orientation.changed.connect(self._on_orientation)
        self._run.changed.connect(self.run)
        self._cancel.changed.connect(self.cancel)
        self.on_layers_changed(self._refresh_layers)
        self.connect_while_open(self._viewer.layers.selection.events.active, self._on_selection)
        prepare_viewer(self._viewer)
        self._refresh_layers()
        # torch, MONAI and the rest of a run's imports load now, with the dock: imported by the first run's
        # worker thread they hold the import lock and the GIL long enough to freeze the GUI for a third of a second
        import monai.inferers  # noqa: F401
        import safetensors.torch  # noqa: F401  (the checkpoint reader)
        import skimage.color  # noqa: F401  (napari's Labels colours)

        import napari_sevnet.inference  # noqa: F401

        warm_up()
        self._collector = FrozenCollector(napari_viewer, self.native) if workarounds else None

    def closed(self):
        """The dock was closed: stop following the result layers and stop a running segmentation."""
        self._track({})
        self._stop_worker()
        self._inserter.cancel()
        if self._collector is not None:
            self._collector.release()

    # ------------------------------------------------------------------ choices

    def _image_layers(self, _widget=None):
        from napari.layers import Image

        return [layer for layer in self._viewer.layers if isinstance(layer, Image) and layer.ndim == 3 and layer.rgb is False]

    def _refresh_layers(self, event=None):
        self.reset_choices()
        layers = self._image_layers()
        for combo in self._modalities.values():
            if combo.value is not None and combo.value not in layers:
                combo.value = None  # its layer was removed
        inserted = getattr(event, "value", None) if getattr(event, "type", None) == "inserted" else None
        info = LayerInfo.from_layer(inserted) if inserted is not None else None
        if info is not None and info.modality is not None:
            self.follow_case(info.group)  # a case was just opened: segment that one next
        elif not any(combo.value is not None for combo in self._modalities.values()):
            ours = [i for i in (LayerInfo.from_layer(layer) for layer in layers) if i is not None and i.modality is not None]
            if ours:
                self.follow_case(ours[-1].group)  # the newest case opened through the plugin
            else:
                for m, combo in self._modalities.items():  # layers from elsewhere: by their names
                    combo.value = guess_modality_layer(layers, m)
        self._show_case()
        if self.result_layers and any(layer not in self._viewer.layers for layer in self.result_layers.values()):
            self._track({})
            self._volumes.value = ""

    def _on_selection(self, event=None):
        """Follow the case, or the result, of the selected layer."""
        active = self._viewer.layers.selection.active
        info = LayerInfo.from_layer(active) if active is not None else None
        if info is None:
            return
        if info.modality is not None:
            self.follow_case(info.group)
        elif info.region is not None:
            from napari_sevnet.layers import region_group

            try:
                group = region_group(self._viewer.layers, active)
            except InputError:
                return
            if group != self.result_layers:
                self._track(group)
                self.update_volumes()

    def follow_case(self, group: str) -> None:
        """Choose the image layers of the case ``group`` (the layers the reader or the Worklist added); a sequence it lacks is none."""
        found = {}
        for layer in self._image_layers():
            info = LayerInfo.from_layer(layer)
            if info is not None and info.group == group and info.modality in self._modalities:
                found[info.modality] = layer
        for m, combo in self._modalities.items():
            combo.value = found.get(m)
        self._show_case()

    def _show_case(self) -> None:
        chosen = {m: c.value for m, c in self._modalities.items() if c.value is not None}
        reference = self._reference(chosen) if chosen else None
        info = LayerInfo.from_layer(reference) if reference is not None else None
        self._case.value = (info.case_id if info is not None else None) or (reference.name if reference is not None else "")

    def _on_outlines(self, value: bool) -> None:
        from napari_sevnet.display import follow_selection

        follow_selection(self._viewer, outlines=value)

    def _on_orientation(self, value: str) -> None:
        from napari_sevnet.display import show_radiological

        show_radiological(self._viewer, value)

    def set_checkpoint(self, path: str | Path | None) -> None:
        """Use ``path`` (None: the bundled default model) for the next run."""
        self._bundled.value = path is None
        if path is not None:
            self._checkpoint.value = Path(path)

    @property
    def checkpoint(self) -> str | None:
        return None if self._bundled.value else str(self._checkpoint.value)

    @property
    def device(self) -> str:
        return self._device.value

    # ------------------------------------------------------------------ run

    def _input_image(self):
        """The chosen layers' data (None for a sequence set to none) and the chosen layers of the present sequences."""
        chosen = {m: c.value for m, c in self._modalities.items() if c.value is not None}
        if not chosen:
            raise InputError(None, "choose an image layer for at least one sequence (T1, T1ce, T2, FLAIR)")
        if len({id(layer) for layer in chosen.values()}) < len(chosen):
            raise InputError(None, "each sequence needs its own layer (the same layer is chosen twice)")
        # BraTS cases share one grid, so a box set to another case's layer, or to another sequence, would pass every later check
        infos = {m: LayerInfo.from_layer(layer) for m, layer in chosen.items()}
        for m, info in infos.items():
            if info is not None and info.modality in MODALITY_LABELS and info.modality != m:
                raise InputError(None, f"the {MODALITY_LABELS[m]} box holds {chosen[m].name!r}, a {MODALITY_LABELS[info.modality]} scan: choose the case's {MODALITY_LABELS[m]}")
        # one case: its files' folder (a case opened twice is still one), or its open when it has no files
        cases = {_case_key(info): chosen[m].name for m, info in infos.items() if info is not None and info.modality is not None}
        if len(cases) > 1:
            raise InputError(None, f"the chosen layers come from {len(cases)} different cases ({', '.join(sorted(cases.values()))}): choose one case's scans")
        shapes = {layer.data.shape for layer in chosen.values()}
        if len(shapes) != 1:
            raise InputError(None, f"the sequence layers differ in shape: {sorted(shapes)}")
        return [chosen[m].data if m in chosen else None for m in MODALITIES], chosen

    @staticmethod
    def _reference(chosen: dict):
        """The layer whose scale and case the result takes: FLAIR, else the first sequence chosen."""
        return chosen.get("flair") or next(iter(chosen.values()))

    def run(self):
        """Start a segmentation in a worker thread; returns the worker (None if the input is invalid)."""
        from napari.qt.threading import thread_worker

        from napari_sevnet.display import next_run

        if self.worker is not None:
            return self.worker
        try:
            volumes, chosen = self._input_image()
        except InputError as exc:
            self._error(exc)
            return None
        checkpoint, device, tta, uncertainty = self.checkpoint, self._device.value, self._tta.value, self._uncertainty.value
        cancel = self._cancel_event = threading.Event()
        report = self._report = PausingProgress(self._relay.progressed)
        reference = self._reference(chosen)
        source = LayerInfo.from_layer(reference) or LayerInfo()
        case_id = source.case_id or reference.name
        sequences = tuple(m for m in MODALITIES if m in chosen)
        run = next_run(self._viewer.layers, case_id)
        viewer = self._viewer

        def segment():
            shape = next(v.shape for v in volumes if v is not None)
            image = np.stack([np.asarray(v, dtype=np.float32) if v is not None else np.zeros(shape, np.float32) for v in volumes])  # ~140 MB: not on the GUI thread
            predictor = shared_predictor(viewer, checkpoint, device)
            spacing = tuple(float(v) for v in reference.scale)
            result = predictor.predict(image, spacing=spacing, sequences=sequences, tta=tta or uncertainty, uncertainty=uncertainty, progress=report, cancel=cancel)
            region_volumes = volumes_ml(result.regions, spacing)  # off the GUI thread too
            return predictor, result, self._result_layers(predictor, result, chosen, case_id, run), region_volumes

        @thread_worker
        def work():
            return run_at_low_priority(segment)

        self._bar.value = 0
        self._worker_running = True
        self._run.enabled, self._cancel.enabled = False, True
        self._status.value = f"segmenting {case_id} (run {run})..."
        self._final_status = ""
        return self.start_worker(work, returned=lambda out: self._guarded(self._on_result, out, case_id, run), errored=self._error, finished=self._on_finished)

    def _stop_worker(self) -> None:
        """Ask a running segmentation to stop, and stop it waiting for a redraw."""
        if self._cancel_event is not None:
            self._cancel_event.set()
        if self._report is not None:
            self._report.release()

    def cancel(self):
        if self._cancel_event is not None:
            self._stop_worker()
            if self.worker is not None:
                try:
                    self._status.value = "cancelling..."
                except RuntimeError:  # the widget is being deleted
                    pass

    def _on_progress(self, fraction: float, message: str):
        if self._report is not None:
            self._report.drawn()
        if not self._worker_running or self.worker is None or self._final_status:
            return  # a late message from a run that has already ended
        try:
            self._status.value = message
            self._bar.value = int(round(100 * fraction))
        except RuntimeError:  # the dock was closed while the worker ran
            self.cancel()

    def _on_finished(self):
        self._worker_running = False
        if not self._inserter.busy:
            self._done()

    def _done(self):
        self._run.enabled, self._cancel.enabled = True, False
        self.worker = None
        if self._final_status:
            self._status.value = self._final_status

    def _error(self, exc: BaseException):
        if isinstance(exc, Cancelled):
            from napari.utils.notifications import show_info

            self._final_status = "cancelled"
            show_info("Segmentation cancelled; no layers were added.")
            return
        self._final_status = self._status.value = "failed"
        self.report_error("Segmentation failed", exc)

    def _guarded(self, handler, *args):
        """Run a slot; report an exception as a notification (PyQt6 aborts on one that escapes)."""
        try:
            handler(*args)
        except Exception as exc:  # noqa: BLE001 - every failure must reach the user as a message
            self._run_failed(exc)

    def _run_failed(self, exc: BaseException):
        self._inserter.cancel()
        self._error(exc)
        if not self._worker_running:  # the worker has already finished: nothing else will end the run
            self._done()

    def _schedule_volumes(self, event=None):
        self._debounce.start()

    @staticmethod
    def _result_layers(predictor, result, chosen, case_id, run) -> list:
        """Build the WT/TC/ET Labels layers in the worker: only inserting them needs the GUI thread."""
        reference = SegmentWidget._reference(chosen)
        source = LayerInfo.from_layer(reference) or LayerInfo()
        # what reading the scans changed (voxels without a value) may make this result wrong too
        read = dict.fromkeys(w for layer in chosen.values() for w in ((LayerInfo.from_layer(layer) or LayerInfo()).warnings or ()))
        info = LayerInfo(  # a new group ties the three layers of one run together
            case_id=case_id,
            grid=source.grid,
            paths=source.paths,
            checkpoint=result.checkpoint or predictor.checkpoint,
            device=result.device,
            source_layers={m: layer.name for m, layer in chosen.items()},
            attention=result.attention,
            prediction=result.regions,  # the model's own output, to measure edits against
            probabilities=result.probabilities.astype(np.float16),  # what the Correct dock's clicks grow on
            thresholds=result.postprocessing.get("thresholds"),
            run=run,
            sequences=result.sequences,
            warnings=(*read, *result.warnings) or None,
        )
        layers = region_labels(result.regions, reference.scale, reference.translate, info)
        if result.uncertainty is not None:
            layers.append(uncertainty_layer(result.uncertainty[0], reference.scale, reference.translate, info))
        return layers

    def _on_result(self, out, case_id, run):
        predictor, result, layers, volumes = out
        self.uncertainty_layer = None
        self.last_result = None
        self._final_status = f"{case_id} run {run}: done in {result.timings['total_s']:.1f} s on {result.device} ({RESEARCH_USE})"
        warnings = list(LayerInfo.from_layer(layers[0]).warnings or ())  # the model's and those of reading the scans
        if result.notes or warnings:  # the input was not what the model was trained on: say so where it is seen
            from napari.utils.notifications import show_warning

            self._final_status += "; " + "; ".join(result.notes + [f"warning: {w}" for w in warnings])
            for line in warnings:
                show_warning(f"{case_id}: {line}")
        regions = [layer for layer in layers if LayerInfo.from_layer(layer).region is not None]
        self._inserter.insert(self._viewer, layers, on_added=self._on_layer_added, then=[self._collector.freeze_survivors] if self._collector is not None else [],
                              on_done=lambda: self._on_layers_inserted(result, volumes, regions), on_error=self._run_failed)

    def _on_layer_added(self, layer):
        if LayerInfo.from_layer(layer).region is None:
            self.uncertainty_layer = layer

    def _on_layers_inserted(self, result, volumes, regions):
        self.last_result = result
        self._track({LayerInfo.from_layer(layer).region: layer for layer in regions})
        self._show_volumes(volumes)  # the model's own, computed in the worker; edits recompute them
        if not self._worker_running:  # the worker has finished (it normally has by now)
            self._done()

    # ------------------------------------------------------------------ edits

    def _track(self, layers: dict) -> None:
        """Follow the edits, undos and redos of the result ``layers`` (region -> layer) in the volumes panel."""
        from napari_sevnet.editing import editor_of

        for layer in self.result_layers.values():
            layer.events.data.disconnect(self._schedule_volumes)
            editor = editor_of(layer)
            if editor is not None and self._schedule_volumes in editor.on_change:
                editor.on_change.remove(self._schedule_volumes)
        self.result_layers = dict(layers)
        for layer in self.result_layers.values():
            layer.events.data.connect(self._schedule_volumes)  # a whole new mask (a script, a correction tool)
        editor = editor_of(next(iter(self.result_layers.values()))) if self.result_layers else None
        if editor is not None:
            editor.on_change.append(self._schedule_volumes)

    def current_regions(self) -> np.ndarray | None:
        if len(self.result_layers) < 3 or any(layer not in self._viewer.layers for layer in self.result_layers.values()):
            return None
        return np.stack([np.asarray(self.result_layers[r].data) > 0 for r in REGIONS])

    def update_volumes(self) -> dict[str, float] | None:
        regions = self.current_regions()
        if regions is None:
            self._volumes.value = ""
            return None
        spacing = tuple(float(s) for s in self.result_layers["WT"].scale)
        return self._show_volumes(volumes_ml(regions, spacing))

    def _show_volumes(self, volumes: dict[str, float]) -> dict[str, float]:
        wt = self.result_layers.get("WT")
        label = wt.name.replace(" WT", "") if wt is not None else ""
        self._volumes.value = f"{label}: " + "   ".join(f"{r} {v:.1f} mL" for r, v in volumes.items())
        self.volumes = volumes
        return volumes
