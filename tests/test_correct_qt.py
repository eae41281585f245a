"""The Correct dock in a real viewer: clicks, the threshold slider, undo, nesting, fill between slices, statistics."""

from __future__ import annotations

import time

import numpy as np
import pytest

from napari_sevnet.checkpoint import phantom_checkpoint
from napari_sevnet.phantom import write_phantom

pytestmark = pytest.mark.qt


class Mouse:
    """What napari hands a mouse callback, enough for the dock's (press, then release at the same place)."""

    def __init__(self, position, modifiers=(), view_direction=None, dims_displayed=(1, 2)):
        self.type, self.position, self.modifiers = "mouse_press", position, list(modifiers)
        self.view_direction, self.dims_displayed = view_direction, list(dims_displayed)


def press(widget, viewer, event) -> None:
    """Press and release; then wait, with the event loop running, until the dock has answered the click."""
    from qtpy.QtWidgets import QApplication

    handler = widget._on_mouse(viewer, event)
    next(handler)
    event.type = "mouse_release"
    with pytest.raises(StopIteration):
        next(handler)
    deadline = time.perf_counter() + 60
    while widget.busy and time.perf_counter() < deadline:
        QApplication.processEvents()
        time.sleep(0.002)
    assert not widget.busy, "the click was not answered within 60 s"


FULL, SMALL = (155, 240, 240), (64, 72, 64)


@pytest.fixture(params=[SMALL])
def corrected(request, qtbot, make_napari_viewer, tmp_path):
    from napari_sevnet.widgets.correct import CorrectWidget
    from napari_sevnet.widgets.segment import SegmentWidget

    viewer = make_napari_viewer(show=True)
    folder = write_phantom(tmp_path / "cases", seed=11, shape=request.param, contrast=0.4)
    truth = [layer for layer in viewer.open(str(folder), plugin="napari-sevnet") if layer.name.endswith("(file)")]
    reference = {layer.name.split()[1]: np.asarray(layer.data) > 0 for layer in truth}
    for layer in truth:
        viewer.layers.remove(layer)
    segment, correct = SegmentWidget(viewer), CorrectWidget(viewer)
    segment.set_checkpoint(phantom_checkpoint())
    viewer.window.add_dock_widget(segment)
    viewer.window.add_dock_widget(correct)
    segment.run()
    qtbot.waitUntil(lambda: segment.worker is None, timeout=300_000)
    yield viewer, segment, correct, reference
    segment._on_destroyed()


@pytest.mark.timing
@pytest.mark.parametrize("corrected", [FULL], indirect=True)  # the heartbeat is measured on a full BraTS-sized case
def test_clicks_add_and_remove_nested_with_one_undo_and_the_gui_stays_live(qtbot, corrected):
    from qtpy.QtCore import QTimer

    viewer, segment, correct, reference = corrected
    wt, tc, et = (segment.result_layers[r] for r in ("WT", "TC", "ET"))
    viewer.layers.selection.active = et
    assert correct._region.value == "ET"
    correct._region.value = "TC"
    missed = np.argwhere(reference["TC"] & ~(np.asarray(tc.data) > 0))
    if len(missed) == 0:
        pytest.skip("the phantom weights missed no core on this phantom")
    qtbot.waitUntil(lambda: {"flair", "t1ce", "t2"} <= set(correct._normalised), timeout=10_000)  # normalised in a worker on selection
    before = segment.current_regions().copy()
    ticks = []
    heartbeat = QTimer()
    heartbeat.timeout.connect(lambda: ticks.append(time.perf_counter()))
    heartbeat.start(10)
    qtbot.wait(100)
    press(correct, viewer, Mouse(tuple(float(v) for v in missed[len(missed) // 2])))  # a click in 2D view
    qtbot.wait(100)
    heartbeat.stop()
    assert np.diff(ticks).max() < 0.2, f"a click on a full case held the GUI {np.diff(ticks).max() * 1000:.0f} ms"
    assert correct.fallback is None, "the click was a learned one (the default tool)"
    after = segment.current_regions()
    assert after[1].sum() > before[1].sum() and (after[0] >= after[1]).all() and (after[1] >= after[2]).all(), "TC grew, WT with it"
    assert after[1][tuple(missed[len(missed) // 2])], "the voxel clicked is core now"
    grown = after[1].sum()
    correct._threshold.value = 0.05  # the slider re-applies the last click, here more generously
    assert segment.current_regions()[1].sum() > grown
    wt.undo()  # one Ctrl+Z takes the click back in every layer
    np.testing.assert_array_equal(segment.current_regions(), before)

    inside = tuple(float(v) for v in np.argwhere(np.asarray(tc.data) > 0)[0])
    press(correct, viewer, Mouse(inside, modifiers=("Shift",)))  # Shift+click removes
    assert segment.current_regions()[1].sum() < before[1].sum()
    assert (segment.current_regions()[2] <= segment.current_regions()[1]).all()
    from napari_sevnet.editing import editor_of

    removed = before[1].sum() - segment.current_regions()[1].sum()
    clicks = editor_of(tc).counts["click"]
    assert (clicks["edits"], clicks["undone"]) == (1, 1), "the slider replaced the first click, Ctrl+Z took it back, the Shift+click stays"
    assert clicks["voxels"] >= removed, "the voxels of the click in effect (TC's; the nested layers' are not added)"


def test_fill_between_two_drawn_slices_is_one_edit(qtbot, corrected):
    viewer, segment, correct, _ = corrected
    wt = segment.result_layers["WT"]
    viewer.layers.selection.active = wt
    z0, z1 = 20, 30
    for z, radius in ((z0, 4), (25, 3), (z1, 7)):
        wt.brush_size = 2 * radius
        wt.selected_label = 1
        wt.paint((z, 12, 12), 1)  # away from the tumour: only these slices hold it there
        if z == 25:
            wt.undo()  # a stroke taken back is not a drawn slice
    from napari_sevnet.editing import editor_of

    axis, areas = editor_of(wt).drawn_areas("WT")
    assert axis == 0 and sorted(areas) == [z0, z1]
    correct._region.value = "WT"
    before = np.asarray(wt.data).copy()
    assert correct.fill_between_slices() > 0
    between = (np.asarray(wt.data) > 0)[z0 + 1 : z1, 4:20, 4:20]
    assert all(between[k].any() for k in range(len(between))), "every slice in between is filled"
    away = np.ones(before.shape, bool)
    away[:, :20, :20] = False
    np.testing.assert_array_equal(np.asarray(wt.data)[away], before[away])  # the tumour on those slices is not redrawn
    wt.undo()
    np.testing.assert_array_equal(np.asarray(wt.data), before)


def test_fill_between_slices_follows_the_plane_drawn_on(qtbot, corrected):
    """A clinician contouring on coronal slices fills between coronal slices, not across the axial ones each stroke touched."""
    viewer, segment, correct, _ = corrected
    wt = segment.result_layers["WT"]
    viewer.layers.selection.active = wt
    viewer.dims.order = (1, 0, 2)  # coronal view: slices across the A-P axis
    y0, y1 = 4, 12
    for y, radius in ((y0, 3), (y1, 5)):
        wt.brush_size = 2 * radius
        wt.selected_label = 1
        wt.paint((30, y, 12), 1)  # a disc in the displayed (S-I, R-L) plane, away from the tumour
    before = np.asarray(wt.data).copy()
    assert correct.fill_between_slices() > 0
    assert "between coronal slices 4 and 12" in correct._status.value
    between = (np.asarray(wt.data) > 0)[22:39, y0 + 1 : y1, 4:20]
    assert all(between[:, k].any() for k in range(y1 - y0 - 1)), "every coronal slice in between is filled"
    changed = np.asarray(wt.data) != before
    assert not changed[:, : y0 + 1].any() and not changed[:, y1:].any(), "only the slices between the drawn ones change"
    wt.undo()
    np.testing.assert_array_equal(np.asarray(wt.data), before)


def test_a_click_that_changes_nothing_says_why_and_the_slider_takes_back_only_the_clicks_own_edit(qtbot, corrected):
    from napari_sevnet.layers import LayerInfo

    viewer, segment, correct, _ = corrected
    wt = segment.result_layers["WT"]
    viewer.layers.selection.active = wt
    correct._region.value, correct._tool.value = "WT", "probability"
    wt.brush_size, wt.selected_label = 4, 1
    wt.paint((20, 10, 10), 1)  # the user's brush stroke, away from the tumour
    stroke = np.asarray(wt.data).copy()
    outside = tuple(float(v) for v in np.argwhere(stroke == 0)[0])
    press(correct, viewer, Mouse(outside, modifiers=("Shift",)))  # nothing there to remove
    assert "removed 0 voxel(s)" in correct._status.value and "is not WT" in correct._status.value
    correct._threshold.value = 0.9  # re-applies that click: still nothing, and the stroke before it stays
    np.testing.assert_array_equal(np.asarray(wt.data), stroke)

    probability = LayerInfo.from_layer(wt).probabilities[0]
    surest = np.unravel_index(np.argmax(np.where(stroke > 0, probability, 0)), stroke.shape)
    correct._threshold.value = 0.5
    press(correct, viewer, Mouse(tuple(float(v) for v in surest)))  # inside the mask: nothing to add at its own threshold
    assert "added 0 voxel(s)" in correct._status.value and "is WT already" in correct._status.value
    correct._threshold.value = 0.05  # the slider can still act on that click: grow more generously
    assert (np.asarray(wt.data) > 0).sum() > (stroke > 0).sum()
    wt.undo()  # one Ctrl+Z takes the click back; the stroke stays
    np.testing.assert_array_equal(np.asarray(wt.data), stroke)
    correct._threshold.value = 0.3  # the click was undone: the slider must not take back the stroke in its place
    np.testing.assert_array_equal(np.asarray(wt.data), stroke)
    assert "click again" in correct._status.value

    press(correct, viewer, Mouse(tuple(float(v) for v in surest)))
    correct._threshold.value = 0.05
    wt.paint((30, 10, 10), 1)  # a brush stroke after the click
    after_stroke = np.asarray(wt.data).copy()
    correct._threshold.value = 0.2  # the click is no longer the last edit: nothing is taken back
    np.testing.assert_array_equal(np.asarray(wt.data), after_stroke)
    assert "click again" in correct._status.value
    press(correct, viewer, Mouse(tuple(float(v) for v in surest)))
    before = np.asarray(wt.data).copy()
    correct._region.value = "TC"  # another region: the slider no longer re-applies the WT click (with TC's probability)
    correct._threshold.value = 0.05
    np.testing.assert_array_equal(np.asarray(wt.data), before)
    assert "down to add" in correct._why_nothing(add=True, inside=False) and "up to remove" in correct._why_nothing(add=False, inside=True)


def test_a_click_while_the_layer_paints_is_the_brushs_not_a_correction(qtbot, corrected):
    viewer, segment, correct, reference = corrected
    wt = segment.result_layers["WT"]
    viewer.layers.selection.active = wt
    wt.mode = "paint"
    correct._clicks.value = True
    assert wt.mode == "pan_zoom", "turning clicks on stops the brush, so the first click does not also paint"
    wt.mode = "erase"  # the user picks the eraser again
    before = np.asarray(wt.data).copy()
    missed = tuple(float(v) for v in np.argwhere(reference["WT"] & ~(before > 0))[0])
    handler = correct._on_mouse(viewer, Mouse(missed))
    with pytest.raises(StopIteration):
        next(handler)
    np.testing.assert_array_equal(np.asarray(wt.data), before)
    assert "erase mode" in correct._status.value
    wt.mode = "pan_zoom"
    press(correct, viewer, Mouse(missed))
    assert correct.clicks == 1


def test_a_mouse_click_is_answered_in_a_worker_and_keeps_a_stroke_made_meanwhile(qtbot, corrected):
    """The GUI thread does not wait for the network; a second click waits its turn; the brush meanwhile is not overwritten."""
    viewer, segment, correct, reference = corrected
    wt = segment.result_layers["WT"]
    viewer.layers.selection.active = wt
    before = np.asarray(wt.data) > 0
    missed = np.argwhere(reference["WT"] & ~before)
    clicked = tuple(int(v) for v in missed[len(missed) // 2])
    far = tuple(int(v) for v in np.argwhere(~before)[0])  # a corner of the scan, far outside the click's ball
    event = Mouse(tuple(float(v) for v in clicked))
    handler = correct._on_mouse(viewer, event)
    next(handler)
    event.type = "mouse_release"
    with pytest.raises(StopIteration):
        next(handler)
    assert correct.busy and correct.clicks == 0, "the click is being answered, not yet applied"
    assert correct.click(tuple(float(v) for v in clicked)) == 0 and "still answering" in correct._status.value
    wt.paint(far, 1)  # a brush stroke while the network runs
    qtbot.waitUntil(lambda: not correct.busy, timeout=60_000)
    after = np.asarray(wt.data) > 0
    assert after[clicked] and after[far] and correct.clicks == 1, "the click applied, the stroke kept"
    assert correct.fallback is None and "click 1: added" in correct._status.value
    wt.undo()
    assert not np.asarray(wt.data)[clicked] and np.asarray(wt.data)[far], "one undo takes the click back, not the stroke"


def test_the_export_counts_clicks_and_brush_strokes_apart(qtbot, corrected, tmp_path):
    import json

    from napari_sevnet.widgets.export import ExportWidget

    viewer, segment, correct, _ = corrected
    et = segment.result_layers["ET"]
    viewer.layers.selection.active = et
    et.paint((32, 36, 32), 1)  # a brush stroke
    correct._region.value = "ET"
    press(correct, viewer, Mouse((32.0, 36.0, 33.0), modifiers=("Shift",)))  # a click
    export = ExportWidget(viewer)
    viewer.window.add_dock_widget(export)
    export._dataset.value = tmp_path / "ds"
    export.export()
    qtbot.waitUntil(lambda: export.worker is None, timeout=60_000)
    record = json.loads((tmp_path / "ds" / "dataset.json").read_text(encoding="utf-8"))["cases"][0]
    assert record["interactions"]["brush"]["edits"] >= 1 and record["interactions"]["click"]["edits"] >= 1


def test_a_result_recovered_after_a_crash_is_a_result_again_for_clicks_the_edge_and_the_export(qtbot, corrected, tmp_path, monkeypatch):
    import json
    from pathlib import Path

    from napari_sevnet import recovery
    from napari_sevnet.layers import LayerInfo, segmented_layers
    from napari_sevnet.widgets.export import ExportWidget

    viewer, segment, correct, _ = corrected
    et, before = segment.result_layers["ET"], LayerInfo.from_layer(segment.result_layers["WT"])
    viewer.layers.selection.active = et
    et.paint((32, 36, 32), 1)  # a brush stroke
    correct._region.value = "ET"
    press(correct, viewer, Mouse((32.0, 36.0, 33.0), modifiers=("Shift",)))  # a learned click
    assert correct.fallback is None
    recovery.flush()
    viewer.layers.clear()  # lost (a crash would do the same); the case opened again
    opened = viewer.open(str(Path(before.paths["flair"]).parent), plugin="napari-sevnet")
    recovered = {layer.name.split()[1]: layer for layer in opened if "(recovered)" in layer.name}
    info = LayerInfo.from_layer(recovered["WT"])
    assert (info.checkpoint, info.thresholds, info.sequences, info.warnings) == (before.checkpoint, before.thresholds, before.sequences, before.warnings)
    assert before.warnings, "the phantom weights warn that they never saw a patient"
    np.testing.assert_array_equal(info.prediction, before.prediction)
    assert info.probabilities is not None and sorted(segmented_layers(info, viewer.layers)) == ["flair", "t1", "t1ce", "t2"]

    viewer.layers.selection.active = recovered["WT"]
    correct._region.value = "WT"
    inside = np.argwhere(np.asarray(recovered["WT"].data) > 0)[0]
    press(correct, viewer, Mouse(tuple(float(v) for v in recovered["WT"].data_to_world(inside)), modifiers=("Shift",)))
    assert correct.fallback is None, "a learned click, as before the crash"
    correct.move_edge(0.3)
    assert "WT edge moved from" in correct._status.value

    from napari_sevnet.widgets.attention import AttentionWidget

    attention = AttentionWidget(viewer)
    viewer.window.add_dock_widget(attention)
    attention._refresh()
    assert attention._source.value is recovered["WT"] and attention._stage.choices, "its SE attention is shown"
    n = len(viewer.layers)
    attention.show_feature_map(attention._stage.choices[0], 0)  # from the reopened scans: the run's own layers are gone
    qtbot.waitUntil(lambda: len(viewer.layers) == n + 1, timeout=60_000)
    viewer.layers.selection.active = recovered["WT"]

    export = ExportWidget(viewer)
    viewer.window.add_dock_widget(export)
    assert export._result.value is recovered["WT"] and "(edited)" in export._target.value
    export._dataset.value = tmp_path / "ds"
    export.export()
    qtbot.waitUntil(lambda: export.worker is None, timeout=60_000)
    record = json.loads((tmp_path / "ds" / "dataset.json").read_text(encoding="utf-8"))["cases"][0]
    assert record["checkpoint"] is not None and record["edits"] is not None, "which model made it, and what the correction changed"
    tally = record["interactions"]
    assert tally["brush"]["edits"] >= 1 and tally["click"]["edits"] >= 1 and tally["edge"]["edits"] >= 1, "the edits before the crash count too"

    # days later the model that made it is gone (a fine-tuned run cleaned up): the correction is still exported, and says so
    warned = []
    monkeypatch.setattr("napari.utils.notifications.show_warning", warned.append)
    LayerInfo.from_layer(recovered["WT"]).checkpoint = str(tmp_path / "runs" / "gone" / "best.json")
    export.export()
    qtbot.waitUntil(lambda: export.worker is None, timeout=60_000)
    record = json.loads((tmp_path / "ds" / "dataset.json").read_text(encoding="utf-8"))["cases"][1]
    assert record["version"] == 2 and record["checkpoint"]["gone_at_export"] and record["checkpoint"]["path"].endswith("best.json")
    assert any("no longer at" in w and "gone" in w for w in warned), warned


def test_a_click_in_3d_view_adds_where_the_model_was_surest_outside_and_removes_the_surface_under_the_cursor(qtbot, corrected):
    viewer, segment, correct, _ = corrected
    tc = segment.result_layers["TC"]
    viewer.layers.selection.active = tc
    correct._region.value, correct._tool.value = "TC", "probability"
    from napari_sevnet.layers import LayerInfo

    probability = np.asarray(LayerInfo.from_layer(tc).probabilities[1], np.float32)
    z, y, x = np.unravel_index(int(np.argmax(probability)), probability.shape)
    assert not (np.asarray(tc.data)[:3, y, x] > 0).any()
    tc.brush_size, tc.selected_label = 3, 1
    tc.paint((1, y, x), 1)  # a false alarm in front of the tumour, seen from z = 0
    viewer.dims.ndisplay = 3
    before = np.asarray(tc.data) > 0
    correct.click((0.0, float(y), float(x)), add=False, view_direction=(1.0, 0.0, 0.0), dims_displayed=(0, 1, 2))
    assert correct.last_click[1] == (1, y, x), "the first voxel of the region along the ray: the surface the user sees"
    after = np.asarray(tc.data) > 0
    assert not after[1, y, x] and np.array_equal(after[3:], before[3:]), "the false alarm goes, the tumour behind it stays"

    tc.undo()
    column = probability[:, y, x]
    outside = np.flatnonzero(np.asarray(tc.data)[:, y, x] == 0)
    correct.click((0.0, float(y), float(x)), add=True, view_direction=(1.0, 0.0, 0.0), dims_displayed=(0, 1, 2))
    picked = correct.last_click[1]
    assert picked[1:] == (y, x) and picked[0] in outside and column[picked[0]] == column[outside].max(), \
        "a click adds at the voxel outside the region where the model was surest"


def test_along_the_ray_a_click_adds_at_the_likeliest_voxel_outside_and_removes_at_the_first_inside():
    from napari_sevnet.widgets.correct import _along_ray

    points = np.array([[z, 5, 5] for z in range(6)])  # nearest the camera first
    inside = np.array([False, False, True, True, False, False])
    guide = np.zeros((6, 10, 10), np.float32)
    guide[0, 5, 5], guide[3, 5, 5], guide[4, 5, 5] = 1, 5, 3  # no model probability kept: the guide sequence decides
    assert _along_ray(points, inside, guide, add=True) == (4, 5, 5)
    assert _along_ray(points, inside, None, add=True) == (0, 5, 5)
    assert _along_ray(points, inside, guide, add=False) == (2, 5, 5)


def test_the_whole_edge_slider_moves_the_region_as_one_edit_and_follows_undo(qtbot, corrected):
    viewer, segment, correct, _ = corrected
    wt, tc = segment.result_layers["WT"], segment.result_layers["TC"]
    viewer.layers.selection.active = tc
    correct._region.value = "TC"
    model_cut = segment.last_result.postprocessing["thresholds"]["TC"]
    assert correct._edge.value == pytest.approx(model_cut, abs=0.01), "the slider shows where the model cut the region"
    from benchmarks.correction import THRESHOLDS

    assert correct._edge.min <= min(THRESHOLDS) and max(THRESHOLDS) <= correct._edge.max, "the benchmark's moves are the slider's"
    before = segment.current_regions().copy()
    correct._edge.value = 0.1  # looser all around
    looser = segment.current_regions()
    assert looser[1].sum() > before[1].sum() and (looser[0] >= looser[1]).all() and (looser[1] >= looser[2]).all()
    correct._edge.value = 0.95  # then tighter than the model
    assert segment.current_regions()[1].sum() < before[1].sum()
    wt.undo()  # one Ctrl+Z per move: back to the looser edge, and the slider's record with it
    np.testing.assert_array_equal(segment.current_regions(), looser)
    from napari_sevnet.layers import LayerInfo

    assert correct.edge_threshold(tc, LayerInfo.from_layer(tc)) == pytest.approx(0.1)
    wt.undo()
    np.testing.assert_array_equal(segment.current_regions(), before)
    from napari_sevnet.editing import editor_of

    moves = editor_of(tc).counts["edge"]
    assert (moves["edits"], moves["undone"], moves["voxels"]) == (0, 2, 0), "both moves were taken back"


def test_the_whole_edge_slider_shows_the_edge_of_the_result_selected(qtbot, corrected):
    viewer, segment, correct, _ = corrected
    first = segment.result_layers["TC"]
    viewer.layers.selection.active = first
    correct._edge.value = 0.95
    qtbot.waitUntil(lambda: {"flair", "t1ce", "t2"} <= set(correct._normalised), timeout=10_000)
    segment.run()  # a second result of the same case: the same guides, already normalised
    qtbot.waitUntil(lambda: segment.worker is None, timeout=300_000)
    second = segment.result_layers["TC"]
    assert second is not first
    viewer.layers.selection.active = second
    assert correct._edge.value == pytest.approx(segment.last_result.postprocessing["thresholds"]["TC"], abs=0.01)
    viewer.layers.selection.active = first
    assert correct._edge.value == pytest.approx(0.95)


def test_a_learned_click_needs_its_regions_guides_and_says_so_when_it_falls_back(qtbot, corrected):
    from napari_sevnet.layers import LayerInfo

    viewer, segment, correct, reference = corrected

    def click_on_the_edge(region):
        layer = segment.result_layers[region]
        viewer.layers.selection.active = layer
        correct._region.value = region
        edge = np.argwhere((np.asarray(layer.data) > 0) ^ reference[region])
        where = edge[len(edge) // 2]
        press(correct, viewer, Mouse(tuple(float(v) for v in where), modifiers=() if reference[region][tuple(where)] else ("Shift",)))

    assert correct._tool.value == "learned", "the learned click is the default"
    click_on_the_edge("WT")
    assert correct.fallback is None and "unavailable" not in correct._status.value
    sources = LayerInfo.from_layer(segment.result_layers["WT"]).source_layers
    viewer.layers[sources["t2"]].name = "T2 before surgery"  # a scan renamed is still the scan it segmented
    click_on_the_edge("WT")
    assert correct.fallback is None, "the renamed T2 is found by its file"
    viewer.layers.remove("T2 before surgery")
    click_on_the_edge("WT")
    assert "no T2 layer open" in correct.fallback, "WT's refiner compares voxels on T2 too"
    click_on_the_edge("TC")
    assert correct.fallback is None, "the core's refiner needs FLAIR and T1ce only"
    viewer.layers.remove(sources["flair"])
    click_on_the_edge("TC")
    assert "no FLAIR layer open" in correct.fallback and "probability tool" in correct._status.value
    correct._tool.value = "probability"
    click_on_the_edge("TC")
    assert correct.fallback is None


def test_a_learned_click_does_not_undo_an_earlier_click_of_the_other_sign(qtbot, corrected):
    from napari_sevnet.layers import LayerInfo
    from tests.test_click_refiner import probability_refiner

    viewer, segment, correct, _ = corrected
    wt = segment.result_layers["WT"]
    viewer.layers.selection.active = wt
    correct._region.value = "WT"
    correct._refiner = probability_refiner()  # tumour where the model's probability is above 0.5: a known verdict
    start = np.asarray(wt.data) > 0
    probability = np.asarray(LayerInfo.from_layer(wt).probabilities[0], np.float32)
    inside = np.argwhere(start & (probability < np.quantile(probability[start], 0.5)))
    said_no = tuple(int(v) for v in inside[len(inside) // 2])
    press(correct, viewer, Mouse(tuple(float(v) for v in said_no), modifiers=("Shift",)))
    after_removal = np.asarray(wt.data) > 0
    removed = np.argwhere(start & ~after_removal)
    distance = np.linalg.norm(removed - said_no, axis=1)
    said_yes = tuple(int(v) for v in removed[np.argmin(np.abs(distance - 5))])  # a voxel the removal took, about 5 voxels away
    grid = np.indices(start.shape).reshape(3, -1).T
    nearer_no = (np.linalg.norm(grid - said_no, axis=1) < np.linalg.norm(grid - said_yes, axis=1)).reshape(start.shape)
    without_memory = correct._refiner.click("WT", after_removal, said_yes, True, probability, correct._learned_inputs(LayerInfo.from_layer(wt))[1],
                                            tuple(float(v) for v in wt.scale))
    assert (without_memory & nearer_no).any(), "without the memory the adding click would put back part of what the removal took"
    press(correct, viewer, Mouse(tuple(float(v) for v in said_yes)))
    after_adding = np.asarray(wt.data) > 0
    assert after_adding[said_yes] and (after_adding & ~after_removal).any()
    np.testing.assert_array_equal(after_adding[nearer_no], after_removal[nearer_no])
    correct._threshold.value = 0.3  # the slider re-applies the adding click: still not over the removal
    np.testing.assert_array_equal((np.asarray(wt.data) > 0)[nearer_no], after_removal[nearer_no])
    wt.undo()
    wt.undo()  # one Ctrl+Z per click
    np.testing.assert_array_equal(np.asarray(wt.data) > 0, start)
