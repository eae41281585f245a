"""README screenshot of a known failure of the default model: its largest false-positive island on a held-out real case.

    python scripts/screenshot_failure.py CASE_FOLDER OUT.png     (needs a display; make screenshots runs it under Xvfb)

Opens the case with its expert mask as outlines, segments it with the default
model through the Segment dock, shows the Read-out dock's lesion table and
moves to the axial slice through the largest connected piece of the model's
whole tumour that the expert's whole tumour does not touch.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage


def largest_false_island(model_wt: np.ndarray, expert_wt: np.ndarray) -> np.ndarray | None:
    """Centre (z, y, x) of the biggest 26-connected component of ``model_wt`` that does not touch ``expert_wt``."""
    labels, count = ndimage.label(model_wt, structure=np.ones((3, 3, 3)))
    touching = set(np.unique(labels[expert_wt & (labels > 0)]))
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, count + 1))
    candidates = [(size, i + 1) for i, size in enumerate(sizes) if i + 1 not in touching]
    if not candidates:
        return None
    _, best = max(candidates)
    return np.round(ndimage.center_of_mass(labels == best)).astype(int)


def main(case_folder: str, out: str) -> int:
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_sevnet.layers import LayerInfo
    from napari_sevnet.widgets.readout import ReadoutWidget
    from napari_sevnet.widgets.segment import SegmentWidget

    def wait(condition, timeout=600):
        start = time.time()
        while not condition() and time.time() - start < timeout:
            app.processEvents()
            time.sleep(0.02)

    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    viewer.window._qt_window.resize(1600, 1000)
    expert = {}
    for layer in viewer.open(case_folder, plugin="napari-sevnet"):
        region = LayerInfo.from_layer(layer).region
        if region is None:
            continue
        if region == "WT":
            expert["WT"] = np.asarray(layer.data) > 0
            layer.name, layer.contour, layer.opacity = "expert WT (outline)", 2, 1.0
        else:
            viewer.layers.remove(layer)
    segment, readout = SegmentWidget(viewer), ReadoutWidget(viewer)
    viewer.window.add_dock_widget(segment, name="Segment", area="right")
    viewer.window.add_dock_widget(readout, name="Read-out", area="right")
    segment.run()
    wait(lambda: segment.worker is None)
    wait(lambda: readout.table.rowCount() > 0, timeout=120)
    centre = largest_false_island(segment.last_result.regions[0], expert["WT"])
    if centre is None:
        kept = f"kept {out}, made by an earlier model" if Path(out).exists() else f"{out} not written"
        print(f"the model's whole tumour has no piece away from the expert's on this case: nothing to show ({kept})")
        viewer.close()
        return 0
    scale = viewer.layers[0].scale
    viewer.dims.set_point(0, centre[0] * scale[0])
    wait(lambda: False, timeout=2)
    viewer.screenshot(out, canvas_only=False)
    print(f"wrote {out} (island centred at voxel {tuple(int(c) for c in centre)})")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], sys.argv[2]))
