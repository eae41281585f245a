"""Correct dock widget: fix a result in clicks instead of brush strokes, and fill between drawn slices.

With "Click to correct" on, a click in the viewer edits the chosen region of
the selected result: a click adds missed tumour around that point, Shift+click
removes the false alarm under the cursor. The "learned" click tool
(:mod:`napari_sevnet.click_refiner`, the default) redraws the 20 mm around the
click with a small network trained on simulated corrections, from the model's
probability, the mask's edge and FLAIR / T1ce (and T2 for the whole tumour);
the "probability" tool (:mod:`napari_sevnet.correction`) adds the region the
model's probability (or, where it saw nothing, the image) shows and removes
the component under the cursor. A learned click on WT or TC always changes
the voxel clicked: where the network disagrees, it takes the piece around it
that is at least as tumour-like (adding) or at most (removing). A learned
click does not undo an earlier click of the other sign: it leaves the voxels
nearer to that click than to itself (while that click's voxel still says what
it said, so an undone click no longer counts). The learned
tool needs the model's probability and the region's guide layers (FLAIR and
T1ce, and T2 for WT); without them a click falls back to the probability
tool and says so. In 2D the voxel under
the cursor is used; in 3D, along the view ray, a click adds at the voxel
outside the region where the model was surest and a Shift+click removes at the
first voxel of the region (the surface you see). The threshold slider re-
applies the last click with another threshold (also a click that changed
nothing, whose status line says why and which way to move it), as long as that
click is still the group's last edit; the reach bounds how far one click may
spread. "Whole edge" moves the region's edge to another probability everywhere
at once (tighter or looser all around, where a rim is too wide or too narrow):
only voxels whose probability lies between the old and the new value change,
so clicks and brush strokes elsewhere stay. "Fill between slices" interpolates
the region between the last slices drawn on it with the brush, in the plane
(axial, coronal or sagittal) last drawn on (strokes undone do not count), within where the brush went (the rest of the tumour on the
slices in between stays as it was). Every click, edge move and fill is one
edit: nested with the other regions, one Ctrl+Z, counted apart from brush
strokes in the export's statistics.
"""

from __future__ import annotations

import weakref
from functools import partial

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, FloatSlider, Label, PushButton, SpinBox

from napari_sevnet.click_refiner import GUIDES as REFINER_GUIDES
from napari_sevnet.click_refiner import LEVEL as REFINER_LEVEL
from napari_sevnet.click_refiner import SEQUENCES as REFINER_SEQUENCES
from napari_sevnet.click_refiner import ClickRefiner, normalise
from napari_sevnet.correction import DEFAULT_RADIUS_MM, DEFAULT_THRESHOLD, GUIDE_SEQUENCE, IMAGE_REACH_MM, REACH_PER_DEPTH, _ball_box, fill_between, grow, move_threshold, shrink
from napari_sevnet.errors import InputError
from napari_sevnet.layers import LayerInfo, region_group, segmented_layers
from napari_sevnet.regions import REGIONS
from napari_sevnet.widgets.base import DockWidget

DRAWING_MODES = ("paint", "erase", "fill", "polygon")  # a Labels layer's modes in which a click already edits
PLANES = ("axial", "coronal", "sagittal")  # the slices across each axis of the (S-I, A-P, R-L) grid the layers are on

TOOLTIPS = {
    "clicks": "Click: add the region around the point. Shift+click: remove the false alarm under the point. Drags still pan.",
    "tool": "learned: a network trained on simulated corrections redraws the 20 mm around the click (FLAIR, T1ce, for WT also T2, and the model's probability needed)."
            " probability: grow where the model's probability is above the threshold, remove the component under the click.",
    "threshold": "Probability tool: the probability a click grows to (or, for a removal, keeps above). Learned tool: how sure the network"
                 f" must be that a voxel is tumour (default {REFINER_LEVEL:g}; lower adds more, removes less). Moving it re-applies the last click.",
    "reach": "How far (mm) one click may spread from where you clicked (a learned click at most 20 mm)."
             f" A removing click near the mask's edge reaches less: {REACH_PER_DEPTH:g} times its depth inside the mask (at least {IMAGE_REACH_MM:g} mm),"
             " so it trims the edge there rather than the tumour behind it.",
    "edge": "Move the whole region's edge to where the model's probability is this value: higher is tighter all around, lower looser."
            " Only voxels between the old and the new value change; one Ctrl+Z undoes a move.",
    "fill": "Draw the region on two or more slices with the brush, then fill the slices between them by shape interpolation"
            " (only where the brush went: the rest of the region stays).",
}


def _along_ray(points: np.ndarray, inside: np.ndarray, likelihood: np.ndarray | None, add: bool) -> tuple[int, int, int]:
    """The voxel a 3D click means, of the ray's ``points`` (nearest the camera first; ``inside``: which are in the region).

    Adding: the voxel outside the region where ``likelihood`` (the model's probability, else the guide sequence) is
    highest: the likeliest missed tumour. Removing: the first voxel of the region the ray meets, the surface under the
    cursor; the voxel the model was surest of would be the tumour behind a false alarm.
    """
    if add:
        outside = np.flatnonzero(~inside)
        if outside.size == 0:
            return tuple(int(v) for v in points[0])
        best = outside[int(np.argmax(likelihood[tuple(points[outside].T)]))] if likelihood is not None else outside[0]
        return tuple(int(v) for v in points[best])
    first = np.flatnonzero(inside)
    return tuple(int(v) for v in points[first[0] if first.size else 0])


def _apply_change(layer, change: np.ndarray, add: bool, box) -> int:
    """Add (or remove) a click's ``change`` to the layer as it is now: strokes made while the click was answered stay."""
    from napari_sevnet.editing import apply_edit

    current, change = np.asarray(layer.data[box]) > 0, change[box]
    return apply_edit(layer, current | change if add else current & ~change, "click", box=box)


def _last_edit(layer):
    """The last edit of ``layer``'s nested group (None without one): the slider may take back only the click's own edit."""
    from napari_sevnet.editing import editor_of

    editor = editor_of(layer)
    return editor.last_edit() if editor else None


class CorrectWidget(DockWidget):
    def __init__(self, napari_viewer):
        super().__init__(napari_viewer)
        self._region = ComboBox(label="Region", choices=list(REGIONS), value="WT")
        self._clicks = CheckBox(text="Click to correct", value=False, tooltip=TOOLTIPS["clicks"])
        self._tool = ComboBox(label="Click tool", choices=["learned", "probability"], value="learned", tooltip=TOOLTIPS["tool"])
        self._threshold = FloatSlider(label="Threshold", min=0.05, max=0.95, step=0.05, value=DEFAULT_THRESHOLD, tooltip=TOOLTIPS["threshold"])
        self._reach = SpinBox(label="Reach (mm)", min=2, max=100, value=int(DEFAULT_RADIUS_MM), tooltip=TOOLTIPS["reach"])
        self._edge = FloatSlider(label="Whole edge", min=0.02, max=0.995, step=0.005, value=0.5, tracking=False, tooltip=TOOLTIPS["edge"])
        self._fill = PushButton(text="Fill between slices", tooltip=TOOLTIPS["fill"])
        self._status = Label(value="")
        self._status.native.setWordWrap(True)
        self.extend([self._region, self._clicks, self._tool, self._threshold, self._reach, self._edge, self._fill, self._status])
        self._edge_moves: list = []  # (layer, threshold, the editor's record of that move), oldest first
        self.last_click: tuple | None = None  # (layer, voxel, add?, changed anything?, the group's last edit after it): what the slider re-applies
        self._earlier_clicks = weakref.WeakKeyDictionary()  # layer -> [(voxel, add?)] of its clicks, which a learned click does not undo
        self.clicks = 0
        self._refiner: ClickRefiner | None = None
        self.fallback: str | None = None  # why the last click could not be a learned one
        self._normalised: dict = {}  # sequence -> (its array, the normalised copy): normalised once per case
        self._pending = None  # the worker answering a click of the mouse
        self._clicks.changed.connect(self._on_clicks)
        self._threshold.changed.connect(self._reapply_last_click)
        self._fill.changed.connect(self.fill_between_slices)
        self._edge.changed.connect(self.move_edge)
        self._region.changed.connect(self._show_edge)
        for choice in (self._region, self._tool):  # the slider re-applies a click with the region and tool it was made with
            choice.changed.connect(self._forget_last_click)
        self.connect_while_open(self._viewer.layers.selection.events.active, self._on_selection)

    def closed(self):
        self._clicks.value = False

    # ------------------------------------------------------------------ target

    def _on_selection(self, event=None):
        active = self._viewer.layers.selection.active
        info = LayerInfo.from_layer(active) if active is not None else None
        if info is not None and info.region is not None:
            self._region.value = info.region
            self._warm_guides()
        self._show_edge()

    def _warm_guides(self) -> None:
        """Normalise the selected result's guide sequences in a worker, so the first learned click need not (0.1 s on a full case)."""
        from napari.qt.threading import thread_worker

        try:
            _, info = self.target()
        except InputError:
            return
        sources = segmented_layers(info, self._viewer.layers)
        names = {g: sources.get(g) for g in REFINER_SEQUENCES}
        pending = {g: self._viewer.layers[n].data for g, n in names.items() if n in self._viewer.layers}
        pending = {g: a for g, a in pending.items() if not self._normalised_for(g, a)}
        if not pending:
            return

        @thread_worker
        def work():
            return {g: (array, normalise(array)) for g, array in pending.items()}

        worker = work(_start_thread=False)
        worker.returned.connect(self._normalised.update)
        worker.start()

    def target(self):
        """(region layer, its result's info) of the selected result, for the chosen region."""
        active = self._viewer.layers.selection.active
        if active is None or (LayerInfo.from_layer(active) or LayerInfo()).region is None:
            raise InputError(None, "select a layer of the result to correct (its WT, TC or ET)")
        layer = region_group(self._viewer.layers, active)[self._region.value]
        return layer, LayerInfo.from_layer(layer)

    def _on_clicks(self, on: bool) -> None:
        if on and self._on_mouse not in self._viewer.mouse_drag_callbacks:
            self._viewer.mouse_drag_callbacks.append(self._on_mouse)
            active = self._viewer.layers.selection.active
            if getattr(active, "mode", None) in DRAWING_MODES:
                active.mode = "pan_zoom"  # else the first click would also paint, erase or fill
            self._warm_guides()
        elif not on and self._on_mouse in self._viewer.mouse_drag_callbacks:
            self._viewer.mouse_drag_callbacks.remove(self._on_mouse)

    # ------------------------------------------------------------------ clicks

    def _on_mouse(self, viewer, event):
        """A click (not a drag) edits; Shift+click removes. Not while the selected layer draws: the click is its brush's."""
        active = viewer.layers.selection.active
        if getattr(active, "mode", None) in DRAWING_MODES:
            self._status.value = (f"{active.name} is in {active.mode} mode, so the click was napari's {active.mode}: "
                                  "switch the layer to pan/zoom to correct by clicks")
            return
        start = event.position
        yield
        while event.type == "mouse_move":
            yield
        if np.allclose(event.position, start, atol=1e-6):
            self.click(event.position, add="Shift" not in event.modifiers, view_direction=event.view_direction,
                       dims_displayed=event.dims_displayed, in_background=True)

    @property
    def busy(self) -> bool:
        """Whether a click of the mouse is still being answered (its network runs in a worker)."""
        return self._pending is not None

    def click(self, world_position, *, add: bool = True, view_direction=None, dims_displayed=None, in_background: bool = False) -> int:
        """Apply a click at a world position; returns how many voxels changed (0 and a message when it cannot).

        ``in_background`` (a click of the mouse): a learned click's network runs in a worker, so the viewer stays live on a
        full case (it took 0.1-0.2 s of the GUI thread on a slow day), and the click is applied when it returns
        (:attr:`busy` until then; the return value is then 0, the status line says what it did).
        """
        if self.busy:
            self._status.value = "still answering the last click: click again once it shows"
            return 0
        try:
            layer, info = self.target()
            voxel = self._voxel(layer, info, world_position, view_direction, dims_displayed, add)
        except InputError as exc:
            self.report_error("Correct", exc)
            return 0
        inside, region = bool(np.asarray(layer.data)[voxel] > 0), self._region.value

        def done(changed: int) -> int:
            self._earlier_clicks.setdefault(layer, []).append((voxel, add))
            self.last_click = (layer, voxel, add, changed > 0, _last_edit(layer))
            self.clicks += 1
            self._status.value = f"click {self.clicks}: {'added' if add else 'removed'} {changed} voxel(s) of {region} at {voxel}" + (
                f"; {self.fallback}" if self.fallback else "") + ("" if changed else "; " + self._why_nothing(add, inside))
            return changed

        changed = self._apply_click(layer, info, voxel, add, self._threshold.value, record=True, then=done if in_background else None)
        return 0 if changed is None else done(changed)

    def _why_nothing(self, add: bool, inside: bool) -> str:
        """What to do after a click that changed nothing (the slider re-applies it, so it can still act)."""
        region = self._region.value
        if add and inside:
            return f"the voxel is {region} already: click outside the mask to add, Shift+click to remove"
        if not add and not inside:
            return f"the voxel is not {region}: Shift+click on the mask to remove, click to add"
        tool = "the network" if self._tool.value == "learned" and not self.fallback else "the model's probability"
        return (f"{tool} does not call this {'missed tumour' if add else 'a false alarm'} at threshold {self._threshold.value:.2f}: "
                f"move the Threshold slider {'down to add' if add else 'up to remove'} more, or use the brush")

    def _voxel(self, layer, info, world_position, view_direction, dims_displayed, add: bool) -> tuple[int, int, int]:
        if view_direction is not None and dims_displayed is not None and len(dims_displayed) == 3:
            start, end = layer.get_ray_intersections(list(world_position), list(view_direction), list(dims_displayed), world=True)
            if start is None or end is None:
                raise InputError(None, "the click missed the volume")
            points = np.linspace(start, end, int(np.linalg.norm(np.subtract(end, start))) + 2).round().astype(int)
            points = points[np.all((points >= 0) & (points < layer.data.shape), axis=1)]
            if len(points) == 0:
                raise InputError(None, "the click missed the volume")
            likelihood = self._probability(info)
            return _along_ray(points, np.asarray(layer.data)[tuple(points.T)] > 0, likelihood if likelihood is not None else self._guide(info), add)
        voxel = np.round(layer.world_to_data(world_position)).astype(int)
        if np.any(voxel < 0) or np.any(voxel >= layer.data.shape):
            raise InputError(None, "the click is outside the scan")
        return tuple(int(v) for v in voxel)

    def _probability(self, info) -> np.ndarray | None:
        """The region's stored (float16) probability; the tools convert the box they read (converting it all: 30 ms a click)."""
        return info.probabilities[REGIONS.index(self._region.value)] if info.probabilities is not None else None

    def _guide(self, info) -> np.ndarray | None:
        name = segmented_layers(info, self._viewer.layers).get(GUIDE_SEQUENCE[self._region.value])
        return np.asarray(self._viewer.layers[name].data) if name in self._viewer.layers else None

    def _normalised_for(self, sequence: str, array) -> bool:
        """Whether the cache holds ``sequence`` normalised from this very ``array`` (a new case's layer is another array)."""
        return sequence in self._normalised and self._normalised[sequence][0] is array

    def _learned_inputs(self, info) -> tuple[ClickRefiner, dict] | str:
        """(the refiner, the region's guide sequences normalised) for a learned click, or why it cannot run."""
        if info.probabilities is None:
            return "this result kept no model probability"
        sources = segmented_layers(info, self._viewer.layers)
        names = {g: sources.get(g) for g in REFINER_GUIDES[self._region.value]}
        missing = [g for g, n in names.items() if n not in self._viewer.layers]
        if missing:
            return f"no {' or '.join(m.upper() for m in missing)} layer open"
        if self._refiner is None:
            try:
                self._refiner = ClickRefiner.load()
            except InputError as exc:
                return str(exc)
        guides = {}
        for g, n in names.items():
            array = self._viewer.layers[n].data
            if not self._normalised_for(g, array):
                self._normalised[g] = (array, normalise(array))
            guides[g] = self._normalised[g][1]
        return self._refiner, guides

    def _apply_click(self, layer, info, voxel, add: bool, threshold: float, *, record: bool, then=None) -> int | None:
        """Apply one click; the first time (``record``) its threshold may follow the click and is shown on the slider.

        ``then``: run a learned click's network in a worker and, when it returns, apply the click and call ``then`` with
        the voxels changed (returns None); other clicks are applied at once (and ``then`` is not called).
        """
        from napari_sevnet.editing import apply_edit

        probability = self._probability(info)
        spacing = tuple(float(v) for v in layer.scale)
        current = np.asarray(layer.data) > 0
        ball_box = _ball_box(current.shape, voxel, self._reach.value, spacing)[0]  # no click tool reaches past it
        self.fallback = None
        if self._tool.value == "learned":
            learned = self._learned_inputs(info)
            if isinstance(learned, str):
                self.fallback = f"learned click unavailable ({learned}): used the probability tool"
            else:
                refiner, guides = learned
                used = REFINER_LEVEL if record else threshold
                if record:
                    with self._threshold.changed.blocked():
                        self._threshold.value = used
                answer = partial(refiner.click, self._region.value, current, voxel, add, probability, guides, spacing, level=used,
                                 reach_mm=self._reach.value, earlier=tuple(self._earlier_clicks.get(layer, ())))
                if then is None:
                    return _apply_change(layer, answer(), add, ball_box)
                self._answer_in_background(answer, lambda change: then(_apply_change(layer, change, add, ball_box)))
                return None
        if add:
            if probability is None:
                probability = np.zeros(layer.data.shape, np.float32)  # no model output kept: grow on the image
            region, used = grow(probability, voxel, image=self._guide(info), threshold=threshold, follow=record, max_radius_mm=self._reach.value, spacing=spacing)
            wanted = current | region
        else:
            region, used = shrink(current, voxel, probability, image=self._guide(info), keep_above=None if record else threshold,
                                  max_radius_mm=self._reach.value, spacing=spacing)
            wanted = current & ~region
        if record:
            with self._threshold.changed.blocked():  # show what the click used, without re-applying it
                self._threshold.value = float(np.clip(used, self._threshold.min, self._threshold.max))
        return apply_edit(layer, wanted, "click", box=ball_box)

    def _answer_in_background(self, answer, apply) -> None:
        """Run ``answer`` in a worker and ``apply`` its result on the GUI thread; :attr:`busy` until both are done."""
        from napari.qt.threading import thread_worker

        worker = thread_worker(answer)(_start_thread=False)
        worker.returned.connect(apply)
        worker.errored.connect(lambda exc: self.report_error("Correct", exc))
        worker.finished.connect(lambda: setattr(self, "_pending", None))
        self._pending = worker
        worker.start()

    def _forget_last_click(self, _value=None) -> None:
        self.last_click = None

    def _reapply_last_click(self, threshold: float) -> None:
        """The slider moved: undo the last click and apply it again at the slider's threshold (still one undo step)."""
        if self.last_click is None or self.busy:  # busy: the last click is the one still being answered
            return
        layer, voxel, add, edited, mark = self.last_click
        if layer not in self._viewer.layers:
            self.last_click = None
            return
        if _last_edit(layer) is not mark:  # undone, or edited since: taking back "the last edit" would take the user's
            self.last_click = None
            self._status.value = f"the slider re-applies the last click only while it is the last edit of {layer.name}: click again"
            return
        if edited:  # a click that changed nothing left no undo step to take back
            from napari_sevnet.editing import editor_of

            editor = editor_of(layer)
            editor.retract() if editor is not None else layer.undo()  # replaced, not taken back: the export counts one click
        changed = self._apply_click(layer, LayerInfo.from_layer(layer), voxel, add, threshold, record=False)
        self.last_click = (layer, voxel, add, changed > 0, _last_edit(layer))
        self._status.value = f"click {self.clicks} again at threshold {threshold:.2f}: {changed} voxel(s)"

    # ------------------------------------------------------------------ whole edge

    def edge_threshold(self, layer, info) -> float:
        """The probability the region's edge is at now: the last move of it still in effect, else where the model cut it."""
        from napari_sevnet.editing import editor_of

        editor = editor_of(layer)
        for moved, threshold, edit in reversed(self._edge_moves):
            if moved is layer and (editor is None or edit is None or editor.holds(edit)):
                return threshold
        return float((info.thresholds or {}).get(self._region.value, 0.5))

    def _show_edge(self, _event=None) -> None:
        """Show where the chosen region's edge is, without moving it."""
        try:
            layer, info = self.target()
        except InputError:
            return
        with self._edge.changed.blocked():
            self._edge.value = float(np.clip(self.edge_threshold(layer, info), self._edge.min, self._edge.max))

    def move_edge(self, threshold: float) -> int:
        """Move the chosen region's whole edge to ``threshold`` as one edit; returns the voxels changed."""
        from napari_sevnet.editing import apply_edit

        try:
            layer, info = self.target()
            probability = self._probability(info)
            if probability is None:
                raise InputError(None, f"{layer.name} keeps no model probabilities to move its edge along (a result of the Segment dock does)")
        except InputError as exc:
            self.report_error("Whole edge", exc)
            return 0
        old = self.edge_threshold(layer, info)
        changed = apply_edit(layer, move_threshold(np.asarray(layer.data) > 0, np.asarray(probability, np.float32), old, threshold), "edge")
        # the move holds while its edit (or, if it changed nothing, the edit before it) is not undone
        self._edge_moves = [m for m in self._edge_moves if m[0] in self._viewer.layers] + [(layer, threshold, _last_edit(layer))]
        self._status.value = f"{self._region.value} edge moved from {old:.2f} to {threshold:.2f}: {changed} voxel(s)"
        return changed

    # ------------------------------------------------------------------ fill between slices

    def fill_between_slices(self) -> int:
        """Interpolate the chosen region between the slices last drawn on it, in the plane (axial, coronal, sagittal) last drawn on; returns the voxels changed."""
        from napari_sevnet.editing import apply_edit, editor_of

        try:
            layer, _ = self.target()
            editor = editor_of(layer)
            axis, areas = editor.drawn_areas(self._region.value) if editor is not None else (0, {})
            drawn = sorted(areas)
            if len(drawn) < 2:
                raise InputError(None, f"draw {self._region.value} on at least two slices of one plane (axial, coronal or sagittal) with the brush first")
        except InputError as exc:
            self.report_error("Fill between slices", exc)
            return 0
        current = np.asarray(layer.data) > 0
        filled = fill_between(current, drawn, axis=axis, spacing=tuple(float(v) for v in layer.scale), areas=areas)
        changed = apply_edit(layer, filled, "fill")
        self._status.value = f"filled {self._region.value} between {PLANES[axis]} slices {drawn[0]} and {drawn[-1]} where the brush went: {changed} voxel(s)"
        editor.drawn[self._region.value].clear()
        return changed
