"""The README's first command, ``make demo``: ``sevnet-demo`` on a case from disk, a screenshot out (real napari under Xvfb, or matplotlib where no Xvfb can start)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_sevnet.demo import run_headless_render
from napari_sevnet.phantom import write_phantom


def case_without_t1ce(root: Path) -> Path:
    folder = write_phantom(root, seed=1, shape=(48, 56, 48))
    (folder / f"{folder.name}_t1ce.nii.gz").unlink()
    return folder


def test_without_any_display_the_demo_still_segments_and_draws_the_overlay(tmp_path, caplog):
    shot = tmp_path / "shot.png"
    with caplog.at_level("INFO", logger="sevnet.demo"):
        assert run_headless_render(case_without_t1ce(tmp_path), shot, None) == 0
    assert "segmented in" in caplog.text and "without T1ce the enhancement" in caplog.text, caplog.text
    assert np.asarray(Image.open(shot).convert("RGB")).std() > 10


@pytest.mark.qt
def test_the_demo_segments_a_case_without_t1ce_says_what_that_costs_and_saves_the_screenshot(tmp_path):
    folder = case_without_t1ce(tmp_path)
    shot = tmp_path / "shot.png"
    done = subprocess.run([str(Path(sys.executable).parent / "sevnet-demo"), str(folder), "--screenshot", str(shot)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    said = done.stdout + done.stderr  # the log on stderr, napari's notifications on stdout
    assert "segmented in" in said and "without T1ce the enhancement" in said and "no held-out figures" not in said, said
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[0] > 400 and pixels.shape[1] > 600 and pixels.std() > 10, "a screenshot of the viewer, not a blank image"


def test_a_screenshot_that_cannot_be_saved_is_said_before_the_run(tmp_path, capsys, monkeypatch):
    from napari_sevnet.demo import main

    assert main([str(tmp_path / "no_case"), "--screenshot", str(tmp_path / "missing" / "shot.png")]) == 1
    assert main(["--screenshot", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "shot.png: its folder does not exist" in err and f"{tmp_path}: is a folder: name the PNG file" in err
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr("napari_sevnet.demo.start_xvfb", lambda: pytest.fail("a display server started for a case that does not exist"))
    assert main([str(tmp_path / "no_case"), "--screenshot", str(tmp_path / "shot.png")]) == 1
    assert f"{tmp_path / 'no_case'}: cannot access" in capsys.readouterr().err, "a mistyped case is said before napari starts"


def test_the_demo_shows_a_case_whose_mask_it_cannot_read_and_says_so(tmp_path, caplog):
    import nibabel as nib

    from napari_sevnet.demo import demo_case
    from napari_sevnet.phantom import write_phantom

    folder = write_phantom(tmp_path / "cases", seed=3, shape=(32, 40, 32))
    seg = folder / f"{folder.name}_seg.nii.gz"
    img = nib.load(seg)
    nib.save(nib.Nifti1Image((np.asanyarray(img.dataobj) > 0).astype(np.uint8) * 255, img.affine), seg)  # a clinic's 0/255 mask
    case = demo_case(folder)
    assert case.regions is None and f"its mask {seg.name} was not read (unknown label values [255]" in caplog.text
