"""Dock widgets, one module each; they call the library and hold no model code.

The widgets of one viewer find each other here (Export hands its dataset to
Fine-tune, Fine-tune switches the Segment widget's model, Worklist uses the
Segment widget's model) and share one loaded model (:func:`shared_predictor`).
A dock is held here from its creation until Qt destroys it: napari keeps only
a dock's Qt side, so the Python object would otherwise vanish while the dock
is still on screen. Models are held per viewer, weakly.
"""

from __future__ import annotations

import threading
import weakref

_OPEN: dict = {}  # the open docks in the order they were made (a dict: a set's order would change from run to run)
_MODELS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # viewer -> its one loaded Predictor
_MODELS_LOCK = threading.Lock()


def register(widget) -> None:
    _OPEN[widget] = None


def unregister(widget) -> None:
    _OPEN.pop(widget, None)


def unwrapped(viewer):
    """The viewer itself: napari hands each plugin dock its own ``PublicOnlyProxy`` of it."""
    return getattr(viewer, "__wrapped__", viewer)


def open_widgets(viewer) -> list:
    """The napari-sevnet dock widgets open on ``viewer``, oldest first."""
    viewer = unwrapped(viewer)
    return [widget for widget in list(_OPEN) if unwrapped(getattr(widget, "_viewer", None)) is viewer]


def find_widget(viewer, cls):
    """The open ``cls`` widget of ``viewer``, or None (a widget whose Qt side is gone does not count)."""
    for widget in open_widgets(viewer):
        if isinstance(widget, cls):
            try:
                widget.native.objectName()
            except RuntimeError:  # the dock was closed and Qt deleted it
                continue
            return widget
    return None


def shared_predictor(viewer, checkpoint: str | None, device: str):
    """The viewer's loaded model for ``checkpoint`` (None: the bundled default) on ``device``.

    Segment, Attention and Worklist run the same model; one is kept in memory
    per viewer (asking for another replaces it). Loading takes seconds: call
    from a worker. Run settings (TTA, uncertainty) go with each ``predict`` call.
    """
    from napari_sevnet.inference import Predictor, resolve_device

    key = (str(checkpoint) if checkpoint else None, str(resolve_device(device)))
    viewer = unwrapped(viewer)
    with _MODELS_LOCK:
        loaded = _MODELS.get(viewer)
        if loaded is None or loaded[0] != key:
            loaded = _MODELS[viewer] = (key, Predictor(checkpoint, device))
        return loaded[1]
