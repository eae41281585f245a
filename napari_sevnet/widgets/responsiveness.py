"""Keeping napari's GUI thread live during a Segment run: what it costs and what we do about it.

Measured on a 2-core machine with software OpenGL (``make bench``):

* Every repaint of a window that holds napari's OpenGL canvas is composed
  through OpenGL: 10-30 ms with software rendering on an idle machine, up to
  90 ms while the model keeps both cores and the memory bus busy.
* Adding a full-size Labels layer makes napari build its visual, its
  controls, its brush and polygon overlays, switch the selection and repaint,
  all at once: 150-250 ms per layer. :class:`LayerInserter` adds each layer
  hidden, without changing the selection and with its overlays off; the
  overlays, the visibility and finally the selection follow in later turns of
  the event loop (40-70 ms each), and the repaint each step causes is held
  for a turn of its own. It relies on two private napari attributes
  (``LayerList._activate_on_insert``, ``Layer._overlays``); where a napari
  version lacks them a layer is added the ordinary way.
* A full pass of Python's garbage collector over napari + torch + MONAI
  (~570,000 objects) holds the GIL for about 0.3 s, at a moment chosen by
  the allocator, often while result layers go in. :class:`FrozenCollector`
  moves what exists when the dock opens into the collector's permanent
  generation (``gc.freeze``), so later passes only look at newer objects,
  and freezes each run's survivors once its layers are in.
* vispy fills a table of line dash patterns (~0.13 s) inside the first
  Labels overlay ever drawn: :func:`warm_up` does it when the dock opens.
* napari's own progress bar (``napari.utils.progress``) processes events
  inside every update, and its status-bar spinner repaints the window 30
  times a second while any bar is open. The Segment dock shows progress in
  its own bar; the model runs in a thread of its own at a lower CPU priority
  (:func:`run_at_low_priority`) and pauses while each message is drawn
  (:class:`PausingProgress`).

What is local and cheap is always on: the dock's own progress bar, the
pauses, the warm-up, the model's low-priority thread (it ends with the run,
so no pooled thread keeps the priority). What changes napari's whole process
(freezing the garbage collector, holding the main window's repaints) is on
only where it was measured to be needed, software OpenGL, or where the user
asks for it: ``SEVNET_GUI_WORKAROUNDS=on|off`` (default ``auto``).
"""

from __future__ import annotations

import gc
import os
import sys
import threading
from collections.abc import Callable, Sequence
from functools import lru_cache

from qtpy.QtCore import QObject, QTimer
from qtpy.QtWidgets import QWidget

STEP_SPACING_MS = 30  # the event loop (repaints, the user) runs between two steps
REFREEZE_AFTER_MS = 1000  # after the user removes layers: one full collection, once they are done
PROGRESS_PAUSE_LIMIT_S = 0.5  # a worker never waits longer for a redraw (the dock may be gone)
BACKGROUND_NICENESS = 10  # CPU share against a nice-0 thread: about 1/10
SOFTWARE_RENDERERS = ("llvmpipe", "softpipe", "swrast", "software rasterizer")


def gui_workarounds() -> bool:
    """Whether the process-wide workarounds are on: ``SEVNET_GUI_WORKAROUNDS`` on / off, else under software OpenGL."""
    setting = os.environ.get("SEVNET_GUI_WORKAROUNDS", "auto").strip().lower()
    if setting in ("on", "1", "true", "yes"):
        return True
    if setting in ("off", "0", "false", "no"):
        return False
    return software_opengl()


@lru_cache(maxsize=1)
def software_opengl() -> bool:
    """Whether napari draws with a software OpenGL renderer (Mesa llvmpipe and the like)."""
    try:
        from napari._vispy.utils.gl import _opengl_context  # private: uses the viewer's canvas when one exists
        from vispy.gloo import gl

        with _opengl_context():
            renderer = str(gl.glGetParameter(gl.GL_RENDERER)).lower()
    except Exception:  # noqa: BLE001 - no context, no napari internals: assume hardware
        return False
    return any(name in renderer for name in SOFTWARE_RENDERERS)


class PausingProgress:
    """A worker's progress callback that waits until the GUI has drawn the message.

    With software OpenGL every widget repaint recomposes the whole window;
    while the model keeps the cores and the memory bus busy that takes two to
    four times longer than on an idle machine. Pausing the model for the
    redraw (a few tens of ms per message, a dozen messages per case) keeps
    each one short. Call it from the worker; call :meth:`drawn` in the slot
    that shows the message. It never waits longer than ``limit_s``.
    """

    def __init__(self, signal, limit_s: float = PROGRESS_PAUSE_LIMIT_S):
        self._signal = signal
        self._limit_s = limit_s
        self._drawn = threading.Event()

    def __call__(self, fraction: float, message: str) -> None:
        self._drawn.clear()
        self._signal.emit(fraction, message)
        self._drawn.wait(self._limit_s)

    def drawn(self) -> None:
        """GUI thread: release the worker once the repaint this slot posted has run (a timer fires after it)."""
        QTimer.singleShot(1, self._drawn.set)

    def release(self) -> None:
        self._drawn.set()


def run_at_low_priority(function: Callable, niceness: int = BACKGROUND_NICENESS):
    """Call ``function()`` in a thread of its own at a lower CPU priority (Linux) and return its result.

    The GUI thread, the software OpenGL renderer and the X server then get a
    core as soon as they need one, and the model (torch's OpenMP threads are
    started from this thread and inherit its priority) still gets every core
    the GUI leaves idle. The thread ends with the call: napari's pooled worker
    threads, which other plugins reuse, keep their priority.
    """
    outcome: dict = {}

    def target():
        outcome["lowered"] = _lower_priority(niceness)
        try:
            outcome["value"] = function()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="sevnet-model", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _lower_priority(niceness: int) -> bool:
    """Lower the calling thread's priority (per thread on Linux); whether it could."""
    if not sys.platform.startswith("linux"):
        return False
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, max(os.getpriority(os.PRIO_PROCESS, tid), niceness))
    except OSError:
        return False
    return True


def warm_up() -> None:
    """Fill vispy's line dash patterns now rather than inside the first Labels overlay."""
    from vispy.visuals.line.dash_atlas import DashAtlas

    DashAtlas()


class LayerInserter:
    """Adds layers to a viewer in small steps driven by a timer that dies with ``parent``."""

    def __init__(self, parent: QWidget, spacing_ms: int = STEP_SPACING_MS, hold_repaints: bool = True):
        self._parent = parent
        self._hold_repaints = hold_repaints  # holds napari's main window: only where needed (gui_workarounds)
        self._held: QWidget | None = None  # the top-level window whose repaint waits for the next tick
        self._timer = QTimer(parent)
        self._timer.setSingleShot(True)  # re-armed after each step: the pause counts from its end
        self._timer.setInterval(spacing_ms)
        self._timer.timeout.connect(self._next)
        self._steps: list[Callable[[], None]] = []
        self._on_error: Callable[[BaseException], None] | None = None

    @property
    def busy(self) -> bool:
        return bool(self._steps)

    def insert(self, viewer, layers: list, *, on_added: Callable = None, then: Sequence[Callable] = (), on_done: Callable = None, on_error: Callable = None) -> None:
        """Insert ``layers`` in order; ``on_added(layer)`` right after each goes in, ``on_done()`` at the end.

        ``then``: more work for after the layers are in, each in a turn of its own before ``on_done``.

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
        steps += then
        if on_done is not None:
            steps.append(on_done)
        self._steps, self._on_error = steps, on_error
        self._timer.start()

    def cancel(self) -> None:
        """Drop the steps not yet taken (a pending tick then does nothing; the timer may already be gone with its parent)."""
        self._steps = []
        self._repaint()

    def _next(self) -> None:
        if self._repaint():  # the previous step's repaint takes a turn of its own
            if self._steps:
                self._timer.start()
            return
        if not self._steps:
            return
        step = self._steps.pop(0)
        if self._steps:  # the last step repaints in its own turn: an insertion never ends with the window held
            self._hold_repaint()
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - handed to the caller, who tells the user
            self.cancel()
            if self._on_error is None:
                raise
            self._on_error(exc)
            return
        if self._steps or self._held is not None:
            self._timer.start()

    def _hold_repaint(self) -> None:
        """Keep the window from repainting until the next tick: napari's work and the repaint it causes
        (the whole window, through OpenGL) would otherwise share one turn of the event loop."""
        window = self._parent.window()
        if self._hold_repaints and window.updatesEnabled():
            window.setUpdatesEnabled(False)
            self._held = window

    def _repaint(self) -> bool:
        """Let the window repaint if a step held it; whether it had."""
        window, self._held = self._held, None
        if window is None:
            return False
        try:
            window.setUpdatesEnabled(True)
        except RuntimeError:  # the window is already gone
            pass
        return True

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

    def freeze_survivors(self) -> None:
        """After a run: collect the objects made since the last freeze and freeze what survives (the run's
        layers among them), at a moment we choose; otherwise the allocator starts that full pass itself,
        by the fourth run, in the middle of inserting layers (60 ms)."""
        if self._released:
            return
        gc.collect()  # frozen objects are not scanned: this pass only sees what is new
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
