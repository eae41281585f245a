"""What the README's screenshot scripts share: a 1600x1000 viewer, waiting on Qt, a case opened with its reference outlined."""

from __future__ import annotations

import time

import numpy as np

REFERENCE_COLOUR = "dodgerblue"  # apart from the model's green


def viewer_and_wait():
    """(a shown napari viewer, wait(condition, timeout=600): process Qt events until ``condition()`` or the timeout)."""
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True)
    app = QApplication.instance()  # napari's own, made with the OpenGL attributes it needs
    viewer.window._qt_window.resize(1600, 1000)

    def wait(condition, timeout=600):
        start = time.time()
        while not condition() and time.time() - start < timeout:
            app.processEvents()
            time.sleep(0.02)

    return viewer, wait


def open_with_reference(viewer, case_folder) -> np.ndarray | None:
    """Open a case; its reference whole tumour (expert or consensus) stays as a blue outline, its other regions go.

    Returns the reference WT as a bool array, or None when the case has no mask.
    """
    from napari.utils.colormaps import DirectLabelColormap

    from napari_sevnet.layers import LayerInfo

    reference = None
    for layer in viewer.open(str(case_folder), plugin="napari-sevnet"):
        region = LayerInfo.from_layer(layer).region
        if region is None:
            continue
        if region == "WT":
            reference = np.asarray(layer.data) > 0
            layer.name, layer.contour, layer.opacity = "reference WT (outline)", 2, 1.0
            layer.colormap = DirectLabelColormap(color_dict={None: REFERENCE_COLOUR, 0: "transparent", 1: REFERENCE_COLOUR})
        else:
            viewer.layers.remove(layer)
    return reference
