"""Export dock widget: add the corrected WT/TC/ET layers and their scan to a fine-tuning dataset.

The writing is :func:`napari_sevnet.export.export_case` (staging folder,
rename, manifest under a lock), run in a ``thread_worker``; this widget only
gathers the layers, the dataset folder and the annotator's note. It follows
the result the user works on (the one whose layer is selected, else the
newest run), says which case and run it will export, and warns when those
layers were never edited. *Withdraw this export* takes a mistaken export back
out of training (:func:`napari_sevnet.export.withdraw`; the files stay). The edit statistics compare the layers with the
model output kept in their metadata.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, FileEdit, Label, LineEdit, PushButton

from napari_sevnet.errors import InputError
from napari_sevnet.layers import LayerInfo, case_from_layers, region_group
from napari_sevnet.regions import NECROSIS_ALONE, REGIONS, necrosis_alone
from napari_sevnet.widgets import find_widget
from napari_sevnet.widgets.base import DockWidget, chosen_path

TOOLTIPS = {
    "result": "The WT layer of a Segment run (or of an opened case); its TC and ET layers go with it.",
    "dataset": "A new or empty folder, or an existing napari-sevnet dataset (it has a dataset.json).",
    "case_id": "Folder name of the case in the dataset (default: the case's own id).",
    "replace": "Delete the case's earlier versions in this dataset (after the new one is written). Off: add a new version.",
    "withdraw": "Take the version just exported out of training (the wrong case, an unfinished mask); its files stay in the dataset.",
}


class ExportWidget(DockWidget):
    def __init__(self, napari_viewer):
        super().__init__(napari_viewer)
        self._result = ComboBox(label="Result", choices=self.result_wt_layers, nullable=True, tooltip=TOOLTIPS["result"])
        self._dataset = FileEdit(label="Dataset", mode="d", nullable=True, tooltip=TOOLTIPS["dataset"])
        self._case_id = LineEdit(label="Case id", tooltip=TOOLTIPS["case_id"])
        self._annotator = LineEdit(label="Annotator")
        self._note = LineEdit(label="Note")
        self._replace = CheckBox(text="Replace earlier versions", value=False, tooltip=TOOLTIPS["replace"])
        self._export = PushButton(text="Export")
        self._target = Label(value="")
        self._target.native.setWordWrap(True)
        self._status = Label(value="")
        self._withdraw = PushButton(text="Withdraw this export", enabled=False, tooltip=TOOLTIPS["withdraw"])
        self.exported = None  # the last ExportResult, which Withdraw takes back out of training
        self._exported_group: str | None = None  # the result being exported: its recovery copy goes once it is in
        self.extend([self._result, self._target, self._dataset, self._case_id, self._annotator, self._note, self._replace, self._export, self._status, self._withdraw])

        self._result.changed.connect(self._on_result)
        self._export.changed.connect(self.export)
        self._withdraw.changed.connect(self.withdraw)
        self.follow_results(self._result, then=lambda _event: self._describe())

    def _on_result(self, layer):
        if layer is not None:
            self._case_id.value = LayerInfo.from_layer(layer).case_id or ""
        self._describe()

    def _describe(self) -> None:
        """Name the case and run that Export will write, and whether its layers were edited."""
        layer = self._result.value
        if layer is None:
            self._target.value = "no result to export yet: run Segment, or open a case with its mask"
            return
        name = layer.name.replace(" WT", "")
        edited = self.edited(layer)
        note = "" if edited is None else (" (edited)" if edited else ": not edited yet, its mask is the model's own")
        self._target.value = f"exports {name}{note}"

    def edited(self, layer) -> bool | None:
        """Whether the result of ``layer`` differs from the model's own output (None: no model output, a mask from files)."""
        info = LayerInfo.from_layer(layer)
        if info is None or info.prediction is None:
            return None
        try:
            group = region_group(self._viewer.layers, layer)
        except InputError:
            return None
        return any(not np.array_equal(np.asarray(group[r].data) > 0, info.prediction[i]) for i, r in enumerate(REGIONS))

    def export(self):
        """Start the export in a worker; returns it (None when the choices are incomplete)."""
        from napari.qt.threading import thread_worker

        if self.worker is not None:
            return self.worker
        try:
            layer, dataset = self._result.value, chosen_path(self._dataset)
            if layer is None:
                raise InputError(None, "choose the result to export (a WT layer from the Segment widget or an opened case)")
            if dataset is None:
                raise InputError(None, "choose a dataset folder")
            group = region_group(self._viewer.layers, layer)
            corrected = np.stack([np.asarray(group[r].data) > 0 for r in REGIONS])  # a copy: painting may go on
            info = LayerInfo.from_layer(layer)
            if info.run is None and necrosis_alone(corrected):  # a mask read from a file, as one label made it
                raise InputError(None, f"{layer.name.replace(' WT', '')}: its mask {NECROSIS_ALONE}; exported so, it would teach the model "
                                       "necrosis wherever the mask means tumour: draw its core (TC) and enhancing tumour (ET) first (or, if it "
                                       "is necrosis alone, export the file with sevnet-export --mask-labels 2021)")
            if self.edited(layer) is False:
                from napari.utils.notifications import show_warning

                show_warning(f"{layer.name.replace(' WT', '')} was not edited: the exported mask is the model's own, unchanged")
            options = {
                "case_id": self._case_id.value.strip() or None,
                "model_regions": info.prediction,
                "checkpoint": info.checkpoint,
                "annotator": self._annotator.value.strip() or None,
                "note": self._note.value.strip() or None,
                "replace": self._replace.value,
                "interactions": _interactions(layer),
                "checkpoint_gone_ok": True,  # the user cannot bring a deleted model back: their correction still goes in
            }
            layers = list(self._viewer.layers)
            self._exported_group = info.group
        except InputError as exc:
            self._error(exc)
            return None

        @thread_worker
        def work():
            from napari_sevnet.export import export_case

            case = case_from_layers(layers, layer)
            return export_case(case, corrected, Path(dataset), **options)

        self._export.enabled = False
        self._status.value = "exporting..."
        return self.start_worker(work, returned=self._on_exported, errored=self._error, finished=self._on_finished)

    def _on_exported(self, result):
        from napari.utils.notifications import show_info

        self._status.value = f"{result.case_id} v{result.version} -> {result.folder}"
        self.exported, self._withdraw.enabled = result, True
        from napari_sevnet.recovery import discard

        discard(self._exported_group)  # the correction is in the dataset now: its recovery copy has done its work
        show_info(f"Exported {result.case_id} (version {result.version}) to {result.folder}")
        model = result.record.get("checkpoint") or {}
        if model.get("gone_at_export"):
            from napari.utils.notifications import show_warning

            show_warning(f"{result.case_id}: the model that made it is no longer at {model['path']}; the export records that path without its checksum")
        from napari_sevnet.widgets.finetune import FineTuneWidget

        finetune = find_widget(self._viewer, FineTuneWidget)
        if finetune is not None:  # fine-tune on what was just exported
            finetune.dataset = result.folder.parent

    def withdraw(self) -> None:
        """Take the last export out of training (its record is marked; no file is deleted)."""
        from napari.utils.notifications import show_info

        from napari_sevnet.export import training_record, withdraw

        result = self.exported
        if result is None:
            return
        dataset = result.folder.parent
        try:
            withdraw(dataset, result.case_id, version=result.version, note="withdrawn from the Export dock")
            left = training_record(dataset, result.case_id)
        except InputError as exc:
            self._error(exc)
            return
        self.exported, self._withdraw.enabled = None, False
        training = f"training uses version {left['version']}" if left else "training leaves the case out"
        self._status.value = f"{result.case_id} v{result.version} withdrawn ({training}; its files stay in {result.folder})"
        show_info(f"Withdrew {result.case_id} version {result.version}: {training}.")

    def _on_finished(self):
        self._export.enabled = True
        self.worker = None

    def _error(self, exc: BaseException):
        self._status.value = "export failed"
        self.report_error("Export failed", exc)



def _interactions(layer) -> dict | None:
    """How the result of ``layer`` was corrected: edits and voxels changed by each kind of tool."""
    from napari_sevnet.editing import editor_of

    editor = editor_of(layer)
    return {source: dict(tally) for source, tally in editor.counts.items()} if editor is not None and editor.counts else None
