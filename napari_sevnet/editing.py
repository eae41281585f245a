"""Editing WT/TC/ET in napari: the three layers stay nested through every edit, and one edit is one undo step.

A result is three Labels layers (WT, TC, ET) that a clinician paints, erases
and fills with napari's own tools. :class:`NestedEditor` watches them: after
each edit (a brush stroke, an erase, a fill: one napari history item) it
applies the nesting rule of :mod:`napari_sevnet.regions` inside the edited box

* painting a region adds it to every region around it (painting ET grows TC
  and WT; painting TC grows WT),
* erasing a region erases every region inside it (erasing WT erases TC and
  ET there; erasing TC erases ET there),

and records which layers the edit changed; Ctrl+Z and Ctrl+Shift+Z on any of
the three undo or redo that whole edit in all three. It also tallies the edits
by the tool that made them (the export's statistics): an undone edit leaves
the tally of edits in effect for that of edits taken back. A region layer paints 1 only: its
selected label is held at 1 (napari's "new label" button would otherwise
paint an invisible 2 that still counts), and any non-zero value is drawn in
the region's colour and counted as the region (what is seen is what is
exported). A model's result is made of :class:`RegionLabels`, whose
``undo`` / ``redo`` methods act on the group too; masks read with a case are
napari's own Labels, tied together once they are in a viewer
(:func:`keep_nested`). Everything here works on napari's layer models without Qt.
"""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import Callable

import numpy as np
from app_model.types import KeyCode, KeyMod
from napari.layers import Labels

from napari_sevnet.regions import REGIONS

UNDO_KEY = KeyMod.CtrlCmd | KeyCode.KeyZ  # napari's own keys for a Labels layer's undo and redo
REDO_KEY = KeyMod.CtrlCmd | KeyMod.Shift | KeyCode.KeyZ
DRAWN_SLICES = 8  # the most recent single-slice edits per region that fill between slices remembers
_EDITORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # layer -> the editor of its group


class RegionLabels(Labels):
    """A WT, TC or ET layer of one result: undo and redo act on the last edit of the whole group."""

    def undo(self) -> None:
        editor = _EDITORS.get(self)
        editor.undo() if editor is not None else super().undo()

    def redo(self) -> None:
        editor = _EDITORS.get(self)
        editor.redo() if editor is not None else super().redo()

    @property
    def _type_string(self) -> str:
        # napari names a layer's type after its class; "regionlabels" had no icon in the layer list, no writer
        # (File > Save wrote nothing for a model's result) and no Duplicate: to napari it is a Labels layer
        return "labels"

    def _calculate_contour(self, labels, *args, **kwargs):
        # napari warns on every 3D redraw of a layer with outlines, before the plugin's restyle fills them for 3D
        # (display.follow_selection); napari has no outlines in 3D to draw, so nothing is lost by passing quietly
        return None if labels.ndim > 2 else super()._calculate_contour(labels, *args, **kwargs)


class Edit:
    """One edit of a group: the history items it added per layer, and the tool and voxel count it is tallied under."""

    def __init__(self, items: dict[int, int], source: str, voxels: int):
        self.items = items  # layer index -> history items the edit added to that layer
        self.source = source
        self.voxels = voxels


class NestedEditor:
    """Keeps one group's WT/TC/ET layers nested through each edit and undoes an edit in all three at once.

    ``on_change()`` callbacks run after every edit, undo and redo (the volumes follow).
    """

    def __init__(self, layers: dict[str, Labels]):
        self.layers = [layers[r] for r in REGIONS]
        limit = min(getattr(layer, "_history_limit", 2000) for layer in self.layers)
        self._undo: deque[Edit] = deque(maxlen=limit)
        self._redo: deque[Edit] = deque(maxlen=limit)
        self._busy = False
        self.on_change: list[Callable[[], None]] = []
        self.source = "brush"  # what the next edit is: napari's tools, or a napari-sevnet tool that says so (a click, a fill)
        # source -> {"edits": in effect, "voxels": they changed, "undone": edits taken back}: the export's statistics
        self.counts: dict[str, dict[str, int]] = {}
        # region -> {(axis of the plane, slice): [(in-plane box, undo entry) of its recent single-slice edits there]}, oldest first
        self.drawn: dict[str, dict[tuple[int, int], list]] = {r: {} for r in REGIONS}
        for index, layer in enumerate(self.layers):
            _EDITORS[layer] = self
            layer.bind_key(UNDO_KEY, lambda _layer: self.undo(), overwrite=True)
            layer.bind_key(REDO_KEY, lambda _layer: self.redo(), overwrite=True)
            layer.events.paint.connect(lambda event, index=index: self._on_paint(index, event))
            layer.events.selected_label.connect(lambda _event, layer=layer: self._only_label_one(layer))

    # ------------------------------------------------------------------ edits

    def _on_paint(self, index: int, event) -> None:
        if self._busy:  # our own writes and replays
            return
        self._busy = True
        try:
            layer = self.layers[index]
            box = _bounding_box(event.value, layer.data.shape)
            if box is not None:
                entry = Edit(self._apply_rule(index, box, _values_after(layer, box, event.value)), self.source, _changed_voxels(event.value))
                self._tally(entry, in_effect=1)
                self._undo.append(entry)
                self._redo.clear()
                axis = _slice_axis(layer, box)
                if axis is not None:
                    self._remember_drawn(REGIONS[index], axis, box, entry)
        finally:
            self._busy = False
        self._changed()

    def _apply_rule(self, index: int, box: tuple[slice, ...], edited: np.ndarray) -> dict[int, int]:
        """Nest the group inside ``box`` given the edited layer's new values there; which layers got history items."""
        added = {index: 1}
        inside = edited > 0
        for k, other in enumerate(self.layers):
            if k == index:
                continue
            current = np.asarray(other.data[box]) > 0
            wanted = (current | inside) if k < index else (current & inside)  # outer regions grow, inner ones shrink
            if _write(other, box, wanted != current, wanted):
                added[k] = 1
        return added

    def _tally(self, edit: Edit, in_effect: int, undone: int = 0) -> None:
        """Move ``edit`` into (+1) or out of (-1) the edits in effect of its tool, and ``undone`` into or out of those taken back."""
        tally = self.counts.setdefault(edit.source, {"edits": 0, "voxels": 0, "undone": 0})
        tally["edits"] += in_effect
        tally["voxels"] += in_effect * edit.voxels
        tally["undone"] += undone

    def _remember_drawn(self, region: str, axis: int, box: tuple[slice, ...], entry) -> None:
        """Remember a single-slice edit's plane and slice, in-plane box and undo entry, for fill between slices."""
        strokes, key = self.drawn[region], (axis, box[axis].start)
        strokes[key] = strokes.pop(key, []) + [(tuple(b for i, b in enumerate(box) if i != axis), entry)]  # the latest last
        while len(strokes) > DRAWN_SLICES:
            del strokes[next(iter(strokes))]

    def drawn_areas(self, region: str) -> tuple[int, dict[int, tuple[slice, slice]]]:
        """(the axis of the plane ``region`` was last drawn on, its slice -> in-plane box of the recent single-slice edits
        there that are not undone): a clinician drawing on coronal slices fills between coronal slices."""
        held = {key: [b for b, entry in strokes if self.holds(entry)] for key, strokes in self.drawn[region].items()}
        held = {key: boxes for key, boxes in held.items() if boxes}
        if not held:
            return 0, {}
        axis = next(reversed(held))[0]
        return axis, {index: tuple(slice(min(b[i].start for b in boxes), max(b[i].stop for b in boxes)) for i in range(2))
                      for (on, index), boxes in held.items() if on == axis}

    def _only_label_one(self, layer: RegionLabels) -> None:
        if layer.selected_label not in (0, 1):
            layer.selected_label = 1

    # ------------------------------------------------------------------ history

    def last_edit(self) -> dict | None:
        """The group's last edit (the same object through undo and redo), to ask later whether it still :meth:`holds`."""
        return self._undo[-1] if self._undo else None

    def holds(self, edit) -> bool:
        """Whether ``edit`` is in effect: made and not undone."""
        return any(entry is edit for entry in self._undo)

    def undo(self) -> None:
        """Undo the group's last edit in every layer it changed."""
        self._replay(self._undo, Labels.undo, self._redo, in_effect=-1, undone=1)

    def redo(self) -> None:
        self._replay(self._redo, Labels.redo, self._undo, in_effect=1, undone=-1)

    def retract(self) -> None:
        """Undo the last edit to make it again differently (a click re-applied at another threshold): not counted as taken back,
        and not redoable (the edit that replaces it would clear the redo history anyway)."""
        self._replay(self._undo, Labels.undo, None, in_effect=-1, undone=0)

    def _replay(self, source: deque, method: Callable, target: deque | None, in_effect: int, undone: int) -> None:
        """Run napari's own undo (or redo) of each layer the last edit of ``source`` changed, once per history item it added;
        move the edit to ``target`` and its tally by ``in_effect`` and ``undone``."""
        if not source:
            return
        entry = source.pop()
        self._busy = True
        try:
            for k, items in entry.items.items():
                for _ in range(items):
                    method(self.layers[k])
        finally:
            self._busy = False
        if target is not None:
            target.append(entry)
        self._tally(entry, in_effect, undone)
        self._changed()

    def _changed(self) -> None:
        for callback in list(self.on_change):
            callback()


def _slice_axis(layer, box: tuple[slice, ...]) -> int | None:
    """The axis of the slice a stroke was drawn on (its box is one voxel thick there), or None for a stroke across slices;
    a dot thin along several axes is on the plane the layer shows."""
    thin = [axis for axis, s in enumerate(box) if s.stop - s.start == 1]
    if len(thin) == 1:
        return thin[0]
    shown_across = tuple(getattr(getattr(layer, "_slice_input", None), "not_displayed", ()))
    return shown_across[0] if len(shown_across) == 1 and shown_across[0] in thin else None


def _bounding_box(history_item, shape) -> tuple[slice, ...] | None:
    """The box around every voxel a napari history item touched."""
    lo, hi = np.array(shape), np.zeros(len(shape), dtype=int)
    for atom in history_item or ():
        if hasattr(atom, "slice_key"):  # a masked paint / fill
            starts = [s.start or 0 for s in atom.slice_key]
            stops = [s.stop if s.stop is not None else n for s, n in zip(atom.slice_key, shape)]
        else:  # (indices, old values, new values) from data_setitem
            indices = atom[0]
            if len(indices) == 0 or np.size(indices[0]) == 0:
                continue
            starts = [int(np.min(i)) for i in indices]
            stops = [int(np.max(i)) + 1 for i in indices]
        lo, hi = np.minimum(lo, starts), np.maximum(hi, stops)
    if np.any(hi <= lo):
        return None
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def _changed_voxels(history_item) -> int:
    """How many voxels a napari history item changed (its atoms record only the changed ones)."""
    total = 0
    for atom in history_item or ():
        if hasattr(atom, "slice_key"):
            total += int(atom.mask.sum()) if atom.mask is not None else int(np.prod([s.stop - s.start for s in atom.slice_key]))
        elif len(atom[0]):
            total += int(np.size(atom[0][0]))
    return total


def _values_after(layer: Labels, box: tuple[slice, ...], history_item) -> np.ndarray:
    """The edited layer's values inside ``box`` once the history item is applied.

    napari records an edit before it writes it (a click, a fill, ``data_setitem``),
    so the data may not hold it yet when the paint event arrives.
    """
    values = np.array(layer.data[box])
    for atom in history_item:
        if hasattr(atom, "slice_key"):
            local = tuple(slice(s.start - b.start, s.stop - b.start) for s, b in zip(atom.slice_key, box))
            if atom.mask is None:
                values[local] = atom.new_value
            else:
                part = values[local]
                part[atom.mask] = atom.new_value
        else:
            indices, _, new = atom
            if len(indices) and np.size(indices[0]):
                values[tuple(np.asarray(i) - b.start for i, b in zip(indices, box))] = new
    return values


def _write(layer: RegionLabels, box: tuple[slice, ...], where: np.ndarray, values) -> bool:
    """Set ``layer`` to ``values`` where ``where`` inside ``box``, as one history item; whether anything changed."""
    positions = np.nonzero(where)
    if positions[0].size == 0:
        return False
    indices = tuple(p + s.start for p, s in zip(positions, box))
    new = np.asarray(values)[positions] if np.ndim(values) else values
    with layer.block_history():
        layer.data_setitem(indices, np.asarray(new, dtype=layer.data.dtype) if np.ndim(new) else new)
    return True


def nested_region_layers(regions: np.ndarray, **kwargs_per_region) -> list[RegionLabels]:
    """Three RegionLabels (WT, TC, ET) from (3, Z, Y, X) regions, tied by one NestedEditor.

    ``kwargs_per_region``: region -> keyword arguments of that layer (name, scale, colormap, metadata, ...).
    """
    layers = {r: RegionLabels(regions[i].astype(np.uint8), **kwargs_per_region[r]) for i, r in enumerate(REGIONS)}
    NestedEditor(layers)
    return [layers[r] for r in REGIONS]


def editor_of(layer) -> NestedEditor | None:
    return _EDITORS.get(layer)


def keep_nested(viewer) -> None:
    """Tie together, as they arrive in ``viewer``, the WT/TC/ET layers that have no editor yet (masks read with a case)."""
    from napari_sevnet.layers import LayerInfo

    def attach(_event=None):
        groups: dict[str, dict] = {}
        for layer in viewer.layers:
            info = LayerInfo.from_layer(layer)
            if isinstance(layer, Labels) and info is not None and info.region in REGIONS and layer not in _EDITORS:
                groups.setdefault(info.group, {})[info.region] = layer
        for group in groups.values():
            if len(group) == len(REGIONS):
                NestedEditor(group)

    if viewer not in _WATCHED:
        _WATCHED.add(viewer)
        viewer.layers.events.inserted.connect(attach)
    attach()


_WATCHED: weakref.WeakSet = weakref.WeakSet()


def apply_edit(layer: Labels, wanted: np.ndarray, source: str, box: tuple[slice, ...] | None = None) -> int:
    """Make ``layer`` hold the bool mask ``wanted``, as one edit from ``source`` ('click', 'edge', 'fill'): nested, one undo step.

    ``box``: where ``wanted`` may differ from the layer (a click's ball); only there is compared (a full case: 20 ms).
    ``wanted`` may then be only its part inside ``box``, so a click never builds a full-volume mask on the GUI thread.
    Returns how many voxels changed (0: nothing was recorded, so nothing to undo).
    """
    editor = _EDITORS.get(layer)
    wanted = np.asarray(wanted, bool)
    box = box or (slice(None),) * wanted.ndim
    inside = wanted if wanted.shape != layer.data.shape else wanted[box]
    local = np.nonzero((np.asarray(layer.data[box]) > 0) != inside)
    positions = tuple(index + (b.start or 0) for index, b in zip(local, box))
    if positions[0].size == 0:
        return 0
    if editor is not None:
        editor.source = source
    try:
        with layer.block_history():
            layer.data_setitem(positions, inside[local].astype(layer.data.dtype))
    finally:
        if editor is not None:
            editor.source = "brush"
    return int(positions[0].size)
