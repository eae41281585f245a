"""Worklist dock widget: the cases of a folder, most uncertain first; double-click opens one.

The work is :func:`napari_sevnet.worklist.run_worklist` in a generator
``thread_worker`` (one case per step, Cancel between cases); the table fills
as cases finish. Opening a case adds its scans, the model's WT/TC/ET layers
(ready for the brush and the Export widget) and the uncertainty map.
"""

from __future__ import annotations

import numpy as np
from magicgui.widgets import FileEdit, Label, PushButton
from qtpy.QtWidgets import QAbstractItemView, QTableWidget, QTableWidgetItem

from napari_sevnet.errors import Cancelled, InputError
from napari_sevnet.regions import REGIONS
from napari_sevnet.widgets import find_widget, shared_predictor
from napari_sevnet.widgets.base import DockWidget, chosen_path

COLUMNS = ("Case", "Score", "WT mL", "TC mL", "ET mL", "Status")


class WorklistWidget(DockWidget):
    def __init__(self, napari_viewer):
        super().__init__(napari_viewer)
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
        self.opener = None  # the worker reading a case to open
        self._cancelled = False

        self._start.changed.connect(self.start)
        self._cancel.changed.connect(self.cancel)

    def closed(self):
        """The dock was closed: stop the worklist after the current case (it yields into this table)."""
        self._cancelled = True

    def _model(self) -> tuple[str | None, str]:
        """The Segment dock's checkpoint and device (the bundled default on auto without one)."""
        from napari_sevnet.widgets.segment import SegmentWidget

        segment = find_widget(self._viewer, SegmentWidget)
        return (segment.checkpoint, segment.device) if segment is not None else (None, "auto")

    def start(self):
        """Segment (or read from the cache) every case of the folder; returns the worker."""
        from napari.qt.threading import thread_worker

        if self.worker is not None:
            return self.worker
        folder, dataset = chosen_path(self._folder), chosen_path(self._dataset)
        if folder is None:
            self._fail(InputError(None, "choose the folder of cases"))
            return None
        (checkpoint, device), viewer = self._model(), self._viewer
        self._cancelled = False

        @thread_worker
        def work():
            from napari_sevnet.worklist import run_worklist

            yield from run_worklist(folder, shared_predictor(viewer, checkpoint, device), dataset=dataset, cancel=lambda: self._cancelled)

        self.items = []
        self._show()
        self._start.enabled, self._cancel.enabled = False, True
        self._status.value = "segmenting..."
        return self.start_worker(work, yielded=self._on_item, errored=self._fail, finished=self._on_finished)

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
        if isinstance(exc, Cancelled):
            from napari.utils.notifications import show_info

            self._status.value = "cancelled"
            show_info("Worklist cancelled; the cases done so far are cached.")
            return
        self._status.value = "failed"
        self.report_error("Worklist failed", exc)

    def _show(self):
        self.table.setRowCount(len(self.items))
        for row, item in enumerate(self.items):
            volumes = (item.report or {}).get("volumes_ml", {})
            status = "error: " + item.error if item.error else ("done (exported)" if item.done else ("cached" if item.cached else "new"))
            cells = [item.case_id, f"{item.score:.3f}" if item.report else "", *(f"{volumes.get(r, 0):.1f}" if item.report else "" for r in REGIONS), status]
            for col, text in enumerate(cells):
                self.table.setItem(row, col, QTableWidgetItem(text))

    def open_case(self, item):
        """Open a listed case with the model's layers and the uncertainty map; returns the worker reading it.

        The files are read in the worker; the layers go in on the GUI thread when it returns.
        """
        from napari.qt.threading import thread_worker

        if item.report is None:
            self._fail(InputError(item.folder, item.error or "this case has no result"))
            return None

        @thread_worker
        def work():
            return case_result_layers(item)

        def add(layers):
            self.opened = [self._viewer.add_layer(layer) for layer in layers]
            self._status.value = f"opened {item.case_id}"

        self.opened = []
        self._status.value = f"opening {item.case_id}..."
        self.opener = work(_connect={"returned": add, "errored": self._fail}, _start_thread=False)
        self.opener.start()
        return self.opener


def case_result_layers(item) -> list:
    """The scans of a worklist case, the model's WT/TC/ET layers and its uncertainty map, as napari layers."""
    from napari.layers import Layer

    from napari_sevnet.io import load_case, read_nifti, read_segmentation
    from napari_sevnet.layers import LayerInfo, case_layers, region_labels, uncertainty_layer

    case = load_case(item.folder)
    images = [Layer.create(data, kwargs, kind) for data, kwargs, kind in case_layers(case) if kind == "image"]
    reference = images[-1]  # FLAIR
    source = LayerInfo.from_layer(reference)
    regions, _ = read_segmentation(item.report["segmentation"], case.grid, case.paths["t1"], "brats2021")
    info = LayerInfo(case_id=source.case_id, grid=case.grid, paths=source.paths, checkpoint=item.report.get("checkpoint"), prediction=regions)
    layers = images + region_labels(regions, reference.scale, reference.translate, info)
    entropy_path = item.report.get("maps", {}).get("uncertainty_WT")
    if entropy_path:
        data, _ = read_nifti(entropy_path)
        layers.append(uncertainty_layer(case.grid.to_canonical(np.asarray(data, np.float32)), reference.scale, reference.translate, info))
    return layers
