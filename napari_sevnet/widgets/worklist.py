"""Worklist dock widget: the cases of a folder, most uncertain first; double-click opens one.

The work is :func:`napari_sevnet.worklist.run_worklist` in a generator
``thread_worker`` (one case per step, Cancel between cases); the table fills
as cases finish. Opening a case adds its scans, the model's WT/TC/ET layers
(ready for the brush and the Export widget) and the uncertainty map.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from magicgui.widgets import Container, FileEdit, Label, PushButton
from qtpy.QtWidgets import QAbstractItemView, QTableWidget, QTableWidgetItem

from napari_sevnet.errors import Cancelled, InputError
from napari_sevnet.regions import REGIONS
from napari_sevnet.widgets import find_widget, register

COLUMNS = ("Case", "Score", "WT mL", "TC mL", "ET mL", "Status")


class WorklistWidget(Container):
    def __init__(self, napari_viewer):
        super().__init__(labels=True)
        self._viewer = napari_viewer
        self._folder = FileEdit(label="Cases", mode="d", nullable=True, tooltip="A folder of case folders (BraTS layout)")
        self._dataset = FileEdit(label="Dataset", mode="d", nullable=True, tooltip="Optional: cases exported to this dataset are marked done")
        self._start = PushButton(text="Segment and rank")
        self._cancel = PushButton(text="Cancel", enabled=False)
        self._status = Label(value="")
        self.extend([self._folder, self._dataset, self._start, self._cancel, self._status])
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setMinimumHeight(220)
        self.table.cellDoubleClicked.connect(lambda row, _col: self.open_case(self.items[row]))
        self.native.layout().addWidget(self.table)
        self.items: list = []
        self.worker = None
        self._cancelled = False

        self._start.changed.connect(self.start)
        self._cancel.changed.connect(self.cancel)
        register(self)

    def _checkpoint(self) -> str | None:
        from napari_sevnet.widgets.segment import SegmentWidget

        segment = find_widget(self._viewer, SegmentWidget)
        return segment.checkpoint if segment is not None else None

    def start(self):
        """Segment (or read from the cache) every case of the folder; returns the worker."""
        from napari.qt.threading import thread_worker

        if self.worker is not None:
            return self.worker
        folder, dataset = self._folder.value, self._dataset.value
        if folder is None or str(folder) in ("", "."):
            self._fail(InputError(None, "choose the folder of cases"))
            return None
        checkpoint = self._checkpoint()
        self._cancelled = False

        @thread_worker
        def work():
            from napari_sevnet.inference import Predictor
            from napari_sevnet.worklist import run_worklist

            predictor = Predictor(checkpoint, "auto", tta=True, uncertainty=True)
            yield from run_worklist(Path(folder), predictor, dataset=dataset if dataset and str(dataset) not in ("", ".") else None, cancel=lambda: self._cancelled)

        self.items = []
        self._show()
        self._start.enabled, self._cancel.enabled = False, True
        self._status.value = "segmenting..."
        handlers = {"yielded": self._on_item, "errored": self._fail, "finished": self._on_finished}
        worker = self.worker = work(_connect=handlers, _start_thread=False)
        worker.start()
        return worker

    def cancel(self):
        self._cancelled = True

    def _on_item(self, item):
        self.items.append(item)
        self.items.sort(key=lambda i: i.score, reverse=True)
        self._show()
        self._status.value = f"{len(self.items)} case(s)" + (f", last: {item.case_id}" if item else "")

    def _on_finished(self):
        self._start.enabled, self._cancel.enabled = True, False
        self.worker = None
        if not self._status.value.startswith(("cancelled", "failed")):
            self._status.value = f"{len(self.items)} case(s), most uncertain first; double-click to open"

    def _fail(self, exc: BaseException):
        from napari.utils.notifications import show_error, show_info

        if isinstance(exc, Cancelled):
            self._status.value = "cancelled"
            show_info("Worklist cancelled; the cases done so far are cached.")
            return
        self._status.value = "failed"
        message = str(exc) if isinstance(exc, (InputError, ValueError, RuntimeError)) else f"{type(exc).__name__}: {exc}"
        show_error(f"Worklist failed: {message}")

    def _show(self):
        self.table.setRowCount(len(self.items))
        for row, item in enumerate(self.items):
            volumes = (item.report or {}).get("volumes_ml", {})
            status = "error: " + item.error if item.error else ("done (exported)" if item.done else ("cached" if item.cached else "new"))
            cells = [item.case_id, f"{item.score:.3f}" if item.report else "", *(f"{volumes.get(r, 0):.1f}" if item.report else "" for r in REGIONS), status]
            for col, text in enumerate(cells):
                self.table.setItem(row, col, QTableWidgetItem(text))

    def open_case(self, item):
        """Open a listed case with the model's layers and the uncertainty map; returns the added layers."""
        from napari_sevnet.io import read_nifti, read_segmentation
        from napari_sevnet.layers import META_KEY, region_labels, uncertainty_layer

        if item.report is None:
            self._fail(InputError(item.folder, item.error or "this case has no result"))
            return []
        try:
            opened = self._viewer.open(str(item.folder), plugin="napari-sevnet")
            reference = next(layer for layer in opened if layer.metadata.get(META_KEY, {}).get("modality") == "flair")
            source = reference.metadata[META_KEY]
            grid = source["grid"]
            regions, _ = read_segmentation(item.report["segmentation"], grid, Path(source["paths"]["t1"]), "brats2021")
            meta = {**{k: source[k] for k in ("case_id", "grid", "paths")}, "group": f"worklist-{id(item)}", "checkpoint": item.report.get("checkpoint"), "prediction": regions}
            added = [self._viewer.add_layer(layer) for layer in region_labels(regions, reference.scale, reference.translate, meta)]
            entropy_path = item.report.get("maps", {}).get("uncertainty_WT")
            if entropy_path:
                data, _ = read_nifti(entropy_path)
                added.append(self._viewer.add_layer(uncertainty_layer(grid.to_canonical(np.asarray(data, np.float32)), reference.scale, reference.translate, {"case_id": source["case_id"]})))
        except InputError as exc:
            self._fail(exc)
            return []
        return list(opened) + added
