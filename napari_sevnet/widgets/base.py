"""What every napari-sevnet dock shares: the viewer, its events, background work and messages.

A dock subclasses :class:`DockWidget` (a magicgui ``Container``, as napari's
plugin template has it), gathers its controls, and hands the work to the
library through :meth:`DockWidget.start_worker`. The base class

* listens to the viewer's layer list only while the dock exists
  (:meth:`on_layers_changed`; disconnected when Qt destroys the dock, and
  :meth:`closed` lets the dock stop its own work then);
* starts workers with their handlers connected at creation (superqt re-raises
  a worker's exception on the GUI thread otherwise);
* turns an exception into one notification (:meth:`report_error`): the
  message of an error the user can act on, the type and message of anything else;
* reads an optional path from a ``FileEdit`` (:func:`chosen_path`);
* keeps a "Result" choice on the result the user works on (:meth:`follow_results`):
  the newest when one arrives, the one whose layer is selected;
* joins the other napari-sevnet docks of its window as a tab when it is first
  shown: five docks stacked need 2400 pixels, as tabs they fit a 1000-pixel screen.
"""

from __future__ import annotations

from pathlib import Path

from magicgui.widgets import Container
from qtpy.QtCore import QEvent, QObject, QTimer

from napari_sevnet.errors import Cancelled, InputError
from napari_sevnet.widgets import open_widgets, register, unregister

#: errors whose message is meant for the user as it is (bad files, bad choices, a missing GPU, a full disk)
USER_ERRORS = (InputError, OSError, ValueError, RuntimeError)


def chosen_path(edit) -> Path | None:
    """The path in a ``FileEdit``, or None when it is empty (magicgui shows an empty one as '' or '.')."""
    value = edit.value
    return None if value is None or str(value) in ("", ".") else Path(value)


def error_message(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, USER_ERRORS) else f"{type(exc).__name__}: {exc}"


class DockWidget(Container):
    def __init__(self, napari_viewer):
        super().__init__(labels=True)
        self._viewer = napari_viewer
        self.worker = None
        self._connections: list[tuple[object, object]] = []
        self.native.destroyed.connect(self._on_destroyed)
        self._tabber = _JoinTabsWhenShown(self)
        self.native.installEventFilter(self._tabber)
        register(self)

    # ------------------------------------------------------------------ viewer events

    def on_layers_changed(self, handler) -> None:
        """Call ``handler(event)`` when a layer is added to or removed from the viewer, while the dock exists."""
        for emitter in (self._viewer.layers.events.inserted, self._viewer.layers.events.removed):
            self.connect_while_open(emitter, handler)

    def connect_while_open(self, emitter, handler) -> None:
        """Connect ``handler`` to a napari event emitter until the dock is closed."""
        emitter.connect(handler)
        self._connections.append((emitter, handler))

    def _on_destroyed(self, _obj=None) -> None:
        for emitter, handler in self._connections:
            try:
                emitter.disconnect(handler)
            except (RuntimeError, TypeError, ValueError):  # the viewer went first
                pass
        self._connections.clear()
        unregister(self)
        self.closed()

    def closed(self) -> None:
        """The dock was closed: stop what it runs (override)."""

    # ------------------------------------------------------------------ the result the user works on

    def result_wt_layers(self, _widget=None) -> list:
        """The WT layers of the results in the viewer (a result's choice shows its WT)."""
        from napari_sevnet.layers import LayerInfo

        return [layer for layer in self._viewer.layers if (LayerInfo.from_layer(layer) or LayerInfo()).region == "WT"]

    def follow_results(self, combo, then=None) -> None:
        """Keep ``combo`` (choices: :meth:`result_wt_layers`) on the newest result as one arrives and on the result
        whose layer is selected; ``then(event)`` runs after each layer change."""

        def on_layers(event=None):
            self.reset_choices()
            layers = self.result_wt_layers()
            inserted = getattr(event, "value", None) if getattr(event, "type", None) == "inserted" else None
            if layers and (combo.value is None or inserted in layers):
                combo.value = layers[-1]  # a new run (or the first): the newest result
            if then is not None:
                then(event)

        def on_selection(event=None):
            from napari_sevnet.layers import LayerInfo, region_group

            active = self._viewer.layers.selection.active
            info = LayerInfo.from_layer(active) if active is not None else None
            if info is None or info.region is None:
                return
            try:
                wt = region_group(self._viewer.layers, active)["WT"]
            except InputError:
                return
            if wt is not combo.value:
                combo.value = wt

        self.on_layers_changed(on_layers)
        self.connect_while_open(self._viewer.layers.selection.events.active, on_selection)
        on_layers()

    # ------------------------------------------------------------------ background work

    def start_worker(self, work, **handlers):
        """Start the ``thread_worker`` function ``work`` with ``handlers`` (returned=, errored=, yielded=, finished=).

        ``self.worker`` holds it; the dock's own ``finished`` handler says when it is free again. Returns it.
        """
        worker = self.worker = work(_connect=handlers, _start_thread=False)
        worker.start()
        return worker

    # ------------------------------------------------------------------ messages

    def report_error(self, what: str, exc: BaseException) -> str:
        """Notify ``what: message``; a cancellation is information, not an error. Returns the message."""
        from napari.utils.notifications import show_error, show_info

        if isinstance(exc, Cancelled):
            show_info(f"{what}: cancelled")
            return "cancelled"
        message = error_message(exc)
        show_error(f"{what}: {message}")
        return message


def dock_of(widget):
    """The QDockWidget holding a dock widget's Qt side, or None when it is not docked."""
    from qtpy.QtWidgets import QDockWidget

    parent = widget.native.parentWidget()
    while parent is not None and not isinstance(parent, QDockWidget):
        parent = parent.parentWidget()
    return parent


class _JoinTabsWhenShown(QObject):
    """On the dock's first Show: tabify it with the oldest napari-sevnet dock in its window's area.

    Always the oldest, so docks added in one go (before any has been shown) end up in one group of tabs."""

    def __init__(self, widget: DockWidget):
        super().__init__(widget.native)
        self._widget = widget
        self._done = False

    def eventFilter(self, obj, event):  # noqa: N802 - Qt's name
        if not self._done and event.type() in (QEvent.Type.Show, QEvent.Type.ParentChange) and dock_of(self._widget) is not None:
            self._done = True
            QTimer.singleShot(0, self._join)  # once napari has finished placing the dock
        return False

    def _join(self) -> None:
        try:
            dock = dock_of(self._widget)
        except RuntimeError:  # closed before napari placed it
            return
        window = dock.parentWidget() if dock is not None else None
        if window is None or not hasattr(window, "tabifyDockWidget"):
            return
        others = [dock_of(w) for w in open_widgets(self._widget._viewer) if w is not self._widget and isinstance(w, DockWidget)]
        others = [d for d in others if d is not None and d.parentWidget() is window and window.dockWidgetArea(d) == window.dockWidgetArea(dock)]
        if others:
            window.tabifyDockWidget(others[0], dock)
            dock.raise_()
