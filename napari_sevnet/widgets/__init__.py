"""Dock widgets, one module each; they call the library and hold no model code.

The widgets of one viewer find each other here (Export hands its dataset to
Fine-tune, Fine-tune switches the Segment widget's model).
"""

from __future__ import annotations

import weakref

_OPEN: weakref.WeakSet = weakref.WeakSet()


def register(widget) -> None:
    _OPEN.add(widget)
    widget.native.destroyed.connect(lambda *_: _OPEN.discard(widget))


def find_widget(viewer, cls):
    """The open ``cls`` widget of ``viewer``, or None."""
    for widget in list(_OPEN):
        if isinstance(widget, cls) and widget._viewer is viewer:
            return widget
    return None
