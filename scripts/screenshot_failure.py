"""README screenshot of a known failure of the default model: where its whole tumour goes most beyond the reference.

    python scripts/screenshot_failure.py CASE_FOLDER OUT.png     (needs a display; make screenshots runs it under Xvfb)

Opens the case with its reference mask (expert or consensus) as outlines,
segments it with the default model through the Segment dock, shows the
Read-out dock's lesion table and moves to the axial slice through the largest
connected piece of the model's whole tumour that the reference's whole tumour
does not touch (a false island); where there is none, to the axial slice with
the most whole-tumour voxels outside the reference (an over-call).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy import ndimage
from screenshot_common import open_with_reference, viewer_and_wait


def largest_false_island(model_wt: np.ndarray, reference_wt: np.ndarray) -> np.ndarray | None:
    """Centre (z, y, x) of the biggest 26-connected component of ``model_wt`` that does not touch ``reference_wt``."""
    labels, count = ndimage.label(model_wt, structure=np.ones((3, 3, 3)))
    touching = set(np.unique(labels[reference_wt & (labels > 0)]))
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, count + 1))
    candidates = [(size, i + 1) for i, size in enumerate(sizes) if i + 1 not in touching]
    if not candidates:
        return None
    _, best = max(candidates)
    return np.round(ndimage.center_of_mass(labels == best)).astype(int)


def main(case_folder: str, out: str) -> int:
    from napari_sevnet.widgets.readout import ReadoutWidget
    from napari_sevnet.widgets.segment import SegmentWidget

    viewer, wait = viewer_and_wait()
    reference_wt = open_with_reference(viewer, case_folder)
    if reference_wt is None:
        print(f"{case_folder}: no reference mask, so no failure against it to show")
        viewer.close()
        return 1
    segment, readout = SegmentWidget(viewer), ReadoutWidget(viewer)
    viewer.window.add_dock_widget(segment, name="Segment", area="right")
    viewer.window.add_dock_widget(readout, name="Read-out", area="right")
    segment.run()
    wait(lambda: segment.worker is None)
    wait(lambda: readout.table.rowCount() > 0, timeout=120)
    model_wt = segment.last_result.regions[0]
    centre = largest_false_island(model_wt, reference_wt)
    overcalled_per_slice = (model_wt & ~reference_wt).sum(axis=(1, 2))
    if centre is not None:
        z, what = int(centre[0]), f"false island centred at voxel {tuple(int(c) for c in centre)}"
    elif overcalled_per_slice.any():
        z = int(np.argmax(overcalled_per_slice))
        what = f"over-call: {int(overcalled_per_slice[z])} whole-tumour voxels outside the reference on axial slice {z}"
    else:
        kept = f"kept {out}, made by an earlier model" if Path(out).exists() else f"{out} not written"
        print(f"the model's whole tumour lies inside the reference's on this case: nothing to show ({kept})")
        viewer.close()
        return 0
    viewer.dims.set_point(0, z * viewer.layers[0].scale[0])
    wait(lambda: False, timeout=2)
    viewer.screenshot(out, canvas_only=False)
    print(f"wrote {out} ({what})")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], sys.argv[2]))
