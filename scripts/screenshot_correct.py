"""README screenshot of the Correct dock after a few learned clicks on a case with a reference mask.

    python scripts/screenshot_correct.py CASE_FOLDER OUT.png [CLICKS]   (needs a display; make screenshots runs it under Xvfb)

Opens the case with its reference whole tumour as a blue outline, segments it
with the default model through the Segment dock, then clicks through the
Correct dock as the correction benchmark's simulated user does (each click at
the centre of the largest whole-tumour error, Shift for a false alarm) and
shows the axial slice of the last click, with the dock's status line. Prints
the whole tumour's Dice against the reference after each click.
"""

from __future__ import annotations

import sys

from screenshot_common import open_with_reference, viewer_and_wait


def main(case_folder: str, out: str, clicks: int = 3) -> int:
    from napari_sevnet.correction import largest_error_centre
    from napari_sevnet.display import camera
    from napari_sevnet.metrics import dice
    from napari_sevnet.widgets.correct import CorrectWidget
    from napari_sevnet.widgets.segment import SegmentWidget

    viewer, wait = viewer_and_wait()
    reference = open_with_reference(viewer, case_folder)
    if reference is None:
        print(f"{case_folder}: no reference mask, so there is nothing for a simulated user to correct towards")
        viewer.close()
        return 1
    segment, correct = SegmentWidget(viewer), CorrectWidget(viewer)
    viewer.window.add_dock_widget(segment, name="Segment", area="right")
    correct_dock = viewer.window.add_dock_widget(correct, name="Correct", area="right")
    segment.run()
    wait(lambda: segment.worker is None)
    run_wt = segment.result_layers["WT"]  # a click edits this layer's data in place
    viewer.layers.selection.active = run_wt
    correct._clicks.value = True
    spacing = tuple(float(s) for s in run_wt.scale)
    scores = [dice(run_wt.data > 0, reference)]
    voxel = None
    for _ in range(clicks):
        found = largest_error_centre(run_wt.data > 0, reference, spacing)
        if found is None:
            break
        voxel, missed = found
        correct.click(run_wt.data_to_world(voxel), add=missed)
        scores.append(dice(run_wt.data > 0, reference))
        print(f"click {len(scores) - 1} ({'add' if missed else 'remove'} at {voxel}): WT Dice {scores[-2]:.3f} -> {scores[-1]:.3f}", flush=True)
    if voxel is not None:  # the slice of the last click, zoomed on it
        world = run_wt.data_to_world(voxel)
        viewer.dims.set_point(0, world[0])
        camera(viewer).center = tuple(world[1:])
        camera(viewer).zoom *= 1.8
    correct_dock.raise_()
    wait(lambda: False, timeout=2)
    viewer.screenshot(out, canvas_only=False)
    print(f"wrote {out}: WT Dice " + " -> ".join(f"{s:.3f}" for s in scores))
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], sys.argv[2], *(int(a) for a in sys.argv[3:4])))
