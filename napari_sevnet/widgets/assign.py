"""Assign sequences dock widget: open a case whose file names say nothing BraTS-like.

Choose the folder; each file is proposed for the sequence its name suggests
(:func:`napari_sevnet.assignments.guess_roles`), the user confirms or changes
the four sequences (and an optional mask), and "Open" reads the case in a
worker and adds its layers as the reader would (with the corrections kept as
recovery copies, :mod:`napari_sevnet.recovery`). The choice is remembered for
the folder, so dropping it on napari later opens it directly, until "Forget"
drops it (a wrong choice, or a folder path that names the patient).
"""

from __future__ import annotations

from magicgui.widgets import CheckBox, ComboBox, FileEdit, Label, PushButton

from napari_sevnet.assignments import check_choice
from napari_sevnet.errors import InputError
from napari_sevnet.io import MODALITY_LABELS
from napari_sevnet.widgets.base import DockWidget, chosen_path

NONE = "(none)"
ROLE_LABELS = {**MODALITY_LABELS, "seg": "Mask (optional)"}


class AssignWidget(DockWidget):
    def __init__(self, napari_viewer):
        super().__init__(napari_viewer)
        self._folder = FileEdit(label="Folder", mode="d", nullable=True, tooltip="The folder holding the case's NIfTI files")
        self._files: list[str] = []  # the chosen folder's NIfTI files
        # choices from a function: napari resets a dock's choices whenever a layer comes or goes, and a plain list
        # would go back to the one given here, losing the files listed and the user's choices
        self._roles = {role: ComboBox(label=label, choices=self._file_choices) for role, label in ROLE_LABELS.items()}
        self._relist = PushButton(text="List the folder again", tooltip="Files added to or removed from the folder since; the choices made stay")
        self._remember = CheckBox(text="Remember for this folder", value=True, tooltip="Kept in your napari-sevnet settings, not in the data folder")
        self._open = PushButton(text="Open")
        self._forget = PushButton(text="Forget this folder's choice", enabled=False,
                                  tooltip="Drop the choice remembered for this folder from your settings (a wrong one, or a folder path that names "
                                          "the patient): the folder is then read by its file names again, and its files are proposed again")
        self._status = Label(value="")
        self._status.native.setWordWrap(True)
        self.extend([self._folder, self._relist, *self._roles.values(), self._remember, self._open, self._forget, self._status])
        self._folder.changed.connect(self._on_folder)
        self._relist.changed.connect(self.relist)
        self._open.changed.connect(self.open_case)
        self._forget.changed.connect(self.forget)

    def _on_folder(self, _value=None) -> None:
        """List the folder's NIfTI files and propose a sequence for each (the remembered choice first)."""
        self._read_folder(keep=False)

    def relist(self) -> None:
        """List the folder again (a file copied in since, one removed): the choices still there stay, the rest are proposed."""
        self._read_folder(keep=True)

    def _read_folder(self, keep: bool) -> None:
        from napari_sevnet.assignments import also_named, guess_roles, nifti_files, remembered

        folder = chosen_path(self._folder)
        if folder is None or not folder.is_dir():
            return
        files = nifti_files(folder)
        before = set(self._files)
        self._files = [p.name for p in files]
        new = [name for name in self._files if name not in before]
        if keep:  # only the new files are proposed: a sequence left empty on purpose stays empty
            kept = {role: combo.value for role, combo in self._roles.items() if combo.value in self._files}
            proposal = {role: p.name for role, p in guess_roles([p for p in files if p.name in new]).items() if role not in kept}
        else:
            kept, proposal = {}, {role: p.name for role, p in (remembered(folder) or guess_roles(files)).items()}
        self._forget.enabled = remembered(folder) is not None
        chosen = {**proposal, **kept}
        for role, combo in self._roles.items():
            combo.reset_choices()
            combo.value = chosen.get(role, NONE)
        listed = f"{len(files)} NIfTI file(s)" + (f", new: {', '.join(new)}" if keep and new else "")
        guessed = ", ".join(f"{ROLE_LABELS[r]} = {chosen[r]}" for r in ROLE_LABELS if r in chosen)
        others = [f"{p.name} ({ROLE_LABELS[role]})" for p, role in also_named(files, chosen.values()).items()]
        also = f"; also named like a sequence: {', '.join(others)}" if others else ""  # a repeat, another plane: maybe the better one
        self._status.value = f"{listed}; {'chosen' if keep else 'proposed'}: {guessed or 'nothing recognised'}{also}. Check and press Open."

    def forget(self) -> None:
        """Drop the folder's remembered choice and propose its files again."""
        from napari_sevnet.assignments import forget

        folder = chosen_path(self._folder)
        if folder is None:
            return
        forgot = forget(folder)
        self._read_folder(keep=False)
        self._status.value = ("Forgot the choice remembered for this folder. " if forgot else "No choice was remembered for this folder. ") + self._status.value

    def _file_choices(self, _widget=None) -> list[str]:
        return [NONE, *self._files]

    def mapping(self) -> dict:
        folder = chosen_path(self._folder)
        if folder is None:
            raise InputError(None, "choose the folder of the case")
        return check_choice(folder, {role: folder / combo.value for role, combo in self._roles.items() if combo.value not in (None, NONE)})

    def open_case(self):
        """Read the assigned files in a worker and add the case's layers; returns the worker (None on a bad choice)."""
        from napari.qt.threading import thread_worker

        if self.worker is not None:  # pressed again while it reads: the case opens once
            return self.worker
        try:
            mapping = self.mapping()
        except InputError as exc:
            self._status.value = "not opened"
            self.report_error("Assign sequences", exc)
            return None
        from napari_sevnet.layers import layer_groups, shown_sources

        folder, remember = chosen_path(self._folder), self._remember.value
        open_groups, shown = layer_groups(self._viewer.layers), shown_sources(self._viewer.layers)

        @thread_worker
        def work():
            from napari.layers import Layer

            from napari_sevnet.assignments import remember as keep
            from napari_sevnet.io import load_case
            from napari_sevnet.layers import case_for_viewer, not_open_yet
            from napari_sevnet.recovery import recovered_layers

            case, tuples, warnings = case_for_viewer(lambda read_mask: load_case(mapping=mapping, allow_missing=True, read_mask=read_mask))
            if remember:
                keep(folder, mapping)
            layers = [Layer.create(data, kwargs, kind) for data, kwargs, kind in not_open_yet(tuples, shown)]  # opened twice: once
            recovered, message = recovered_layers(case.case_id, case.grid, case.paths, case.spacing, case.shape, open_groups)
            # corrections of this case that were neither exported nor saved came back with it: said too
            return layers + recovered, [f"{case.case_id}: {line}" for line in warnings] + ([message] if message else [])

        def add(out):
            from napari.utils.notifications import show_warning

            from napari_sevnet.layers import prepare_viewer

            layers, warnings = out
            prepare_viewer(self._viewer)
            for layer in layers:
                self._viewer.add_layer(layer)
            opened = f"opened {len(layers)} layer(s)" if layers else "open already: its layers are in the layer list"
            self._status.value = opened + (" and remembered the choice" if remember else "")
            self._forget.enabled = self._forget.enabled or remember
            for line in warnings:
                show_warning(line)

        def failed(exc):
            self._status.value = "not opened"
            self.report_error("Assign sequences", exc)

        self._status.value = "reading..."
        return self.start_worker(work, returned=add, errored=failed, finished=self._on_finished)

    def _on_finished(self):
        self.worker = None
