"""``sevnet-demo``: napari with the sample case, segmented by the bundled SEV-Net.

With a display the viewer stays open for the user. With ``--screenshot``
(or no display) it saves a screenshot of the whole window once the
segmentation is done and exits; without a display it starts its own Xvfb,
and if there is none it still segments the case and renders the screenshot
with matplotlib instead of napari.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("sevnet.demo")


def start_xvfb() -> subprocess.Popen | None:
    """Start Xvfb on a free display and point DISPLAY at it; None when Xvfb is not installed."""
    if shutil.which("Xvfb") is None:
        return None
    read, write = os.pipe()
    proc = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", "1600x1000x24", "-nolisten", "tcp"], pass_fds=(write,), stderr=subprocess.DEVNULL)
    os.close(write)
    with os.fdopen(read) as fh:
        number = fh.readline().strip()
    if not number:
        proc.kill()
        return None
    os.environ["DISPLAY"] = f":{number}"
    os.environ.pop("QT_QPA_PLATFORM", None)
    return proc


def tumour_slice(regions: np.ndarray) -> int:
    """Axial slice with the largest whole-tumour area."""
    area = regions[0].sum(axis=(1, 2))
    return int(np.argmax(area)) if area.any() else regions.shape[1] // 2


def demo_case(case_path: Path | None):
    """The case to show (the bundled one by default) as napari's reader opens it: with sequences missing (the default
    segments partial cases), and without its mask when that cannot be read (said; the demo compares with it when it can)."""
    from napari_sevnet.assignments import load_to_segment
    from napari_sevnet.layers import demo_case_folder

    case, left_out = load_to_segment(case_path or demo_case_folder())
    if left_out:
        log.warning("%s: %s", case.case_id, left_out)
    return case


def run_viewer(case_path: Path | None, screenshot: Path | None, checkpoint: str | None, timeout: float) -> int:
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_sevnet.display import camera
    from napari_sevnet.layers import case_layers
    from napari_sevnet.widgets.attention import AttentionWidget
    from napari_sevnet.widgets.segment import SegmentWidget

    case = demo_case(case_path)
    viewer = napari.Viewer(title=f"napari-sevnet demo: {case.case_id}")
    reference = case.regions
    case.regions = None  # show the model's segmentation, compare with the reference in the log
    for data, kwargs, kind in case_layers(case):
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    segment = SegmentWidget(viewer)
    attention = AttentionWidget(viewer)
    viewer.window._qt_window.resize(1500, 950)
    camera(viewer).orientation2d = ("up", "left")  # radiological: anterior up, patient's left on the right
    viewer.window.add_dock_widget(segment, name="Segment", area="right")
    viewer.window.add_dock_widget(attention, name="Attention", area="right")
    segment.set_checkpoint(checkpoint)
    worker = segment.run()
    app = QApplication.instance()
    deadline = time.monotonic() + timeout
    while segment.worker is not None and time.monotonic() < deadline:
        app.processEvents()
        time.sleep(0.02)
    if segment.last_result is None:
        log.error("segmentation did not finish (%s)", segment._status.value)
        return 1
    result = segment.last_result
    z = tumour_slice(result.regions)
    viewer.dims.set_point(0, z * case.spacing[0])
    attention._refresh()
    _log_result(result, reference, case.spacing)
    del worker
    if screenshot is None:
        napari.run()
        return 0
    for _ in range(20):
        app.processEvents()
        time.sleep(0.05)
    viewer.window.screenshot(str(screenshot), canvas_only=False)
    log.info("screenshot saved to %s", screenshot)
    viewer.close()
    return 0


def run_headless_render(case_path: Path | None, screenshot: Path, checkpoint: str | None) -> int:
    """No display and no Xvfb: segment with the library and draw the overlay with matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from napari_sevnet.inference import Predictor
    from napari_sevnet.io import MODALITIES, MODALITY_LABELS
    from napari_sevnet.layers import REGION_COLOURS
    from napari_sevnet.regions import REGIONS

    case = demo_case(case_path)
    result = Predictor(checkpoint).predict(case.image, spacing=case.spacing, sequences=case.sequences)
    for line in result.notes + result.warnings:
        log.warning("%s: %s", case.case_id, line)
    _log_result(result, case.regions, case.spacing)
    z = tumour_slice(result.regions)
    fig, axes = plt.subplots(1, 5, figsize=(16, 3.6))
    for i, m in enumerate(MODALITIES):
        axes[i].imshow(case.image[i, z], cmap="gray", origin="lower")
        axes[i].set_title(MODALITY_LABELS[m] + ("" if m in case.sequences else " (missing)"))
    under = next(m for m in ("flair", "t2", "t1ce", "t1") if m in case.sequences)  # the outlines over FLAIR, or what stands in for it
    axes[4].imshow(case.image[MODALITIES.index(under), z], cmap="gray", origin="lower")
    for i, r in enumerate(REGIONS):
        axes[4].contour(result.regions[i, z], levels=[0.5], colors=[REGION_COLOURS[r]], linewidths=1.2)
    axes[4].set_title(f"{MODALITY_LABELS[under]} + WT / TC / ET")
    for a in axes:
        a.axis("off")
    fig.suptitle(f"napari-sevnet (rendered without a display): {case.case_id}, slice {z}")
    fig.savefig(screenshot, dpi=90, bbox_inches="tight")
    log.info("no display and no Xvfb: rendered %s with matplotlib", screenshot)
    return 0


def _log_result(result, reference, spacing) -> None:
    from napari_sevnet.metrics import dice
    from napari_sevnet.regions import REGIONS, volumes_ml

    vol = volumes_ml(result.regions, spacing)
    log.info("segmented in %.1f s on %s: %s", result.timings["total_s"], result.device, ", ".join(f"{r} {v:.1f} mL" for r, v in vol.items()))
    if reference is not None:
        log.info("Dice against the case's reference: %s", ", ".join(f"{r} {dice(result.regions[i], reference[i]):.3f}" for i, r in enumerate(REGIONS)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="sevnet-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("case", nargs="?", type=Path, help="a case folder or file (default: the sample case)")
    parser.add_argument("--screenshot", type=Path, help="save a screenshot here and exit")
    parser.add_argument("--checkpoint", help="checkpoint to use (default: the bundled default model)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for the segmentation")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    from napari_sevnet.errors import InputError

    xvfb = None
    try:
        if args.screenshot is not None and (args.screenshot.is_dir() or not args.screenshot.parent.is_dir()):  # said now, not after the run
            raise InputError(args.screenshot, "is a folder: name the PNG file" if args.screenshot.is_dir() else "its folder does not exist")
        if args.case is not None and not args.case.exists():  # before starting a display server and napari for it
            raise InputError(args.case, "cannot access: no such file or folder")
        if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
            screenshot = args.screenshot or Path("demo_screenshot.png")
            xvfb = start_xvfb()
            if xvfb is None:
                return run_headless_render(args.case, screenshot, args.checkpoint)
            log.info("no display: running napari under Xvfb (%s)", os.environ["DISPLAY"])
            return run_viewer(args.case, screenshot, args.checkpoint, args.timeout)
        return run_viewer(args.case, args.screenshot, args.checkpoint, args.timeout)
    except InputError as exc:
        print(f"sevnet-demo: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if xvfb is not None:
            xvfb.terminate()


if __name__ == "__main__":
    raise SystemExit(main())
