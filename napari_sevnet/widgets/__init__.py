"""Dock widgets, one module each; they call the library and hold no model code.

The widgets of one viewer find each other here (Export hands its dataset to
Fine-tune, Fine-tune switches the Segment widget's model, Worklist uses the
Segment widget's model). The registry holds weak references only.
"""

from __future__ import annotations

import weakref

_OPEN: weakref.WeakSet = weakref.WeakSet()


def register(widget) -> None:
    _OPEN.add(widget)


def find_widget(viewer, cls):
    """The open ``cls`` widget of ``viewer``, or None (a widget whose Qt side is gone does not count)."""
    for widget in list(_OPEN):
        if isinstance(widget, cls) and widget._viewer is viewer:
            try:
                widget.native.objectName()
            except RuntimeError:  # the dock was closed and Qt deleted it
                continue
            return widget
    return None
