"""Read-out dock widget: the lesion table and RANO measurements of the selected result, a case report, two visits.

The table follows the result whose layer is selected (or the newest) and its
edits (measured again in a worker, half a second after the last edit).
Clicking a row moves the viewer to the slice with that lesion's largest
enhancing area; its two diameters are drawn as a Shapes layer on the image's
scale. "Write report" writes the self-contained HTML case report
(:mod:`napari_sevnet.case_report`). "Compare" measures the change since the
chosen baseline result (another visit of the patient) with its RANO
category and shows the two side by side (grid mode); when their grids differ,
the baseline's regions are registered (rigid) onto the follow-up's scan too.
"""

from __future__ import annotations

import numpy as np
from magicgui.widgets import ComboBox, FileEdit, Label, LineEdit, PushButton
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QTableWidget, QTableWidgetItem

from napari_sevnet.display import camera
from napari_sevnet.errors import InputError
from napari_sevnet.layers import LayerInfo, case_from_layers, region_group
from napari_sevnet.regions import REGIONS
from napari_sevnet.widgets.base import DockWidget, chosen_path

COLUMNS = ("#", "NCR mL", "ED mL", "ET mL", "slice", "longest mm", "perp. mm", "product mm²", "measurable")
DEBOUNCE_MS = 500


class ReadoutWidget(DockWidget):
    def __init__(self, napari_viewer):
        super().__init__(napari_viewer)
        self._result = ComboBox(label="Result", choices=self.result_wt_layers, nullable=True)
        self._summary = Label(value="")
        self._summary.native.setWordWrap(True)
        self._report_path = FileEdit(label="Report", mode="w", filter="*.html", nullable=True)
        self._write = PushButton(text="Write report")
        self._baseline = ComboBox(label="Baseline", choices=self.result_wt_layers, nullable=True, tooltip="The same patient's earlier result: the change is measured from it")
        dated = ("YYYY-MM-DD, optional: NIfTI files carry no date; with both dates the change gives the days between the visits and says when "
                 "they are the wrong way round (a case prepared from DICOM knows its own)")
        self._baseline_date = LineEdit(label="Baseline date", tooltip=f"The baseline's study date, {dated}")
        self._follow_up_date = LineEdit(label="Follow-up date", tooltip=f"The selected result's study date, {dated}")
        self._compare = PushButton(text="Compare with the baseline")
        self._status = Label(value="")
        self._status.native.setWordWrap(True)
        self.extend([self._result, self._summary, self._report_path, self._write, self._baseline, self._baseline_date, self._follow_up_date, self._compare, self._status])
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.setMinimumHeight(120)
        self.table.cellClicked.connect(lambda row, _col: self.go_to(row))
        self.native.layout().addWidget(self.table)
        self.readout = None
        self.measuring = None  # the worker measuring the table (self.worker: the report or comparison under way)
        self.comparison = None
        self._compared: tuple | None = None  # (the follow-up result's group, the baseline's regions on its grid or None, compare_visits' other arguments) of the last Compare
        self.shapes = None
        self._tracked: dict = {}
        self._debounce = QTimer(self.native)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(DEBOUNCE_MS)
        self._debounce.timeout.connect(self.measure)
        self._result.changed.connect(self._on_result)
        self._write.changed.connect(self.write_report)
        self._compare.changed.connect(self.compare)
        self.follow_results(self._result, then=self._complete)

    def closed(self):
        self._follow({})
        self._debounce.stop()

    # ------------------------------------------------------------------ which result

    def _complete(self, event=None):
        if self._result.value is not None and len(self._tracked) < len(REGIONS):
            self._on_result(self._result.value)  # its TC and ET arrived after its WT

    def _on_result(self, layer):
        try:
            self._follow(region_group(self._viewer.layers, layer) if layer is not None else {})
        except InputError:
            self._follow({})
        self.measure()

    def _follow(self, group: dict) -> None:
        """Measure again after each edit, undo or redo of the result ``group`` (debounced)."""
        from napari_sevnet.editing import editor_of

        for layer in self._tracked.values():
            editor = editor_of(layer)
            if editor is not None and self._debounce.start in editor.on_change:
                editor.on_change.remove(self._debounce.start)
        self._tracked = dict(group)
        editor = editor_of(next(iter(group.values()))) if group else None
        if editor is not None:
            editor.on_change.append(self._debounce.start)

    # ------------------------------------------------------------------ measuring

    def measure(self):
        """Measure the tracked result in a worker; the table, the summary and the diameters follow."""
        from napari.qt.threading import thread_worker

        if len(self._tracked) < 3:
            self.readout = None
            self._show()
            return None
        regions = np.stack([np.asarray(self._tracked[r].data) > 0 for r in REGIONS])
        reference = self._tracked["WT"]
        spacing, grid = tuple(float(v) for v in reference.scale), LayerInfo.from_layer(reference).grid

        @thread_worker
        def work():
            from napari_sevnet.readout import measure

            return measure(regions, spacing, grid)

        if self.measuring is not None:
            self._debounce.start()  # one measurement at a time: try again shortly
            return None
        worker = self.measuring = work(_connect={"returned": self._on_measured, "errored": lambda exc: self.report_error("Read-out failed", exc),
                                                 "finished": self._on_measured_all}, _start_thread=False)
        worker.start()
        return worker

    def _on_measured_all(self):
        self.measuring = None

    def _on_finished(self):
        self.worker = None

    def _still_working(self) -> bool:
        """A report or comparison is under way (a second click would write twice, or add the registered baseline twice)."""
        if self.worker is None:
            return False
        self._status.value = "the last report or comparison is still under way: click again once it is done"
        return True

    def _on_measured(self, readout):
        self.readout = readout
        try:
            self._show()
        except RuntimeError:  # the dock was closed while it measured
            return
        self._draw_diameters()

    def _show(self):
        from napari_sevnet.readout import enhancement_caveat, format_ml

        readout = self.readout
        lesions = readout.lesions if readout is not None else []
        self.table.setRowCount(len(lesions))
        for row, lesion in enumerate(lesions):
            d = lesion.diameters
            cells = [str(lesion.index), format_ml(lesion.ncr_ml), format_ml(lesion.ed_ml), format_ml(lesion.et_ml),
                     *((str(d.slice), f"{d.longest_mm:.1f}", f"{d.perpendicular_mm:.1f}", f"{d.product_mm2:.0f}") if d else ("-", "-", "-", "-")),
                     lesion.measurable_words]
            for col, text in enumerate(cells):
                self.table.setItem(row, col, QTableWidgetItem(text))
        if readout is None:
            self._summary.value = "select a result (a WT, TC or ET layer)"
            return
        volumes = "  ".join(f"{r} {format_ml(v)} mL" for r, v in readout.volumes_ml.items())
        caveat = enhancement_caveat(LayerInfo.from_layer(self._tracked["WT"]).sequences) if "WT" in self._tracked else None
        self._summary.value = (f"{len(lesions)} lesion(s), {readout.measurable} measurable; sum of products {readout.sum_of_products_mm2:.0f} mm²; {volumes}"
                               + (f"; warning: {caveat}" if caveat else ""))

    def _draw_diameters(self):
        """The RANO diameters of every lesion as lines on the result's scale (one Shapes layer per result)."""
        reference = self._tracked.get("WT")
        if reference is None or self.readout is None:
            return
        lines = [np.array(segment) for lesion in self.readout.lesions if lesion.diameters is not None for segment in (lesion.diameters.longest, lesion.diameters.perpendicular)]
        name = reference.name.replace(" WT", " RANO diameters")
        if self.shapes is not None and self.shapes in self._viewer.layers and self.shapes.name == name:
            self.shapes.data = lines
            self.shapes.shape_type = ["line"] * len(lines)
        elif lines:
            self.shapes = self._viewer.add_shapes(lines, shape_type="line", edge_color=["cyan", "magenta"] * (len(lines) // 2), edge_width=1.0,
                                                  name=name, scale=reference.scale, translate=reference.translate)
            self._viewer.layers.selection.active = reference  # keep editing the result

    def go_to(self, row: int) -> None:
        """Show lesion ``row``: the slice of its largest enhancing area, centred."""
        if self.readout is None or row >= len(self.readout.lesions):
            return
        lesion = self.readout.lesions[row]
        reference = self._tracked["WT"]
        z = lesion.diameters.slice if lesion.diameters is not None else lesion.voxel[0]
        world = np.asarray(reference.data_to_world((z, *lesion.voxel[1:])))
        self._viewer.dims.set_point(0, float(world[0]))
        camera(self._viewer).center = tuple(float(v) for v in world)

    # ------------------------------------------------------------------ report and visits

    def write_report(self):
        """Write the HTML case report of the result in a worker; returns the worker (None when there is nothing to write)."""
        from napari.qt.threading import thread_worker

        if self._still_working():
            return self.worker
        path = chosen_path(self._report_path)
        if path is None or len(self._tracked) < len(REGIONS):  # not self.readout: the table's measurement may still be under way
            self.report_error("Report", InputError(None, "choose where to write the report, and a result to report on"))
            return None
        if path.suffix.lower() != ".html":
            path = path.with_suffix(".html")
        layers, reference = list(self._viewer.layers), self._tracked["WT"]
        regions = np.stack([np.asarray(self._tracked[r].data) > 0 for r in REGIONS])
        info = LayerInfo.from_layer(reference)
        spacing = tuple(float(v) for v in reference.scale)
        # the change since a baseline only when it was compared with this very result, not the one selected before it
        baseline = self._compared[1:] if self._compared is not None and self._compared[0] == info.group else None  # (its regions here, the comparison's arguments)

        @thread_worker
        def work():
            from napari_sevnet import case_report
            from napari_sevnet.readout import compare_visits, measure, new_lesions

            case = case_from_layers(layers, reference)
            readout = measure(regions, spacing, info.grid)  # the mask as it is now: the table's last measurement may predate an edit
            comparison = None
            if baseline is not None:
                base_here, compared = baseline  # the comparison as Compare made it, of the mask as it is now
                comparison = compare_visits(follow_up=readout, new=new_lesions(base_here, regions, readout, spacing) if base_here is not None else None, **compared)
            return case_report.write(path, case, regions, readout, checkpoint=info.checkpoint, comparison=comparison)

        self._status.value = "writing the report..."
        return self.start_worker(work, returned=lambda p: setattr(self._status, "value", f"report written to {p}"),
                                 errored=lambda exc: self.report_error("Report failed", exc), finished=self._on_finished)

    def compare(self):
        """Change since the baseline result, its RANO category, and the two visits side by side; returns the worker."""
        from napari.qt.threading import thread_worker

        from napari_sevnet.readout import on_one_grid

        if self._still_working():
            return self.worker
        baseline, follow = self._baseline.value, self._tracked.get("WT")
        if baseline is None or follow is None or baseline is follow:
            self.report_error("Compare", InputError(None, "choose a baseline result other than the one selected"))
            return None
        base_info, now_info = LayerInfo.from_layer(baseline), LayerInfo.from_layer(follow)
        if base_info.paths == now_info.paths if base_info.paths else base_info.case_id == now_info.case_id:
            self.report_error("Compare", InputError(None, f"{baseline.name} is a result of the same scan as {follow.name}: choose the earlier visit's result as the baseline"))
            return None
        from napari_sevnet.prepare import visit_of
        from napari_sevnet.readout import with_study_date

        try:
            base_visit = with_study_date(visit_of(base_info.paths), self._baseline_date.value, f"Baseline date ({baseline.name.replace(' WT', '')})")
            now_visit = with_study_date(visit_of(now_info.paths), self._follow_up_date.value, f"Follow-up date ({follow.name.replace(' WT', '')})")
        except InputError as exc:
            self.report_error("Compare", exc)
            return None
        base_group = region_group(self._viewer.layers, baseline)
        base = np.stack([np.asarray(base_group[r].data) > 0 for r in REGIONS])
        now = np.stack([np.asarray(self._tracked[r].data) > 0 for r in REGIONS])
        same_grid = on_one_grid(base, base_info.grid, now, now_info.grid)
        layers = list(self._viewer.layers)

        @thread_worker
        def work():
            from napari_sevnet.readout import baseline_on_follow_up, compare_visits, measure, new_lesions

            base_readout, now_readout = measure(base, tuple(baseline.scale), base_info.grid), measure(now, tuple(follow.scale), now_info.grid)
            aligned, unaligned = None, None
            if not same_grid:  # the baseline's regions onto the follow-up's scan, for the eye and for new lesions; volumes and products need no registration
                aligned, how = baseline_on_follow_up(case_from_layers(layers, baseline), base, case_from_layers(layers, follow))
                unaligned = None if aligned is not None else how
            on_follow_up = base if same_grid else aligned  # the baseline where the follow-up lies: new lesions are found there
            new = new_lesions(on_follow_up, now, now_readout, tuple(follow.scale)) if on_follow_up is not None else None
            compared = {"baseline": base_readout, "baseline_id": base_info.case_id, "follow_up_id": now_info.case_id, "unassessed": unaligned,
                        "baseline_visit": base_visit, "follow_up_visit": now_visit}
            return compare_visits(follow_up=now_readout, new=new, **compared), compared, on_follow_up, aligned, unaligned

        def show(out):
            comparison, compared, on_follow_up, aligned, unaligned = out
            self.comparison, self._compared = comparison, (now_info.group, on_follow_up, compared)
            spd = comparison["sum_of_products_mm2"]
            pct = f"{spd['percent']:+.1f} %" if spd["percent"] is not None else "n/a"
            new = comparison["new_lesions"]
            self._status.value = (f"since {baseline.name.replace(' WT', '')}" + (f" ({comparison['days']} days before)" if comparison["days"] is not None else "") + f": sum of products {spd['baseline']:.0f} → {spd['follow_up']:.0f} mm² ({pct}): {comparison['category']}"
                                  + (f" (new lesion {', '.join(f'#{n}' for n in new)})" if new else "")
                                  + (f"; the baseline is not shown on this scan: {unaligned}" if unaligned else "")
                                  + (f"; warning: {comparison['caveat']}" if comparison["caveat"] else ""))
            if comparison["caveat"]:
                from napari.utils.notifications import show_warning

                show_warning(f"Compare: {comparison['caveat']}")
            if aligned is not None:
                from napari_sevnet.layers import region_labels

                info = LayerInfo(case_id=f"{base_info.case_id} on {now_info.case_id}", grid=now_info.grid, paths=now_info.paths)
                for layer in region_labels(aligned, follow.scale, follow.translate, info):
                    self._viewer.add_layer(layer)
            self._viewer.grid.enabled = True

        self._status.value = "comparing..."
        return self.start_worker(work, returned=show, errored=lambda exc: self.report_error("Compare failed", exc), finished=self._on_finished)

