"""Prepare raw scans dock widget: a clinic's series (own grids, with the skull) made into a case the model can read.

Choosing the folder lists its series (DICOM or NIfTI) under each sequence,
proposed from their names (:func:`napari_sevnet.prepare.series_options`); the
user confirms or changes them, or sets a damaged one to none. Then it runs
:func:`napari_sevnet.prepare.prepare_case` in a worker (co-registration
to the reference series, 1 mm, skull stripping, N4 bias-field correction; a few minutes on a laptop
CPU) and opens the prepared case. Results of the Segment dock on it can be
written back onto the reference series' own grid with ``sevnet-predict
--prepare`` or :func:`napari_sevnet.prepare.regions_to_native`.
"""

from __future__ import annotations

from magicgui.widgets import CheckBox, ComboBox, FileEdit, Label, PushButton
from qtpy.QtWidgets import QComboBox

from napari_sevnet.errors import InputError
from napari_sevnet.io import MODALITIES, MODALITY_LABELS
from napari_sevnet.widgets.base import DockWidget, chosen_path

NONE = "(none)"
TOOLTIPS = {"series": "The series taken for this sequence, proposed from its name; (none) leaves the sequence out (the model segments without it)"}


class PrepareWidget(DockWidget):
    def __init__(self, napari_viewer):
        super().__init__(napari_viewer)
        self._folder = FileEdit(label="Raw series", mode="d", nullable=True, tooltip="A folder of one patient's series, names saying T1, T1ce (post-Gd), T2, FLAIR")
        self._output = FileEdit(label="Prepared into", mode="d", nullable=True, tooltip="Where the prepared case goes (never replaced)")
        self.found = None  # the chosen folder's SeriesOptions, once read
        # choices from a function: napari resets a dock's choices whenever a layer comes or goes (a plain list would
        # go back to [none], losing the series listed and the user's choices)
        self._series = {m: ComboBox(label=MODALITY_LABELS[m], choices=self._series_choices, tooltip=TOOLTIPS["series"]) for m in MODALITIES}
        for combo in self._series.values():  # a clinic's long series names do not widen the dock
            combo.native.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.native.setMinimumContentsLength(24)
        self._reference = ComboBox(label="Reference", choices=[(MODALITY_LABELS[m], m) for m in MODALITIES], value="t1ce")
        self._strip = CheckBox(text="Skull strip (ROBEX)", value=True)
        self._bias_field = CheckBox(text="Bias-field correction (N4)", value=True, tooltip="Flattens the coil's smooth intensity ramp; off for series corrected already")
        self._run = PushButton(text="Prepare and open")
        self._status = Label(value="")
        self._status.native.setWordWrap(True)
        self.extend([self._folder, *self._series.values(), self._output, self._reference, self._strip, self._bias_field, self._run, self._status])
        self._run.changed.connect(self.prepare)
        self._folder.changed.connect(self._on_folder)
        self.prepared = None
        self.lister = None  # the worker reading them

    def _series_choices(self, _widget=None) -> list[str]:
        return [NONE, *self.found.options] if self.found is not None else [NONE]

    def _on_folder(self, _value=None):
        """List the folder's series under each sequence, as proposed from their names (DICOM headers are read in a worker)."""
        from napari.qt.threading import thread_worker

        from napari_sevnet.prepare import series_options

        self.found = None
        for combo in self._series.values():
            combo.reset_choices()
            combo.value = NONE
        folder = chosen_path(self._folder)
        if folder is None or not folder.is_dir():
            return None

        def listed(found):
            if chosen_path(self._folder) != folder:  # another folder was chosen meanwhile
                return
            self.found = found
            for m, combo in self._series.items():
                combo.reset_choices()
                combo.value = found.proposal.get(m, NONE)
            unnamed = [MODALITY_LABELS[m] for m in MODALITIES if m not in found.proposal]
            # a repeat or another plane of a sequence, which the user may prefer to the first acquired
            also = ", ".join(f"{shown} ({MODALITY_LABELS[role]})" for shown, role in found.others.items())
            self._status.value = (f"{len(found.options)} {'DICOM' if found.dicom else 'NIfTI'} series; "
                                  + (f"no name says {', '.join(unnamed)}: choose by hand. " if unnamed else "each sequence proposed from the names. ")
                                  + (f"Also named like a sequence: {also}. " if also else "")
                                  + "Check each (none for a series too damaged to use), then Prepare and open.")

        def failed(exc):
            self._status.value = str(exc)

        self._status.value = f"reading the series in {folder.name}..."
        self.lister = thread_worker(series_options)(folder, _start_thread=False)
        self.lister.returned.connect(listed)
        self.lister.errored.connect(failed)
        self.lister.start()
        return self.lister

    def prepare(self):
        """Prepare in a worker, then open the prepared case; returns the worker (None on incomplete choices)."""
        from napari.qt.threading import thread_worker

        if self.worker is not None:  # minutes of work: a second click would race the first for the same output folder
            self._status.value = "still preparing the last case: it opens when done"
            return self.worker
        folder, output = chosen_path(self._folder), chosen_path(self._output)
        if folder is None or output is None:
            self.report_error("Prepare", InputError(None, "choose the folder of raw series and where the prepared case goes"))
            return None
        try:
            inputs, series = folder, None
            if self.found is not None:  # the series chosen in the dock; before they are listed, as their names say
                inputs, series = self.found.inputs(folder, {m: c.value for m, c in self._series.items() if c.value not in (None, NONE)})
        except InputError as exc:
            self.report_error("Prepare", exc)
            return None
        reference, strip, bias_field = self._reference.value, self._strip.value, self._bias_field.value

        @thread_worker
        def work():
            from napari.layers import Layer

            from napari_sevnet.io import load_case
            from napari_sevnet.layers import case_layers
            from napari_sevnet.prepare import prepare_case

            prepared = prepare_case(inputs, output, reference=reference, case_id=folder.name, strip=strip, bias_field=bias_field, series=series)
            case = load_case(prepared.folder, allow_missing=True)
            return prepared, [Layer.create(data, kwargs, kind) for data, kwargs, kind in case_layers(case)]

        def opened(out):
            from napari_sevnet.layers import prepare_viewer

            self.prepared, layers = out
            prepare_viewer(self._viewer)
            for layer in layers:
                self._viewer.add_layer(layer)
            self._status.value = f"prepared {self.prepared.folder} ({self.prepared.summary})"

        def failed(exc):
            self._status.value = "not prepared"
            self.report_error("Prepare", exc)

        self._status.value = "preparing (registration, resampling, skull stripping, bias field: a few minutes)..."
        self._run.enabled = False
        return self.start_worker(work, returned=opened, errored=failed, finished=self._on_finished)

    def _on_finished(self):
        self.worker = None
        self._run.enabled = True
