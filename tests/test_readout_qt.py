"""The Read-out dock in a real viewer: the table follows a paint, a row moves the viewer, diameters on the image's scale, two visits."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from napari_sevnet.layers import LayerInfo
from napari_sevnet.phantom import write_phantom

pytestmark = pytest.mark.qt


def test_the_lesion_table_follows_edits_and_moves_the_viewer(qtbot, make_napari_viewer, tmp_path):
    from napari_sevnet.widgets.readout import ReadoutWidget

    viewer = make_napari_viewer(show=True)
    layers = viewer.open(str(write_phantom(tmp_path, seed=4, shape=(64, 72, 64))), plugin="napari-sevnet")
    readout = ReadoutWidget(viewer)
    viewer.window.add_dock_widget(readout)
    et = layers[-1]
    viewer.layers.selection.active = et
    qtbot.waitUntil(lambda: readout.readout is not None and readout.worker is None, timeout=30_000)
    assert readout.table.rowCount() == len(readout.readout.lesions) >= 1
    before = readout.readout.volumes_ml["ET"]
    shapes = readout.shapes
    assert shapes is not None and tuple(shapes.scale) == tuple(layers[0].scale), "diameters on the image's scale"
    et.paint((40, 10, 10), 1)  # a new bit of enhancing tumour (TC and WT grow with it)
    qtbot.waitUntil(lambda: readout.readout.volumes_ml["ET"] > before, timeout=30_000)
    readout.table.cellClicked.emit(0, 0)
    lesion = readout.readout.lesions[0]
    assert viewer.dims.point[0] == pytest.approx((lesion.diameters.slice if lesion.diameters else lesion.voxel[0]) * layers[0].scale[0])
    assert "without T1ce" not in readout._summary.value, "the case's own mask: no model caveat"
    for layer in layers[-3:]:  # as if the model had made this result from a scan without contrast agent
        layer.metadata = LayerInfo.from_layer(layer).but(sequences=("t1", "t2", "flair")).to_metadata()
    readout.measure()
    qtbot.waitUntil(lambda: readout.worker is None and "made without T1ce" in readout._summary.value, timeout=30_000)
    # another result of the same scan is no earlier visit: "stable disease" would be made up
    from napari.layers import Layer

    from napari_sevnet.io import load_case
    from napari_sevnet.layers import case_layers

    again = [viewer.add_layer(Layer.create(*t)) for t in case_layers(load_case(tmp_path / "phantom_0004"))[4:]]  # its mask read a second time
    viewer.layers.selection.active = et
    qtbot.waitUntil(lambda: readout.worker is None, timeout=30_000)
    errors = []
    readout.report_error = lambda title, exc: errors.append(str(exc))
    readout._baseline.value = again[0]
    assert readout.compare() is None and readout.comparison is None
    assert errors and "is a result of the same scan" in errors[0]


@pytest.mark.parametrize("follow_up_without_flair", [False, True], ids=["all sequences", "follow-up without FLAIR"])
def test_two_visits_on_different_grids_are_compared_and_aligned(qtbot, make_napari_viewer, tmp_path, follow_up_without_flair):
    """Without FLAIR the visits are registered on T2 (it was FLAIR regardless, and ITK failed on an image of zeros)."""
    import nibabel as nib

    from napari_sevnet.widgets.readout import ReadoutWidget

    first = write_phantom(tmp_path / "v1", seed=4, shape=(64, 72, 64))
    moved = tmp_path / "v2" / "phantom_0004"
    moved.mkdir(parents=True)
    for path in first.glob("*.nii.gz"):  # the same head a visit later, on a grid shifted by 4 voxels and 6 mm
        img = nib.load(path)
        data = np.roll(np.asanyarray(img.dataobj), 4, axis=0)
        affine = img.affine.copy()
        affine[:3, 3] += (6.0, 0.0, 0.0)
        nib.save(nib.Nifti1Image(data, affine), moved / path.name)
    if follow_up_without_flair:
        (moved / "phantom_0004_flair.nii.gz").unlink()
    for folder, date in ((first, "2024-01-10"), (moved, "2024-04-10")):  # as prepared from the scanner's DICOM: who and when
        (folder / "prepare.json").write_text(json.dumps({"case_id": "phantom_0004", "reference": "t1ce", "native": {"t1ce": str(folder / "phantom_0004_t1ce.nii.gz")},
                                                         "visit": {"patient_id": "DOE^PAT4", "study_date": date}}))
    viewer = make_napari_viewer(show=True)
    readout = ReadoutWidget(viewer)
    viewer.window.add_dock_widget(readout)
    base_layers = viewer.open(str(first), plugin="napari-sevnet")
    follow_layers = viewer.open(str(moved), plugin="napari-sevnet")
    errors = []
    import napari.utils.notifications as notifications

    original = notifications.show_error
    notifications.show_error = errors.append
    viewer.layers.selection.active = follow_layers[-1]
    qtbot.waitUntil(lambda: (readout.readout is not None and readout.worker is None) or bool(errors), timeout=30_000)
    notifications.show_error = original
    assert not errors, errors
    readout._baseline.value = base_layers[4]
    n = len(viewer.layers)
    worker = readout.compare()
    assert readout.compare() is worker and "still under way" in readout._status.value, "a second click adds the baseline once"
    qtbot.waitUntil(lambda: readout.worker is None and readout.comparison is not None, timeout=120_000)
    assert readout.comparison["category"] == "stable disease" and abs(readout.comparison["sum_of_products_mm2"]["percent"]) < 5
    assert readout.comparison["new_lesions"] == [], "visits on two grids: new lesions looked for on the registered baseline (none: the same tumour)"
    assert "not shown on this scan" not in readout._status.value
    assert re.match(r"since phantom_0004 \(file\) \(91 days before\): sum of products \d+ → \d+ mm² \([+-]\d+\.\d %\): stable disease", readout._status.value), readout._status.value
    on_follow = [layer for layer in viewer.layers[n:] if layer.name == "phantom_0004 on phantom_0004 WT (file)"]
    assert viewer.grid.enabled and len(on_follow) == 1, "the baseline's regions registered onto the follow-up's scan"
    aligned = np.asarray(on_follow[0].data) > 0
    follow_wt = np.asarray(next(layer for layer in follow_layers if " WT" in layer.name).data) > 0
    from napari_sevnet.metrics import dice

    assert dice(aligned, follow_wt) > 0.8

    # the report of the follow-up carries the change; the baseline's own report (selected after) must not carry it
    for layer, report, visits in ((follow_layers[-1], tmp_path / "follow.html", True), (base_layers[-1], tmp_path / "base.html", False)):
        viewer.layers.selection.active = layer
        qtbot.waitUntil(lambda layer=layer: readout.worker is None and readout._tracked.get("ET") is layer, timeout=30_000)
        # written at once, the table's measurement perhaps still under way: the report measures the mask itself
        readout._report_path.value = report
        readout.write_report()
        qtbot.waitUntil(lambda report=report: readout.worker is None and report.is_file(), timeout=60_000)
        page = report.read_text(encoding="utf-8")
        assert ("<section id='visits'>" in page) is visits, report.name
        assert ("Baseline scanned on 2024-01-10, follow-up on 2024-04-10 (91 days later)." in page) is visits, "the report says what the dock said"


def test_the_report_path_left_from_the_last_patient_does_not_replace_that_patients_report(qtbot, make_napari_viewer, tmp_path):
    from napari_sevnet.widgets.readout import ReadoutWidget

    viewer = make_napari_viewer(show=True)
    readout = ReadoutWidget(viewer)
    viewer.window.add_dock_widget(readout)
    errors = []
    readout.report_error = lambda title, exc: errors.append(str(exc))
    first = viewer.open(str(write_phantom(tmp_path, seed=4, shape=(48, 56, 48))), plugin="napari-sevnet")
    viewer.layers.selection.active = first[-1]
    qtbot.waitUntil(lambda: readout.readout is not None and readout.worker is None, timeout=30_000)
    readout._report_path.value = tmp_path / "report.html"
    before = len(readout.readout.lesions)
    first[-1].paint((24, 3, 3), 1)  # a new lesion, and the report written at once: before the table measured it again
    readout.write_report()
    qtbot.waitUntil(lambda: readout.worker is None and "report written" in readout._status.value, timeout=60_000)
    assert not errors
    written = (tmp_path / "report.html").read_bytes()
    lesions = written.decode().split("<section id='lesions'>")[1].split("</section>")[0]
    assert lesions.count("<tr><td>") == before + 1, "the report measures the mask as it is, not the table's last measurement"

    second = viewer.open(str(write_phantom(tmp_path, seed=5, shape=(48, 56, 48))), plugin="napari-sevnet")
    viewer.layers.selection.active = second[-1]
    qtbot.waitUntil(lambda: readout.worker is None and "phantom_0005" in readout._tracked["WT"].name, timeout=30_000)
    qtbot.waitUntil(lambda: readout.worker is None, timeout=30_000)
    readout.write_report()
    qtbot.waitUntil(lambda: readout.worker is None and bool(errors), timeout=60_000)
    assert "already holds the report of another scan" in errors[-1] and "phantom_0004" in errors[-1]
    assert (tmp_path / "report.html").read_bytes() == written


def test_the_study_dates_nifti_visits_do_not_carry_are_typed_into_the_dock(qtbot, make_napari_viewer, tmp_path):
    """Two NIfTI visits say nothing of when: the dates typed give the interval and catch the wrong order; a date that
    is not one is refused, naming the field."""
    import shutil

    from napari_sevnet.widgets.readout import ReadoutWidget

    first = write_phantom(tmp_path / "v1", seed=4, shape=(48, 56, 48))
    later = shutil.copytree(first, tmp_path / "v2" / "phantom_0004")
    viewer = make_napari_viewer(show=True)
    readout = ReadoutWidget(viewer)
    viewer.window.add_dock_widget(readout)
    base_layers = viewer.open(str(first), plugin="napari-sevnet")
    follow_layers = viewer.open(str(later), plugin="napari-sevnet")
    viewer.layers.selection.active = follow_layers[-1]
    qtbot.waitUntil(lambda: readout.readout is not None and readout.worker is None, timeout=30_000)
    errors = []
    readout.report_error = lambda title, exc: errors.append(str(exc))
    readout._baseline.value = base_layers[4]
    readout._baseline_date.value, readout._follow_up_date.value = "2024-04-31", "2024-01-10"
    assert readout.compare() is None and errors == ["Baseline date (phantom_0004 (file)): '2024-04-31' is not a date as YYYY-MM-DD"]
    readout._baseline_date.value = "2024-04-10"
    readout.compare()
    qtbot.waitUntil(lambda: readout.worker is None and readout.comparison is not None, timeout=60_000)
    assert "was scanned on 2024-04-10, after the follow-up" in readout.comparison["caveat"] and "warning:" in readout._status.value
    readout._baseline_date.value, readout._follow_up_date.value = "2024-01-10", "2024-04-10"
    readout.compare()
    qtbot.waitUntil(lambda: readout.worker is None and readout.comparison["caveat"] is None, timeout=60_000)
    assert readout.comparison["days"] == 91 and "(91 days before)" in readout._status.value
