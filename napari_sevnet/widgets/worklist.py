"""Worklist dock widget: the cases of a folder, most uncertain first; double-click opens one.

The work is :func:`napari_sevnet.worklist.run_worklist` in a generator
``thread_worker`` (one case per step, Cancel between cases); the table fills
as cases finish, a bar shows the work inside the current case and the status
line how long the rest will take. The uncertainty comes from two mirror passes
by default (the scan and its left-right mirror); "Thorough" uses all eight,
four times slower. Opening a case adds its scans, the model's WT/TC/ET layers
(nested as they are edited; the Segment dock's volumes and the Export dock
follow them like any result) and the uncertainty map.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Collection

import numpy as np
from magicgui.widgets import CheckBox, FileEdit, Label, ProgressBar, PushButton
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QTableWidget, QTableWidgetItem

from napari_sevnet.errors import Cancelled, InputError
from napari_sevnet.layers import LayerInfo, layer_groups
from napari_sevnet.regions import REGIONS
from napari_sevnet.report import RESEARCH_USE
from napari_sevnet.widgets import find_widget, shared_predictor
from napari_sevnet.widgets.base import DockWidget, chosen_path
from napari_sevnet.worklist import FAST_PASSES

COLUMNS = ("Case", "Score", "WT mL", "TC mL", "ET mL", "Status")
THOROUGH_PASSES = 8


class _Relay(QObject):
    """Progress inside a case, from the worker thread to the GUI thread."""

    progressed = Signal(str, float, str)
    counted = Signal(int)


class WorklistWidget(DockWidget):
    def __init__(self, napari_viewer):
        super().__init__(napari_viewer)
        self._folder = FileEdit(label="Cases", mode="d", nullable=True, tooltip="A folder of case folders (BraTS layout)")
        self._dataset = FileEdit(label="Dataset", mode="d", nullable=True, tooltip="Optional: cases exported to this dataset are marked done")
        self._thorough = CheckBox(text="Thorough uncertainty (8 mirror flips, 4x slower)", value=False)
        self._start = PushButton(text="Segment and rank")
        self._cancel = PushButton(text="Cancel", enabled=False)
        self._bar = ProgressBar(label="Case", min=0, max=100, value=0)
        self._status = Label(value="")
        self._status.native.setWordWrap(True)
        self.extend([self._folder, self._dataset, self._thorough, self._start, self._cancel, self._bar, self._status])
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setMinimumHeight(160)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)  # case names get the room
        for column in range(1, len(COLUMNS)):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.ResizeToContents)
        self.table.cellDoubleClicked.connect(lambda row, _col: self.open_case(self.items[row]))
        self.native.layout().addWidget(self.table)
        self.items: list = []
        self.opener = None  # the worker reading a case to open
        self._opening = None  # the folder it reads
        self._cancelled = False
        self._total = 0
        self._seconds: list[float] = []  # per freshly segmented case: the time estimate
        self._last = 0.0
        self._relay = _Relay()
        self._relay.progressed.connect(self._on_progress)
        self._relay.counted.connect(self._on_counted)

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
        if dataset is not None and dataset.is_dir() and not (dataset / "dataset.json").is_file() and any(not p.name.startswith(".") for p in dataset.iterdir()):
            from napari.utils.notifications import show_warning

            show_warning(f"Worklist: {dataset} is not a napari-sevnet dataset (it holds no dataset.json), so no case is marked exported; "
                         "choose the folder the Export dock writes to")
        (checkpoint, device), viewer, relay = self._model(), self._viewer, self._relay
        passes = THOROUGH_PASSES if self._thorough.value else FAST_PASSES
        self._cancelled, self._total, self._seconds, self._last = False, 0, [], time.perf_counter()

        @thread_worker
        def work():
            from napari_sevnet.io import find_cases
            from napari_sevnet.worklist import run_worklist

            relay.counted.emit(len(find_cases([folder])))
            predictor = shared_predictor(viewer, checkpoint, device)
            yield from run_worklist(folder, predictor, dataset=dataset, passes=passes, cancel=lambda: self._cancelled, progress=relay.progressed.emit)

        self.items = []
        self._show()
        self._start.enabled, self._cancel.enabled = False, True
        self._status.value = "segmenting..."
        return self.start_worker(work, yielded=self._on_item, errored=self._fail, finished=self._on_finished)

    def cancel(self):
        self._cancelled = True

    def _on_counted(self, total: int) -> None:
        self._total = total
        self._status.value = f"{total} case(s) to go through; timing the first..."

    def _on_progress(self, case_id: str, fraction: float, message: str) -> None:
        self._bar.value = int(round(100 * fraction))
        self._bar.label = case_id

    def _on_item(self, item):
        now = time.perf_counter()
        if not item.cached and item.error is None:
            self._seconds.append(now - self._last)
        self._last = now
        self.items.append(item)
        self.items.sort(key=lambda i: i.score, reverse=True)
        self._show()
        left = max(self._total - len(self.items), 0)
        eta = f", about {_duration(np.mean(self._seconds) * left)} left ({np.mean(self._seconds):.0f} s per case)" if self._seconds and left else ""
        self._status.value = f"{len(self.items)} of {self._total or '?'} case(s), last: {item.case_id}{eta}"

    def _on_finished(self):
        self._start.enabled, self._cancel.enabled = True, False
        self.worker = None
        # the bar followed each case; now it says how much of the folder was gone through, not the last case at 100 %
        self._bar.label = "Cases"
        self._bar.value = int(round(100 * len(self.items) / self._total)) if self._total else 0
        if not self._status.value.startswith(("cancelled", "failed")):
            self._status.value = f"{len(self.items)} case(s), most uncertain first; double-click to open ({RESEARCH_USE})"

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
        ids = Counter(item.case_id for item in self.items)
        for row, item in enumerate(self.items):
            volumes = (item.report or {}).get("volumes_ml", {})
            case = f"{item.case_id} ({item.folder.name})" if ids[item.case_id] > 1 else item.case_id  # two visits of one case id
            cells = [case, f"{item.score:.3f}" if item.report else "", *(f"{volumes.get(r, 0):.1f}" if item.report else "" for r in REGIONS), item.status]
            tips = [str(item.folder), *cells[1:-1], "\n".join([item.status, *filter(None, [item.mask_not_read]), *item.warnings])]
            for col, (text, tip) in enumerate(zip(cells, tips)):
                self.table.setItem(row, col, QTableWidgetItem(text))
                self.table.item(row, col).setToolTip(tip)

    def open_case(self, item):
        """Open a listed case with the model's layers and the uncertainty map; returns the worker reading it.

        The files are read in the worker; the layers go in on the GUI thread when it returns.
        """
        from napari.qt.threading import thread_worker

        if item.report is None:
            self._fail(InputError(item.folder, item.error or "this case has no result"))
            return None
        if self.opener is not None and self._opening == item.folder:  # a second double-click while it reads: opened once
            return self.opener

        from napari_sevnet.display import next_run
        from napari_sevnet.layers import open_scans

        run = next_run(self._viewer.layers, item.case_id)
        shown = open_scans(self._viewer.layers)  # read on the GUI thread: a case open already gets its result only
        taken = [layer.name for layer in self._viewer.layers]
        open_groups = layer_groups(self._viewer.layers)

        @thread_worker
        def work():
            from napari_sevnet.recovery import recovered_layers

            layers = case_result_layers(item, run, shown, taken)
            wt = next(layer for layer in layers if (LayerInfo.from_layer(layer) or LayerInfo()).region == "WT")
            info = LayerInfo.from_layer(wt)
            recovered, message = recovered_layers(info.case_id, info.grid, info.paths, wt.scale, wt.data.shape, open_groups, wt.translate)
            return layers + recovered, message

        def add(out):
            from napari_sevnet.layers import prepare_viewer

            layers, message = out
            prepare_viewer(self._viewer)  # radiological with the sides named, as a case opened any other way
            self.opened = [self._viewer.add_layer(layer) for layer in layers]
            self._status.value = f"opened {item.case_id}"
            if message:
                from napari.utils.notifications import show_warning

                show_warning(message)

        self.opened = []
        self._status.value = f"opening {item.case_id}..."
        self._opening = item.folder
        self.opener = work(_connect={"returned": add, "errored": self._fail, "finished": self._opened}, _start_thread=False)
        self.opener.start()
        return self.opener

    def _opened(self) -> None:
        self.opener = self._opening = None


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def case_result_layers(item, run: int, open_scans: dict[str, str] | None = None, taken: Collection[str] = ()) -> list:
    """The scans of a worklist case (those not open yet), the model's WT/TC/ET layers and its maps, as napari layers."""
    from napari_sevnet.assignments import load_to_segment
    from napari_sevnet.layers import prediction_layers

    return prediction_layers(load_to_segment(item.folder)[0], item.report, run, open_scans, taken)
