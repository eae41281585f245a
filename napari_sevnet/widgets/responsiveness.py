"""Keeping napari's GUI thread live during a Segment run: what it costs and what we do about it.

Measured on a 2-core machine with software OpenGL (``make bench``):

* Adding a full-size Labels layer makes napari build its visual, its
  controls, its brush and polygon overlays, switch the selection and repaint,
  all at once: 150-250 ms per layer. :class:`LayerInserter` adds each layer
  hidden, without changing the selection and with its overlays off; the
  overlays, the visibility and finally the selection follow in later turns of
  the event loop, each a few tens of milliseconds. It relies on two private
  napari attributes (``LayerList._activate_on_insert``, ``Layer._overlays``);
  where a napari version lacks them a layer is added the ordinary way.
* A full pass of Python's garbage collector over napari + torch + MONAI
  (~570,000 objects) holds the GIL for about 0.3 s, at a moment chosen by
  the allocator, often while result layers go in. :class:`FrozenCollector`
  moves what exists when the dock opens into the collector's permanent
  generation (``gc.freeze``), so later passes only look at newer objects.
* vispy fills a table of line dash patterns (~0.13 s) inside the first
  Labels overlay ever drawn: :func:`warm_up` does it when the dock opens.
"""

from __future__ import annotations

import gc
from collections.abc import Callable

from qtpy.QtCore import QObject, QTimer

STEP_SPACING_MS = 30  # the event loop (repaints, the user) runs between two steps
REFREEZE_AFTER_MS = 1000  # after the user removes layers: one full collection, once they are done


def warm_up() -> None:
    """Fill vispy's line dash patterns now rather than inside the first Labels overlay."""
    from vispy.visuals.line.dash_atlas import DashAtlas

    DashAtlas()


class LayerInserter:
    """Adds layers to a viewer in small steps driven by a timer that dies with ``parent``."""

    def __init__(self, parent: QObject, spacing_ms: int = STEP_SPACING_MS):
        self._timer = QTimer(parent)
        self._timer.setSingleShot(True)  # re-armed after each step: the pause counts from its end
        self._timer.setInterval(spacing_ms)
        self._timer.timeout.connect(self._next)
        self._steps: list[Callable[[], None]] = []
        self._on_error: Callable[[BaseException], None] | None = None

    @property
    def busy(self) -> bool:
        return bool(self._steps)

    def insert(self, viewer, layers: list, *, on_added: Callable = None, on_done: Callable = None, on_error: Callable = None) -> None:
        """Insert ``layers`` in order; ``on_added(layer)`` right after each goes in, ``on_done()`` at the end.

        The last layer ends up selected, as with ``viewer.add_layer``. A step
        that raises stops the insertion and goes to ``on_error(exc)``.
        """
        if self.busy:
            raise RuntimeError("an insertion is already under way")
        steps: list[Callable[[], None]] = []
        reveal = []
        for layer in layers:
            overlays = [overlay for overlay in getattr(layer, "_overlays", {}).values() if overlay.visible]
            steps.append(lambda layer=layer, overlays=overlays: self._add_quietly(viewer, layer, overlays, on_added))
            reveal += [lambda overlay=overlay: setattr(overlay, "visible", True) for overlay in overlays]  # each builds a visual
            reveal.append(lambda layer=layer, visible=layer.visible: setattr(layer, "visible", visible))
        steps += reveal
        if layers:
            steps.append(lambda: self._select(viewer, layers[-1]))
        if on_done is not None:
            steps.append(on_done)
        self._steps, self._on_error = steps, on_error
        self._timer.start()

    def cancel(self) -> None:
        """Drop the steps not yet taken (a pending tick then does nothing; the timer may already be gone with its parent)."""
        self._steps = []

    def _next(self) -> None:
        if not self._steps:
            return
        step = self._steps.pop(0)
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - handed to the caller, who tells the user
            self.cancel()
            if self._on_error is None:
                raise
            self._on_error(exc)
            return
        if self._steps:
            self._timer.start()

    @staticmethod
    def _add_quietly(viewer, layer, overlays, on_added) -> None:
        """Add ``layer`` hidden, with ``overlays`` off and without selecting it."""
        for overlay in overlays:
            overlay.visible = False
        layer.visible = False
        layer_list = viewer.layers
        activate = getattr(layer_list, "_activate_on_insert", None)
        if activate is not None:
            layer_list._activate_on_insert = False
        try:
            viewer.add_layer(layer)
        finally:
            if activate is not None:
                layer_list._activate_on_insert = activate
        if on_added is not None:
            on_added(layer)

    @staticmethod
    def _select(viewer, layer) -> None:
        if layer in viewer.layers:
            viewer.layers.selection.active = layer


class FrozenCollector:
    """``gc.freeze()`` while at least one holder (a Segment dock) lives.

    Frozen objects that later become garbage are only freed by a full pass:
    the big ones are removed layers (napari layers hold reference cycles), so
    when layers leave the viewer the collector thaws, collects and freezes
    again, once the user has stopped removing. The last holder to go thaws it
    for good.
    """

    _holders = 0

    def __init__(self, viewer, parent: QObject):
        self._viewer = viewer
        self._refreeze_timer = QTimer(parent)
        self._refreeze_timer.setSingleShot(True)
        self._refreeze_timer.setInterval(REFREEZE_AFTER_MS)
        self._refreeze_timer.timeout.connect(self.refreeze)
        self._released = False
        viewer.layers.events.removed.connect(self._on_layer_removed)
        FrozenCollector._holders += 1
        self.refreeze()

    def refreeze(self) -> None:
        if self._released:
            return
        gc.unfreeze()
        gc.collect()
        gc.freeze()

    def _on_layer_removed(self, event=None) -> None:
        self._refreeze_timer.start()

    def release(self) -> None:
        """The holder is going (its timer may already be gone with it): stop listening; thaw if it was the last."""
        if self._released:
            return
        self._released = True
        self._viewer.layers.events.removed.disconnect(self._on_layer_removed)
        FrozenCollector._holders -= 1
        if FrozenCollector._holders == 0:
            gc.unfreeze()
