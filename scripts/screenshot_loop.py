"""README screenshot of the human-in-the-loop docks: Segment (with the uncertainty map), Export, Fine-tune after a short run.

    python scripts/screenshot_loop.py OUT.png     (needs a display; make screenshots runs it under Xvfb)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from screenshot_common import viewer_and_wait


def main(out: str) -> int:
    from napari_sevnet.checkpoint import phantom_checkpoint
    from napari_sevnet.layers import LayerInfo
    from napari_sevnet.phantom import write_phantom
    from napari_sevnet.widgets.export import ExportWidget
    from napari_sevnet.widgets.finetune import FineTuneWidget
    from napari_sevnet.widgets.segment import SegmentWidget

    work = Path(tempfile.mkdtemp(prefix="sevnet-shot-"))
    case = write_phantom(work / "cases", seed=11, shape=(96, 112, 96), contrast=0.35)
    viewer, wait = viewer_and_wait()
    for layer in [layer for layer in viewer.open(str(case), plugin="napari-sevnet") if LayerInfo.from_layer(layer).region is not None]:
        viewer.layers.remove(layer)
    segment, export, finetune = SegmentWidget(viewer), ExportWidget(viewer), FineTuneWidget(viewer)
    segment.set_checkpoint(phantom_checkpoint())  # a phantom case: the weights trained on phantoms
    viewer.window.add_dock_widget(segment, name="Segment", area="right")
    viewer.window.add_dock_widget(export, name="Export", area="right")
    viewer.window.add_dock_widget(finetune, name="Fine-tune", area="right")
    segment._uncertainty.value = True
    segment.run()
    wait(lambda: segment.worker is None)
    export._dataset.value = work / "dataset"
    export._annotator.value = "demo"
    export.export()
    wait(lambda: export.worker is None)
    finetune._epochs.value, finetune._steps.value, finetune._device.value = 4, 8, "cpu"
    finetune.start()
    wait(lambda: finetune.process is None)
    viewer.dims.set_point(0, 48)
    wait(lambda: False, timeout=1)
    viewer.screenshot(out, canvas_only=False)
    print(f"wrote {out}")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
