"""A clinician's session in a real napari viewer: orientation, what is seen, several cases and runs, messages."""

from __future__ import annotations

import json
import sys
import warnings

import nibabel as nib
import numpy as np
import pytest
from nibabel.orientations import io_orientation

from napari_sevnet import io
from napari_sevnet.checkpoint import phantom_checkpoint
from napari_sevnet.phantom import write_phantom
from tests.test_io import AFFINES

pytestmark = pytest.mark.qt
SHAPE = (40, 64, 56)


def write_marked_case(folder, affine):
    """A case whose only bright spot lies at the brain's anterior-right edge (canonical: high Y, high X)."""
    grid = io.SourceGrid(affine=affine, shape=(0, 0, 0), orientation=io_orientation(affine))
    zz, yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    brain = ((zz - 20) / 16) ** 2 + ((yy - 32) / 26) ** 2 + ((xx - 28) / 22) ** 2 < 1
    image = np.where(brain, 100.0, 0.0).astype(np.float32)
    image[18:23, 50:55, 42:47] = 1000.0  # anterior (Y near 58) and right (X near 50) of the centre
    folder.mkdir(parents=True)
    for name in ("t1", "t1ce", "t2", "flair"):
        nib.save(nib.Nifti1Image(grid.from_canonical(image), affine), folder / f"marked_{name}.nii.gz")
    return folder


def marker_position(viewer, flair):
    """(row, column) of the marker's centre in a screenshot of the canvas, as fractions of its height and width."""
    for layer in viewer.layers:
        layer.visible = layer is flair
    flair.contrast_limits = (0, 1000)
    viewer.dims.set_point(0, 20)
    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    rows, cols = np.nonzero(shot.min(axis=2) > 200)
    brain_rows, brain_cols = np.nonzero(shot.max(axis=2) > 10)
    centre = (brain_rows.mean(), brain_cols.mean())
    return (rows.mean() - centre[0]) / shot.shape[0], (cols.mean() - centre[1]) / shot.shape[1]


@pytest.mark.parametrize("header", ["LPS", "RAS"])
def test_a_case_opens_radiological_anterior_up_and_the_patients_right_on_the_left(make_napari_viewer, tmp_path, header, monkeypatch):
    folder = write_marked_case(tmp_path / header, AFFINES[header])
    viewer = make_napari_viewer(show=True)
    layers = viewer.open(str(folder), plugin="napari-sevnet")
    row, col = marker_position(viewer, layers[3])
    assert row < -0.05 and col < -0.05, f"the anterior-right marker should be top-left, got {row:+.2f}, {col:+.2f}"
    assert viewer.text_overlay.visible and "A up, R on the left" in viewer.text_overlay.text
    assert viewer.dims.axis_labels == ("axial", "coronal", "sagittal"), "the slider names the plane it steps through"
    viewer.dims.order = (1, 0, 2)  # coronal: superior up, the patient's right still on the left
    assert "S up, R on the left" in viewer.text_overlay.text
    viewer.dims.axis_labels = ("z", "y", "x")
    viewer.dims.order = (0, 1, 2)
    assert viewer.dims.axis_labels == ("z", "y", "x"), "names the user gave stay"

    monkeypatch.setenv("SEVNET_ORIENTATION", "neurological")
    other = make_napari_viewer(show=True)
    layers = other.open(str(folder), plugin="napari-sevnet")
    row, col = marker_position(other, layers[3])
    assert row < -0.05 and col > 0.05, "neurological: the right on the right"
    assert "L on the left" in other.text_overlay.text


@pytest.fixture
def session(make_napari_viewer, tmp_path):
    """A viewer with two phantom cases opened and the Segment and Export docks, on the phantom weights."""
    from napari_sevnet.widgets.export import ExportWidget
    from napari_sevnet.widgets.segment import SegmentWidget

    viewer = make_napari_viewer(show=True)
    cases = [write_phantom(tmp_path / "cases", seed=seed, shape=(48, 56, 48)) for seed in (3, 4)]
    segment, export = SegmentWidget(viewer), ExportWidget(viewer)
    segment.set_checkpoint(phantom_checkpoint())
    viewer.window.add_dock_widget(segment, name="Segment")
    viewer.window.add_dock_widget(export, name="Export")
    yield viewer, segment, export, cases
    segment._on_destroyed()


def run(qtbot, segment):
    assert segment.run() is not None
    qtbot.waitUntil(lambda: segment.worker is None, timeout=120_000)


def test_segment_follows_the_newest_case_and_the_selected_one_and_names_it(qtbot, session):
    viewer, segment, _, cases = session
    first = viewer.open(str(cases[0]), plugin="napari-sevnet")
    second = viewer.open(str(cases[1]), plugin="napari-sevnet")
    assert segment._modalities["flair"].value is second[3] and segment._case.value == "phantom_0004"
    viewer.layers.selection.active = first[0]  # the user looks at the first case again
    assert segment._modalities["t2"].value is first[2] and segment._case.value == "phantom_0003"
    run(qtbot, segment)
    assert segment._status.value.startswith("phantom_0003 run 1: done")
    assert [layer.name for layer in segment.result_layers.values()] == [f"phantom_0003 {r} (run 1)" for r in ("WT", "TC", "ET")]


def test_regions_are_outlined_except_the_one_being_edited(qtbot, session):
    viewer, segment, _, cases = session
    opened = viewer.open(str(cases[0]), plugin="napari-sevnet")
    for layer in opened[4:]:
        viewer.layers.remove(layer)
    run(qtbot, segment)
    wt, tc, et = (segment.result_layers[r] for r in ("WT", "TC", "ET"))
    assert viewer.layers.selection.active is et and et.contour == 0 and wt.contour > 0 and tc.contour > 0
    for layer in opened[:4]:
        layer.visible = False
    z = int(np.argmax((wt.data > 0).sum(axis=(1, 2))))
    viewer.dims.set_point(0, z)
    viewer.reset_view()

    def green_pixels():
        shot = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
        red, green, blue = shot[..., 0], shot[..., 1], shot[..., 2]
        return int(((green > red + 40) & (green > blue + 40)).sum())  # WT's green, filled or as an outline

    outlined = green_pixels()
    viewer.layers.selection.active = wt  # now editing WT: it is filled, TC and ET are outlines
    assert wt.contour == 0 and tc.contour > 0 and et.contour > 0
    filled = green_pixels()
    assert filled > 1.5 * outlined > 0, (outlined, filled)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # nor does napari warn of the outlines it cannot draw
        viewer.dims.ndisplay = 3  # napari draws no contours in 3D: every region filled there
    assert wt.contour == tc.contour == et.contour == 0
    viewer.dims.ndisplay = 2
    assert tc.contour > 0
    segment._outlines.value = False
    assert wt.contour == tc.contour == et.contour == 0


def test_keyboard_undo_reverts_one_edit_in_all_three_layers(qtbot, session):
    from qtpy.QtCore import Qt

    viewer, segment, _, cases = session
    viewer.open(str(cases[0]), plugin="napari-sevnet")
    run(qtbot, segment)
    et, wt = segment.result_layers["ET"], segment.result_layers["WT"]
    before = segment.current_regions().copy()
    z = et.data.shape[0] // 2
    outside = tuple(int(i) for i in np.argwhere(wt.data[z] == 0)[0])
    et.paint((z, *outside), 1)
    assert segment.current_regions()[:, z, outside[0], outside[1]].all()
    viewer.layers.selection.active = wt
    canvas = viewer.window._qt_viewer.canvas.native
    canvas.setFocus()
    qtbot.keyClick(canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    np.testing.assert_array_equal(segment.current_regions(), before)
    et.selected_label = 2  # napari's "new label" button: a region layer paints 1
    assert et.selected_label == 1


def test_export_follows_the_selected_run_and_warns_about_an_unedited_mask(qtbot, session, tmp_path, monkeypatch):
    from napari_sevnet.widgets.finetune import FineTuneWidget

    viewer, segment, export, cases = session
    warnings = []
    monkeypatch.setattr("napari.utils.notifications.show_warning", warnings.append)
    viewer.open(str(cases[0]), plugin="napari-sevnet")
    run(qtbot, segment)
    first = dict(segment.result_layers)
    run(qtbot, segment)
    second = dict(segment.result_layers)
    assert export._result.value is second["WT"] and "phantom_0003 (run 2)" in export._target.value
    viewer.layers.selection.active = first["TC"]
    assert export._result.value is first["WT"] and "run 1" in export._target.value and "not edited" in export._target.value
    first["ET"].paint((first["ET"].data.shape[0] // 2, 1, 1), 1)
    viewer.layers.selection.active = first["ET"]
    export._describe()
    assert "(edited)" in export._target.value

    finetune = FineTuneWidget(viewer)
    viewer.window.add_dock_widget(finetune, name="Fine-tune")
    finetune.dataset = tmp_path / "elsewhere"
    viewer.layers.selection.active = second["WT"]  # run 2, never edited
    export._dataset.value = tmp_path / "dataset"
    export.export()
    qtbot.waitUntil(lambda: export.worker is None, timeout=60_000)
    assert warnings and "not edited" in warnings[-1]
    assert finetune.dataset == tmp_path / "dataset", "Fine-tune picks up the dataset just exported"

    # a second export, of another run, was a slip: the button takes it back out of training, and version 1 trains again
    assert export._withdraw.enabled
    from napari_sevnet import recovery
    from napari_sevnet.layers import LayerInfo

    recovery.flush()
    paths = LayerInfo.from_layer(first["WT"]).paths
    assert [r.name for r in recovery.pending(paths)] == ["phantom_0003 (run 1)"], "run 1 was edited: a recovery copy is kept"
    viewer.layers.selection.active = first["WT"]
    export.export()
    qtbot.waitUntil(lambda: export.worker is None, timeout=60_000)
    assert export.exported.version == 2
    recovery.flush()
    assert recovery.pending(paths) == [], "exported: the copy has done its work"
    export.withdraw()
    assert "phantom_0003 v2 withdrawn (training uses version 1" in export._status.value and not export._withdraw.enabled
    from training.data import discover_cases

    (ref,) = discover_cases([tmp_path / "dataset"])
    assert ref.folder.name == "phantom_0003" and (tmp_path / "dataset" / "phantom_0003_v2").is_dir()


def test_finetune_cancelled_before_its_first_epoch_leaves_nothing(qtbot, make_napari_viewer, tmp_path, monkeypatch):
    from napari_sevnet.export import export_case
    from napari_sevnet.widgets.finetune import FineTuneWidget

    case = io.load_case(write_phantom(tmp_path / "cases", seed=3, shape=(48, 56, 48)))
    export_case(case, case.regions, tmp_path / "ds")
    viewer = make_napari_viewer()
    finetune = FineTuneWidget(viewer)
    finetune.dataset = tmp_path / "ds"
    finetune._device.value = "cpu"
    warnings = []
    monkeypatch.setattr("napari.utils.notifications.show_warning", warnings.append)
    finetune.start()
    assert len(warnings) == 1 and "without Replay data" in warnings[0] and "warning: without Replay data" in finetune.log.toPlainText(), \
        "a fine-tune without original cases is told what it did to other patients' scans"
    qtbot.waitUntil(lambda: finetune.validation_kind is not None, timeout=120_000)  # the trainer is up, no epoch yet
    finetune.cancel()
    qtbot.waitUntil(lambda: finetune.process is None, timeout=60_000)
    assert "nothing was saved" in finetune._status.value and not finetune._use.enabled
    assert not finetune.run_dir.exists()
    finetune._draw()
    assert finetune.figure.axes and finetune.validation_kind == "training_cases"


def test_finetune_names_unusable_data_and_folders_before_starting_the_trainer(qtbot, make_napari_viewer, tmp_path, monkeypatch):
    """Each of these once started a trainer that failed seconds later (leaving an empty run folder), or raised and left Start dead."""
    from napari_sevnet.export import export_case, withdraw
    from napari_sevnet.widgets.finetune import FineTuneWidget

    messages = []
    monkeypatch.setattr("napari.utils.notifications.show_error", messages.append)
    case = io.load_case(write_phantom(tmp_path / "cases", seed=3, shape=(48, 56, 48)))
    export_case(case, case.regions, tmp_path / "ds")
    finetune = FineTuneWidget(make_napari_viewer())
    finetune.dataset = tmp_path / "ds"

    (tmp_path / "empty").mkdir()
    finetune._replay.value = tmp_path / "empty"
    assert finetune.start() is None and "empty: no labelled BraTS cases" in messages[-1]
    finetune._replay.value = None

    seg = tmp_path / "ds" / "phantom_0003" / "phantom_0003_seg.nii.gz"
    seg.rename(tmp_path / "seg.nii.gz")
    assert finetune.start() is None and "is listed in" in messages[-1] and "--withdraw phantom_0003" in messages[-1]
    (tmp_path / "seg.nii.gz").rename(seg)

    (tmp_path / "ds" / "runs").write_text("not a folder")  # as a read-only share would refuse it
    assert finetune.start() is None and "cannot create the folder for the run" in messages[-1]
    assert finetune.process is None and finetune._start.enabled, "Start still works"
    (tmp_path / "ds" / "runs").unlink()

    monkeypatch.setattr("napari_sevnet.widgets.finetune.trainer_program", lambda: [sys.executable, "-c", "import sys; sys.exit('CUDA out of memory')"])
    finetune.start()
    qtbot.waitUntil(lambda: finetune.process is None, timeout=60_000)
    assert "CUDA out of memory" in messages[-1] and "log and checkpoints" not in messages[-1]
    assert not finetune.run_dir.exists(), "a trainer that wrote nothing leaves no empty run folder behind"

    withdraw(tmp_path / "ds", "phantom_0003")
    assert finetune.start() is None and "withdraws every case it lists" in messages[-1]
    assert not any(p.is_dir() for p in (tmp_path / "ds").glob("runs/*")), "no trainer was started"


def test_the_reader_says_why_and_files_can_be_assigned_by_hand(qtbot, make_napari_viewer, tmp_path, monkeypatch):
    from napari_sevnet.assignments import load_assigned_or_named
    from napari_sevnet.widgets.assign import AssignWidget

    monkeypatch.setenv("SEVNET_CONFIG_DIR", str(tmp_path / "config"))
    source = write_phantom(tmp_path / "src", seed=3, shape=(48, 56, 48))
    partial = tmp_path / "partial"
    partial.mkdir()
    for m in ("flair", "t1ce"):
        (partial / f"p_{m}.nii.gz").write_bytes((source / f"phantom_0003_{m}.nii.gz").read_bytes())
    clinic = tmp_path / "clinic"
    clinic.mkdir()
    for m, name in (("flair", "FLAIR"), ("t1ce", "T1_post"), ("t1", "T1_pre"), ("t2", "AX_T2")):
        (clinic / f"{name}.nii.gz").write_bytes((source / f"phantom_0003_{m}.nii.gz").read_bytes())
    viewer = make_napari_viewer()
    told = []
    monkeypatch.setattr("napari.utils.notifications.show_info", told.append)
    assert len(viewer.open(str(partial), plugin="napari-sevnet")) == 2, "the sequences it has"
    assert told and "p has no T1, T2" in told[-1]
    viewer.layers.clear()
    with pytest.raises(Exception, match=r"Assign sequences, or on the command line with sevnet-assign"):  # a script: said
        load_assigned_or_named(clinic)
    warned = []
    monkeypatch.setattr("napari.utils.notifications.show_warning", warned.append)
    assert viewer.open(str(clinic), plugin="napari-sevnet") == []  # in napari: the dock that assigns them opens with the folder
    docked = viewer.window.dock_widgets["Assign sequences (napari-sevnet)"]
    assert docked._folder.value == clinic and docked._roles["t1ce"].value == "T1_post.nii.gz"
    assert "The Assign sequences dock is open with clinic: check which file is which sequence and press Open" in warned[-1], warned
    viewer.window.remove_dock_widget(viewer.window.dock_widgets["Assign sequences (napari-sevnet)"].native.parent())
    assert viewer.open(str(clinic / "FLAIR.nii.gz"), plugin="napari-sevnet") == []  # one of its files, as a single volume: the same
    assert viewer.window.dock_widgets["Assign sequences (napari-sevnet)"]._folder.value == clinic
    with pytest.raises(Exception, match=r"holds no scans itself but case folders \(clinic, partial\).*Worklist"):
        viewer.open(str(tmp_path), plugin="napari-sevnet")  # the folder of all cases, dropped on the viewer
    assert len(viewer.layers) == 0

    assign = AssignWidget(viewer)
    viewer.window.add_dock_widget(assign, name="Assign")
    assign._folder.value = clinic
    assert {r: c.value for r, c in assign._roles.items()} == {"t1": "T1_pre.nii.gz", "t1ce": "T1_post.nii.gz", "t2": "AX_T2.nii.gz", "flair": "FLAIR.nii.gz", "seg": "(none)"}
    assign.open_case()
    qtbot.waitUntil(lambda: assign.worker is None and len(viewer.layers) == 4, timeout=60_000)
    assign.open_case()  # opened once more: nothing added twice
    qtbot.waitUntil(lambda: assign.worker is None, timeout=60_000)
    assert len(viewer.layers) == 4 and assign._status.value.startswith("open already")
    again = make_napari_viewer()
    assert len(again.open(str(clinic), plugin="napari-sevnet")) == 4, "the assignment is remembered for the folder"
    assert not list(clinic.glob("*.json")), "nothing is written into the data folder"
    config = json.loads((tmp_path / "config" / "assignments.json").read_text(encoding="utf-8"))
    assert config[str(clinic.resolve())]["t1ce"] == "T1_post.nii.gz"
    assert assign._forget.enabled
    assign._roles["t2"].value = "(none)"
    assign._forget.changed.emit(True)  # the choice forgotten: gone from the settings, the files proposed again
    assert str(clinic.resolve()) not in json.loads((tmp_path / "config" / "assignments.json").read_text(encoding="utf-8"))
    assert assign._roles["t2"].value == "AX_T2.nii.gz" and not assign._forget.enabled
    assert assign._status.value.startswith("Forgot the choice remembered for this folder. 4 NIfTI file(s)")
    with pytest.raises(Exception, match="Assign sequences"):  # read by its names again
        load_assigned_or_named(clinic)
    assign.open_case()  # and remembered again
    qtbot.waitUntil(lambda: assign.worker is None, timeout=60_000)
    assert assign._forget.enabled and "remembered the choice" in assign._status.value

    # its mask corrected, then lost (a crash, the layers deleted): opened with the dock again, the correction comes back
    from napari_sevnet import recovery

    warned = []
    monkeypatch.setattr("napari.utils.notifications.show_warning", warned.append)
    (clinic / "lesion_mask.nii.gz").write_bytes((source / "phantom_0003_seg.nii.gz").read_bytes())
    viewer.layers.clear()
    (clinic / "T1_pre.nii.gz").rename(clinic / "T1_pre_old.nii.gz")  # and the T1 renamed: its choice gone, not proposed again
    assign._roles["flair"].value = "AX_T2.nii.gz"  # a choice of the user's (a wrong one, put right below): it stays
    assign._relist.changed.emit(True)  # the folder listed again, with the mask
    assert {r: c.value for r, c in assign._roles.items()} == {"t1": "T1_pre_old.nii.gz", "t1ce": "T1_post.nii.gz", "t2": "AX_T2.nii.gz", "flair": "AX_T2.nii.gz",
                                                                 "seg": "lesion_mask.nii.gz"}, "the new files proposed, the user's choices kept"
    assert "new: lesion_mask.nii.gz, T1_pre_old.nii.gz" in assign._status.value
    assign._roles["flair"].value, assign._remember.value = "FLAIR.nii.gz", False
    assert assign.open_case() is assign.open_case(), "Open pressed twice while it reads: the case opens once"
    qtbot.waitUntil(lambda: assign.worker is None and len(viewer.layers) == 7, timeout=60_000)
    viewer.layers[-1].paint((24, 2, 2), 1)  # ET, and so TC and WT
    recovery.flush()
    viewer.layers.clear()  # napari resets the dock's choices as layers go: the files listed and chosen stay
    assign.open_case()
    qtbot.waitUntil(lambda: assign.worker is None and len(viewer.layers) == 10, timeout=60_000)
    recovered = [layer for layer in viewer.layers if layer.name.endswith("(recovered)")]
    assert len(recovered) == 3 and all(np.asarray(layer.data)[24, 2, 2] for layer in recovered)
    assert warned and "were recovered" in warned[-1]

    # the clinic's own mask painted 0/255: the case opens with it beside the scans, said, as the reader does
    seg = nib.load(clinic / "lesion_mask.nii.gz")
    nib.save(nib.Nifti1Image((np.asanyarray(seg.dataobj) > 0).astype(np.uint8) * 255, seg.affine), clinic / "lesion_mask.nii.gz")
    viewer.layers.clear()
    assign.open_case()
    qtbot.waitUntil(lambda: assign.worker is None, timeout=60_000)
    assert "clinic whole tumour (lesion_mask.nii.gz, one label)" in [layer.name for layer in viewer.layers]
    assert any("lesion_mask.nii.gz holds one label (255)" in w for w in warned), warned

    # a scanner's export with a repeat of a sequence in another plane: proposed by series number, the repeat named
    siemens = tmp_path / "siemens"
    siemens.mkdir()
    for name in ("3_t1_mprage_sag", "5_t2_tse_tra", "6_t2_tirm_tra_dark-fluid", "9_t1_mprage_sag_KM", "10_t2_fl2d_tra_hemo", "14_t1_se_tra"):
        (siemens / f"{name}.nii.gz").write_bytes(b"")
    assign._folder.value = siemens
    assert assign._roles["t1"].value == "3_t1_mprage_sag.nii.gz" and assign._roles["t2"].value == "5_t2_tse_tra.nii.gz"
    assert "also named like a sequence: 14_t1_se_tra.nii.gz (T1)." in assign._status.value


def test_the_writers_own_message_reaches_the_user_and_images_may_be_selected(make_napari_viewer, tmp_path):
    from napari_sevnet.errors import NotSaved

    case = write_phantom(tmp_path / "cases", seed=3, shape=(48, 56, 48))
    viewer = make_napari_viewer()
    layers = viewer.open(str(case), plugin="napari-sevnet")
    viewer.layers.selection = {layers[4]}
    with pytest.raises(NotSaved, match="missing TC, ET"):
        viewer.layers.save(str(tmp_path / "only_wt.nii.gz"), selected=True, plugin="napari-sevnet")
    viewer.layers.selection = set(layers)  # the scans and the masks
    out = tmp_path / "all_seg.nii.gz"
    assert viewer.layers.save(str(out), selected=True, plugin="napari-sevnet") == [str(out)]
    layers[4].data[20, 10:20, 10:20] = 1  # more edits, then saved again: the result's own file is replaced
    assert viewer.layers.save(str(out), selected=True, plugin="napari-sevnet") == [str(out)]
    assert np.asanyarray(nib.load(out).dataobj).astype(bool).sum() == layers[4].data.astype(bool).sum()
    other = viewer.open(str(write_phantom(tmp_path / "cases", seed=4, shape=(48, 56, 48))), plugin="napari-sevnet")
    viewer.layers.selection = set(other[4:])
    with pytest.raises(NotSaved, match="already exists, and it is neither this result's own earlier save"):
        viewer.layers.save(str(out), selected=True, plugin="napari-sevnet")  # another result never replaces it
    viewer.layers.selection = set(layers[4:])
    edited = nib.load(out)
    nib.save(nib.Nifti1Image(np.asanyarray(edited.dataobj), edited.affine), out)  # changed by another program since
    with pytest.raises(NotSaved, match="neither this result's own earlier save nor the napari-sevnet mask it was read from"):
        viewer.layers.save(str(out), selected=True, plugin="napari-sevnet")
    with pytest.raises(NotSaved, match="neither this result's own earlier save nor the napari-sevnet mask it was read from"):
        viewer.layers.save(str(case / f"{case.name}_seg.nii.gz"), selected=True, plugin="napari-sevnet")  # the case's own mask
    viewer.layers.selection = {layers[4], other[5], other[6]}  # WT of one patient, TC and ET of another: never one file
    with pytest.raises(NotSaved, match=r"come from more than one result \(phantom_0003 WT \(file\), phantom_0004 TC"):
        viewer.layers.save(str(tmp_path / "mixed_seg.nii.gz"), selected=True, plugin="napari-sevnet")
    viewer.layers.selection = {*layers[4:], *other[4:]}  # two whole results
    with pytest.raises(NotSaved, match="more than one result"):
        viewer.layers.save(str(tmp_path / "mixed_seg.nii.gz"), selected=True, plugin="napari-sevnet")
    assert not (tmp_path / "mixed_seg.nii.gz").exists()

    # a correction saved beside the scans, opened another day, corrected further and saved back: its own file
    from napari_sevnet.layers import LayerInfo

    corrected = case / "corrected_seg.nii.gz"
    viewer.layers.selection = set(layers[4:])
    viewer.layers.save(str(corrected), selected=True, plugin="napari-sevnet")
    later = make_napari_viewer()
    reopened = [layer for layer in later.open(str(corrected), plugin="napari-sevnet") if LayerInfo.from_layer(layer).region]
    reopened[0].data[30, 10:20, 10:20] = 1
    later.layers.selection = set(reopened)
    assert later.layers.save(str(corrected), selected=True, plugin="napari-sevnet") == [str(corrected)]
    assert (np.asanyarray(nib.load(corrected).dataobj) > 0).sum() == (reopened[0].data > 0).sum()
    other_tool = case / "expert2_seg.nii.gz"  # another tool's file, opened the same way: never replaced
    nib.save(nib.Nifti1Image(np.asanyarray(nib.load(corrected).dataobj), nib.load(corrected).affine), other_tool)
    later.layers.clear()
    reopened = [layer for layer in later.open(str(other_tool), plugin="napari-sevnet") if LayerInfo.from_layer(layer).region]
    later.layers.selection = set(reopened)
    with pytest.raises(NotSaved, match="nor the napari-sevnet mask it was read from"):
        later.layers.save(str(other_tool), selected=True, plugin="napari-sevnet")


def test_the_window_fits_a_1000_pixel_screen_with_every_dock_open(qtbot, make_napari_viewer):
    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    docks = {}
    for name in ("Segment", "Attention", "Export", "Fine-tune", "Worklist", "Correct", "Read-out", "Prepare raw scans", "Assign sequences"):
        dock, widget = viewer.window.add_plugin_dock_widget("napari-sevnet", name)  # one by one, from the Plugins menu
        docks[name] = (dock, widget)
        qtbot.wait(50)
    window.resize(1600, 1000)
    qtbot.wait(200)
    assert window.height() <= 1000 and window.minimumSizeHint().height() <= 1000
    dock, finetune = docks["Fine-tune"]
    dock.raise_()
    qtbot.wait(100)
    button = finetune._use.native
    bottom = button.mapTo(window, button.rect().bottomLeft()).y()
    assert button.isVisible() and bottom <= window.height(), f"'Use this model' ends at y={bottom}"


@pytest.mark.parametrize("after, warned", [(0.6, True), (0.9, False)])
def test_a_finetune_that_ends_worse_than_its_starting_model_says_so(make_napari_viewer, monkeypatch, tmp_path, after, warned):
    from napari_sevnet.widgets.finetune import FineTuneWidget
    from training import events

    warnings = []
    monkeypatch.setattr("napari.utils.notifications.show_warning", warnings.append)
    finetune = FineTuneWidget(make_napari_viewer())
    finetune.process = object()  # a run in flight, fed the trainer's progress lines below

    def dice(value):
        return {r: value for r in ("WT", "TC", "ET")}

    lines = [events.event(events.START, run_dir=str(tmp_path), epochs=2, start_epoch=0, train_cases=1, val_cases=1, validation="training_cases", device="cpu"),
             events.event(events.VALIDATION, epoch=0, dice=dice(0.8), hd95=dice(5.0), mean_dice=0.8),
             events.event(events.VALIDATION, epoch=2, dice=dice(after), hd95=dice(5.0), mean_dice=after),
             events.event(events.DONE, run_dir=str(tmp_path), best=str(tmp_path / "best.json"), best_mean_dice=after, seconds=1.0)]
    for line in lines:
        finetune._on_line(json.dumps(line))
    finetune._finish(0)
    assert ("worse than the starting model" in finetune._status.value) is warned and bool(warnings) is warned
    assert warned or "maybe worse on other patients" in finetune._status.value, "better on its own cases is not better on the next patient's"
    if warned:
        assert "0.600 after against 0.800 before" in warnings[0] and "Dice on the exported cases" in warnings[0]
    assert finetune._use.enabled, "the user may still choose the new model"


def test_the_dock_starts_at_the_learning_rate_that_harmed_other_patients_least_and_keeps_the_users(make_napari_viewer, tmp_path):
    """benchmarks.finetune_heldout: 1e-4 harmed other patients' scans less than 1e-3, with replay or without (README)."""
    from napari_sevnet.widgets.finetune import FineTuneWidget

    finetune = FineTuneWidget(make_napari_viewer())
    assert finetune._lr.value == "0.0001" and (finetune._epochs.value, finetune._steps.value) == (8, 20), "finetune.yaml's, as measured"
    finetune._replay.value = tmp_path
    assert finetune._lr.value == "0.0001", "the same rate with replay"
    finetune._lr.value = "5e-4"  # the user's own choice is never changed
    finetune._replay.value = None
    assert finetune._lr.value == "5e-4"


@pytest.mark.parametrize("others_after, harmed, learnt", [(0.85, True, 2), (0.89, False, 0), (0.89, False, 1), (0.89, False, 2)])
def test_a_finetune_that_harms_the_replay_cases_it_kept_out_says_so_at_its_best_epoch(make_napari_viewer, monkeypatch, tmp_path, others_after, harmed, learnt):
    """Better on the exported case is not better for the next patient: the run's kept-out replay cases say which it is."""
    from napari_sevnet.widgets.finetune import FineTuneWidget
    from training import events

    warnings, infos = [], []
    monkeypatch.setattr("napari.utils.notifications.show_warning", warnings.append)
    monkeypatch.setattr("napari.utils.notifications.show_info", infos.append)
    finetune = FineTuneWidget(make_napari_viewer())
    finetune.process = object()  # a run in flight, fed the trainer's progress lines below

    def dice(value):
        return {r: value for r in ("WT", "TC", "ET")}

    kept_out = ["Brats18_CBICA_AME_1", "Brats18_TCIA01_201_1"]
    lines = [events.event(events.START, run_dir=str(tmp_path), epochs=2, start_epoch=0, train_cases=1, val_cases=1, validation="training_cases", device="cpu")]
    for epoch, own, others in [(0, 0.7, 0.9), (1, 0.8, 0.5), (2, 0.85, others_after)]:  # the best epoch (2) decides, not epoch 1's dip
        lines += [events.event(events.VALIDATION, epoch=epoch, dice=dice(own), hd95=dice(5.0), mean_dice=own),
                  events.event(events.OTHERS, epoch=epoch, dice=dice(others), mean_dice=others, cases=kept_out, learnt_by_start=learnt)]
    lines.append(events.event(events.DONE, run_dir=str(tmp_path), best=str(tmp_path / "best.json"), best_mean_dice=0.85, seconds=1.0))
    for line in lines:
        finetune._on_line(json.dumps(line))
    assert "Dice on other patients (Brats18_CBICA_AME_1, Brats18_TCIA01_201_1, kept out of the replay) WT 0.500" in finetune.log.toPlainText()
    assert sum(line.get_linestyle() == "--" for line in finetune.figure.axes[1].lines) == 3, "the kept-out cases' Dice is plotted per region"
    assert finetune.figure.axes[1].get_ylabel() == "Dice on the exported cases (solid)"
    finetune._finish(0)
    untold = not harmed and learnt == 2  # every kept-out case was learnt by the start: measured held while new patients fell
    assert ("worse on other patients" in finetune._status.value) is harmed and bool(warnings) is (harmed or untold)
    learnt_words = f"{learnt} of them learnt by the starting model" if learnt else "none learnt by the starting model"
    assert f"2 original case(s) kept out of the replay ({learnt_words}), WT 0.90 -> {others_after:.2f}" in finetune._status.value
    if untold:
        assert "the check cannot tell how new patients fare" in finetune._status.value and "add labelled cases it never trained on" in warnings[-1]
    elif not harmed:
        assert "other patients held" in finetune._status.value and "a few cases say little" in infos[-1]
    assert finetune._use.enabled, "the user may still choose the new model"


def test_a_finetune_on_several_exported_cases_says_which_it_keeps_out_to_validate(make_napari_viewer, tmp_path):
    """From five exported cases on the trainer validates on a fifth of them, fewer are all trained on: the log says which."""
    from napari_sevnet.widgets.finetune import FineTuneWidget
    from training import events

    finetune = FineTuneWidget(make_napari_viewer())
    finetune.process = object()
    finetune._on_line(json.dumps(events.event(events.START, run_dir=str(tmp_path), epochs=2, start_epoch=0, train_cases=4, val_cases=1,
                                              validation="held_out", device="cpu")))
    assert "1 of the exported cases kept out of training to validate it" in finetune.log.toPlainText()
    assert "training on 4 case(s)" in finetune._status.value
    finetune._on_line(json.dumps(events.event(events.START, run_dir=str(tmp_path), epochs=2, start_epoch=0, train_cases=2, val_cases=2,
                                              validation="training_cases", device="cpu")))
    assert "all 2 exported cases trained on, and validated on themselves" in finetune.log.toPlainText()
    finetune.process = None  # no real trainer to stop when the viewer closes


def test_a_one_label_mask_under_a_brats_name_is_said_at_opening_and_not_exported_as_necrosis(qtbot, make_napari_viewer, tmp_path, monkeypatch):
    """A clinic's whole-tumour mask painted with one label and saved as <case>_seg: BraTS labels read it as necrosis alone
    (WT = TC, no ET). Opening it says so; the Export dock refuses it until its core is drawn, so training never learns it."""
    from napari_sevnet.widgets.export import ExportWidget

    warned, errors = [], []
    monkeypatch.setattr("napari.utils.notifications.show_warning", warned.append)
    monkeypatch.setattr("napari.utils.notifications.show_error", errors.append)
    folder = write_phantom(tmp_path / "cases", seed=3, shape=(48, 56, 48))
    seg = folder / f"{folder.name}_seg.nii.gz"
    img = nib.load(seg)
    nib.save(nib.Nifti1Image((np.asanyarray(img.dataobj) > 0).astype(np.uint8), img.affine), seg)
    viewer = make_napari_viewer()
    layers = viewer.open(str(folder), plugin="napari-sevnet")
    assert any(f"{seg.name} holds label 1 alone, read by its BraTS name as necrosis" in w for w in warned), warned
    export = ExportWidget(viewer)
    export._result.value = layers[4]
    export._dataset.value = tmp_path / "ds"
    assert export.export() is None and "its mask holds label 1 alone" in errors[-1] and "sevnet-export --mask-labels 2021" in errors[-1]
    assert not (tmp_path / "ds").exists()
    layers[5].data[:] = 0  # the core drawn anew (here: none)
    layers[5].refresh()
    worker = export.export()
    assert worker is not None
    qtbot.waitUntil(lambda: export.worker is None, timeout=60_000)
    assert (tmp_path / "ds" / folder.name).is_dir()


def test_a_case_whose_mask_holds_one_label_opens_with_that_mask_beside_it_as_no_result(make_napari_viewer, tmp_path, monkeypatch):
    """A clinic's FLAIR-abnormality mask painted 0/255 refused the whole case; now the scans open and the mask shows as
    the whole tumour to compare with, with what it is said, while Export and the result lists never take it."""
    from napari_sevnet.layers import LayerInfo, layer_groups
    from napari_sevnet.widgets.export import ExportWidget

    warned = []
    monkeypatch.setattr("napari.utils.notifications.show_warning", warned.append)
    folder = write_phantom(tmp_path / "cases", seed=3, shape=(48, 56, 48))
    seg = folder / f"{folder.name}_seg.nii.gz"
    img = nib.load(seg)
    whole = np.asanyarray(img.dataobj) > 0
    nib.save(nib.Nifti1Image(whole.astype(np.uint8) * 255, img.affine), seg)
    viewer = make_napari_viewer()
    layers = viewer.open(str(folder), plugin="napari-sevnet")
    assert [layer.name for layer in layers][4:] == [f"{folder.name} whole tumour ({seg.name}, one label)"]
    assert LayerInfo.from_layer(layers[4]) is None and int(np.count_nonzero(layers[4].data)) == int(whole.sum())
    assert any(f"{seg.name} holds one label (255), not BraTS labels" in w for w in warned), warned
    assert ExportWidget(viewer).result_wt_layers() == [] and len(layer_groups(viewer.layers)) == 1
