"""Raw series to the model's input and back: registration, resampling, the inverse mapping, skull stripping, sharding."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_sevnet.errors import InputError
from napari_sevnet.metrics import dice
from napari_sevnet.phantom import write_phantom
from tests.conftest import real_case

BIN = Path(sys.executable).parent
SHAPE = (64, 80, 72)


def rigid(angle_deg: float, shift_mm):
    import SimpleITK as sitk

    transform = sitk.Euler3DTransform()
    transform.SetRotation(0.0, 0.0, np.deg2rad(angle_deg))
    transform.SetTranslation(tuple(float(v) for v in shift_mm))
    return transform


def make_raw(folder: Path, out: Path, seed: int = 0) -> Path:
    """A phantom as a clinic would have it: each series but T1ce moved rigidly, each on its own anisotropic grid."""
    from benchmarks.raw_scans import make_raw as made_raw

    return made_raw(folder, out, seed)


def test_registration_recovers_a_known_rigid_motion_within_1_mm_and_1_degree(tmp_path):
    import SimpleITK as sitk

    from napari_sevnet.prepare import register_rigid

    folder = write_phantom(tmp_path / "p", seed=3, shape=SHAPE)
    fixed = sitk.ReadImage(str(next(folder.glob("*_flair.nii.gz"))), sitk.sitkFloat32)
    truth = rigid(5.0, (4.0, -3.0, 2.0))
    truth.SetCenter(fixed.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in fixed.GetSize()]))
    moving = sitk.Resample(fixed, fixed, truth.GetInverse(), sitk.sitkLinear, 0.0)  # the head moved by `truth`
    found = register_rigid(fixed, moving)
    points = [fixed.TransformIndexToPhysicalPoint([int(v) for v in idx]) for idx in np.argwhere(sitk.GetArrayFromImage(fixed) > 0)[::997, ::-1]]
    errors = [np.linalg.norm(np.subtract(found.TransformPoint(p), truth.TransformPoint(p))) for p in points]  # fixed -> moving
    assert max(errors) < 1.0, f"largest misplacement {max(errors):.2f} mm"
    angle = np.rad2deg(abs(sitk.Euler3DTransform(sitk.CompositeTransform(found).GetNthTransform(0)).GetAngleZ() - np.deg2rad(5.0)))
    assert angle < 1.0


def test_a_raw_case_is_prepared_and_a_mask_survives_the_way_back(tmp_path):
    from napari_sevnet.io import load_case
    from napari_sevnet.prepare import prepare_case, regions_to_native

    folder = write_phantom(tmp_path / "p", seed=3, shape=SHAPE)
    raw = make_raw(folder, tmp_path / "raw" / "patient7")
    prepared = prepare_case(raw, tmp_path / "prepared", strip=False)
    case = load_case(prepared.folder)
    record = json.loads((prepared.folder / "prepare.json").read_text(encoding="utf-8"))
    assert case.spacing == (1.0, 1.0, 1.0) and record["reference"] == "t1ce" and set(record["transforms"]) == {"t1", "t1ce", "t2", "flair"}
    assert record["bias_field"] == "N4" and record["timings_s"]["bias_field_s"] > 0  # on by default
    native = nib.load(str(prepared.native_reference))
    # the phantom's own mask, taken to the prepared grid through its file, then back: the round trip
    truth = load_case(folder).regions
    import SimpleITK as sitk

    seg = sitk.ReadImage(str(next(folder.glob("*_seg.nii.gz"))), sitk.sitkFloat32)
    on_native = sitk.GetArrayFromImage(sitk.Resample(seg > 0, sitk.ReadImage(str(prepared.native_reference)), sitk.Euler3DTransform(), sitk.sitkNearestNeighbor, 0.0))
    on_prepared = sitk.GetArrayFromImage(sitk.Resample(sitk.Cast(seg > 0, sitk.sitkFloat32), sitk.ReadImage(str(prepared.folder / "patient7_t1ce.nii.gz")), sitk.Euler3DTransform(), sitk.sitkLinear, 0.0)) > 0.5
    from napari_sevnet.io import grid_of

    canonical = grid_of(nib.load(str(prepared.folder / "patient7_t1ce.nii.gz"))).to_canonical(np.transpose(on_prepared, (2, 1, 0)))
    back = regions_to_native(np.stack([canonical] * 3), case.grid, prepared.folder)
    assert back.shape[1:] == native.shape and dice(back[0], np.transpose(on_native, (2, 1, 0)) > 0) >= 0.95
    native_ml, prepared_ml = back[0].sum() * np.prod(native.header.get_zooms()[:3]) / 1000, canonical.sum() / 1000
    assert abs(native_ml - prepared_ml) / prepared_ml < 0.03, (native_ml, prepared_ml, native.header.get_zooms())
    assert truth.any()
    with pytest.raises(InputError, match="already exists"):
        prepare_case(raw, tmp_path / "prepared", strip=False)
    # a mask corrected in napari on the prepared case, saved through the plugin's writer: also on the native grid
    from napari_sevnet.layers import LayerInfo, write_regions

    info = LayerInfo(case_id=case.case_id, grid=case.grid, paths={k: str(v) for k, v in case.paths.items()})
    layers = [(canonical, {"name": r, "metadata": info.but(region=r).to_metadata()}, "labels") for r in ("WT", "TC", "ET")]
    written = write_regions(str(tmp_path / "corrected_seg.nii.gz"), layers)
    assert [Path(w).name for w in written] == ["corrected_seg.nii.gz", "corrected_seg_native.nii.gz"]
    saved = nib.load(written[1])
    assert saved.shape == native.shape and np.allclose(saved.affine, native.affine)
    assert abs(float((np.asarray(saved.dataobj) > 0).sum()) * np.prod(native.header.get_zooms()[:3]) / 1000 - prepared_ml) / prepared_ml < 0.03


def test_a_folder_of_raw_series_given_as_a_case_is_pointed_to_the_preparation(tmp_path, random_checkpoint, capsys):
    """Series on their own grids under scanners' names: not 'rename them or assign them', which would only lead to the grid error next."""
    from napari_sevnet.cli import predict_main

    raw = make_raw(write_phantom(tmp_path / "p", seed=3, shape=SHAPE), tmp_path / "raw" / "p14")
    assert predict_main([str(raw), "-o", str(tmp_path / "out"), "--checkpoint", str(random_checkpoint)]) == 1
    err = capsys.readouterr().err
    assert "These look like raw series, each on its own grid" in err and "sevnet-predict --prepare FOLDER" in err and "Rename them" not in err


def test_a_raw_series_with_voxels_without_a_value_is_prepared_and_says_so(tmp_path):
    """SimpleITK reads NaN as 0 without a word: the preparation says it, as opening a case does."""
    from napari_sevnet.prepare import prepare_case, voxels_without_value

    raw = make_raw(write_phantom(tmp_path / "p", seed=3, shape=SHAPE), tmp_path / "raw" / "p13")
    flair = next(raw.glob("*FLAIR*"))
    image = nib.load(flair)
    data = np.asanyarray(image.dataobj).astype(np.float32)
    data[:, :, :2] = np.nan  # two slices the field of view did not reach
    nib.save(nib.Nifti1Image(data, image.affine), flair)
    assert voxels_without_value(next(raw.glob("*T1*"))) is None
    prepared = prepare_case(raw, tmp_path / "prepared", strip=False, bias_field=False)
    (warning,) = prepared.warnings
    assert warning.startswith(f"{flair.name}: {2 * data.shape[0] * data.shape[1]:,} voxels") and "have no value (NaN)" in warning
    assert f"warning: {warning}" in prepared.summary


def test_sevnet_predict_on_a_prepared_case_also_writes_its_mask_on_the_native_grid(tmp_path, random_checkpoint):
    """As napari's Save does: a clinician who prepared first and segments later still gets the mask on the scan as acquired."""
    from napari_sevnet.cli import predict_main
    from napari_sevnet.prepare import prepare_case

    raw = make_raw(write_phantom(tmp_path / "p", seed=3, shape=SHAPE), tmp_path / "raw" / "p12")
    prepared = prepare_case(raw, tmp_path / "prepared", strip=False, bias_field=False)
    args = [str(prepared.folder), "--checkpoint", str(random_checkpoint), "--device", "cpu"]
    assert predict_main([*args, "-o", str(tmp_path / "out")]) == 0
    native, reference = nib.load(tmp_path / "out" / "p12_seg_native.nii.gz"), nib.load(prepared.native_reference)
    assert native.shape == reference.shape and np.allclose(native.affine, reference.affine)
    report = json.loads((tmp_path / "out" / "p12_report.json").read_text(encoding="utf-8"))
    assert report["segmentation_native"] == str(tmp_path / "out" / "p12_seg_native.nii.gz")
    prepared.native_reference.rename(tmp_path / "moved.nii.gz")  # the raw series went elsewhere: said, not a failure
    assert predict_main([*args, "-o", str(tmp_path / "out2")]) == 0
    report = json.loads((tmp_path / "out2" / "p12_report.json").read_text(encoding="utf-8"))
    assert "segmentation_native" not in report and any("no longer at" in n for n in report["notes"])


@pytest.mark.parametrize(("name", "role"), [
    ("3_t1_mprage_sag_p2_iso.nii.gz", "t1"), ("7_t1_mprage_sag_p2_iso_post.nii.gz", "t1ce"), ("MPRAGE.nii.gz", "t1"),
    ("t1_mprage_tra_KM.nii.gz", "t1ce"), ("T1W_3D_TFE_Gado.nii.gz", "t1ce"), ("sT1W_3D_TFE_+C.nii.gz", "t1ce"), ("Ax_T1_FSPGR_3D_C+.nii.gz", "t1ce"),
    ("T1_mprage_nativ.nii.gz", "t1"), ("t2_space_dark-fluid_sag.nii.gz", "flair"), ("3D_T2_SPACE_DarkFluid.nii.gz", "flair"),
    ("t2_tse_tra.nii.gz", "t2"), ("AX_T2_FLAIR.nii.gz", "flair"), ("ep2d_diff_3scan_trace_ADC.nii.gz", None),
    # T2*-weighted gradient echo and susceptibility series are no T2 (spin echo): proposed as T2 they put a scan the
    # model never saw where it reads T2
    ("10_t2_fl2d_tra_hemo.nii.gz", None), ("8_t2_swi_tra.nii.gz", None), ("12_t2_swi_tra_Pha.nii.gz", None), ("AX_T2*_GRE.nii.gz", None),
    ("T2_FFE.nii.gz", None), ("Ax_SWAN.nii.gz", None), ("t2_blade_tra.nii.gz", "t2"),
])
def test_vendors_series_names_are_proposed_for_their_sequence(name, role):
    """The names scanners give their series (Siemens, GE, Philips; German protocols' KM for contrast): a 3D FLAIR named
    'dark-fluid' proposed as T2 would put FLAIR where the model reads T2 and leave FLAIR empty."""
    from napari_sevnet.assignments import role_from_name

    assert role_from_name(name) == role


def test_a_siemens_export_is_proposed_by_series_number_and_its_other_candidates_are_named(tmp_path, monkeypatch, capsys):
    """dcm2niix names series '<number>_<protocol>': in text order '10_t2_fl2d_tra_hemo' (T2*) came before '5_t2_tse_tra' and
    was proposed as T2, and '14_t1_se_tra' before '3_t1_mprage_sag'; the files a sequence's name also fits are named."""
    from pathlib import Path

    from napari_sevnet.assignments import guess_roles
    from napari_sevnet.cli import assign_main

    names = ["2_localizer", "3_t1_mprage_sag", "5_t2_tse_tra", "6_t2_tirm_tra_dark-fluid", "7_ep2d_diff_tra_ADC", "8_t2_swi_tra",
             "9_t1_mprage_sag_KM", "10_t2_fl2d_tra_hemo", "14_t1_se_tra", "15_t1_se_tra_KM"]
    proposal = {role: path.name for role, path in guess_roles([Path(f"{n}.nii.gz") for n in names]).items()}
    assert proposal == {"t1": "3_t1_mprage_sag.nii.gz", "t2": "5_t2_tse_tra.nii.gz", "flair": "6_t2_tirm_tra_dark-fluid.nii.gz", "t1ce": "9_t1_mprage_sag_KM.nii.gz"}
    folder = tmp_path / "patient"
    folder.mkdir()
    for n in names:
        (folder / f"{n}.nii.gz").write_bytes(b"")  # listed by name only
    monkeypatch.setenv("SEVNET_CONFIG_DIR", str(tmp_path / "config"))
    assert assign_main([str(folder)]) == 0
    out = capsys.readouterr().out
    assert out.index("  3_t1_mprage_sag.nii.gz") < out.index("  10_t2_fl2d_tra_hemo.nii.gz"), "listed in series order"
    assert "  14_t1_se_tra.nii.gz  -> not used (named like T1 too)" in out and "  15_t1_se_tra_KM.nii.gz  -> not used (named like T1ce too)" in out
    assert "  10_t2_fl2d_tra_hemo.nii.gz  -> not used\n" in out and "  5_t2_tse_tra.nii.gz  -> T2\n" in out


def test_series_that_cannot_be_prepared_are_refused_by_name(tmp_path):
    import SimpleITK as sitk

    from napari_sevnet.prepare import prepare_case

    folder = write_phantom(tmp_path / "p", seed=3, shape=SHAPE)
    raw = make_raw(folder, tmp_path / "raw" / "p8")
    localizer = raw / "AX_T2_TSE.nii.gz"
    image = sitk.ReadImage(str(localizer))
    sitk.WriteImage(image[:, :, image.GetSize()[2] // 2 : image.GetSize()[2] // 2 + 1], str(localizer))
    with pytest.raises(InputError, match="localizer"):
        prepare_case(raw, tmp_path / "out", strip=False)
    slab = raw / "AX_T2_TSE.nii.gz"  # a slab of five slices through the head: too little of it to register the rest to
    sitk.WriteImage(image[:, :, image.GetSize()[2] // 2 : image.GetSize()[2] // 2 + 5], str(slab))
    with pytest.raises(InputError, match="field of view"):
        prepare_case(raw, tmp_path / "out2", strip=False)
    with pytest.raises(InputError, match="is a file: give the folder"):  # a series given where its folder was meant: no traceback
        prepare_case(slab, tmp_path / "out3", strip=False)
    with pytest.raises(InputError, match=r"reference sequence T1 is not among the series found: .*AX_T2_TSE.*--reference"):
        prepare_case({"t2": slab}, tmp_path / "out4", reference="t1", strip=False)


def test_sevnet_prepare_says_what_it_lacks_and_refuses_before_minutes_of_work(tmp_path, monkeypatch):
    from napari_sevnet import prepare

    folder = write_phantom(tmp_path / "p", seed=3, shape=SHAPE)
    raw = make_raw(folder, tmp_path / "raw" / "p9")
    flair = next(p for p in raw.iterdir() if "FLAIR" in p.name.upper())
    flair.rename(tmp_path / flair.name)  # the clinic sent three series
    shutil.copy(raw / "AX_T2_TSE.nii.gz", raw / "AX_T2_TSE_repeat.nii.gz")  # one of them twice

    def run(*args):
        result = subprocess.run([str(BIN / "sevnet-prepare"), *map(str, args)], capture_output=True, text=True, timeout=300)
        assert "Traceback" not in result.stderr, result.stderr
        return result

    listed = run(raw, "--list")  # what would be taken, before minutes of work (no -o needed to look)
    assert listed.returncode == 0 and f"{raw}: AX_T2_TSE.nii.gz  -> t2" in listed.stdout and "T1_AX_POST_GAD.nii.gz  -> t1ce" in listed.stdout, listed.stdout
    done = run(raw, "-o", tmp_path / "out", "--no-skull-strip", "--no-bias-field")
    assert done.returncode == 0 and "no FLAIR series found, prepared without" in done.stdout, done.stdout
    assert "not used: AX_T2_TSE_repeat.nii.gz (T2: AX_T2_TSE.nii.gz taken)" in done.stdout, "which of two T2 series was taken is said"
    assert json.loads((tmp_path / "out" / "p9" / "prepare.json").read_text(encoding="utf-8"))["unused_series"] == ["AX_T2_TSE_repeat.nii.gz (T2: AX_T2_TSE.nii.gz taken)"]
    (tmp_path / "a_file").write_text("mine", encoding="utf-8")
    refused = run(raw, "-o", tmp_path / "a_file", "--no-skull-strip")
    assert refused.returncode == 1 and "a_file: is a file" in refused.stderr
    assert (tmp_path / "a_file").read_text(encoding="utf-8") == "mine"
    refused = run(raw, "-o", tmp_path / "out2", "--series", "t1ce=1.2.3", "--no-skull-strip")
    assert refused.returncode == 1 and "by UID is for a folder of DICOM files" in refused.stderr, "a NIfTI folder would have ignored --series"

    def no_work(*_):
        raise AssertionError("read the series although the case's output folder exists")

    monkeypatch.setattr(prepare, "read_series", no_work)
    with pytest.raises(InputError, match="already exists"):
        prepare.prepare_case(raw, tmp_path / "out", strip=False)


def test_sevnet_predict_over_two_ranks_does_each_case_once(tmp_path, random_checkpoint):
    cases = [write_phantom(tmp_path / "cases", seed=s, shape=(32, 40, 32)) for s in range(4)]
    runs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank)}
        runs.append(subprocess.Popen([str(BIN / "sevnet-predict"), str(tmp_path / "cases"), "-o", str(tmp_path / "out"), "--checkpoint", str(random_checkpoint), "--device", "cpu"], env=env, stderr=subprocess.PIPE, text=True))
    assert all(run.wait(timeout=300) == 0 for run in runs), [run.stderr.read() for run in runs]
    assert sorted(p.name for p in (tmp_path / "out").glob("*_report.json")) == sorted(f"{c.name}_report.json" for c in cases)


@pytest.mark.slow
def test_the_real_raw_case_is_prepared_skull_stripped_and_segmented_onto_its_own_grid(tmp_path):
    source = real_case("TCIA-RAW-FG-6692") / "native"
    result = subprocess.run([str(BIN / "sevnet-predict"), "--prepare", str(source), "-o", str(tmp_path / "out")], capture_output=True, text=True, timeout=3000)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "out" / "native_report.json").read_text(encoding="utf-8"))
    assert 900 < report["brain_ml"] < 2000, "a skull-stripped adult brain"
    assert report["prepare_timings_s"]["bias_field_s"] > 0, "N4 is part of the preparation"
    seg = nib.load(report["segmentation"])
    assert seg.shape == nib.load(report["native_reference"]).shape and np.allclose(seg.affine, nib.load(report["native_reference"]).affine)
    native, prepared = report["volumes_ml_native"]["WT"], report["volumes_ml_prepared"]["WT"]
    # the native grid has 5.5 mm slices: a fixed cut at 0.5 moved the volume by 10 % (41 vs 45 mL in one CI run)
    assert abs(native - prepared) / prepared < 0.03, (native, prepared)


@pytest.mark.qt
def test_the_reader_offers_preparation_and_the_prepare_dock_opens_the_prepared_case(qtbot, make_napari_viewer, tmp_path, monkeypatch):
    from napari_sevnet.widgets.prepare import PrepareWidget

    raw = make_raw(write_phantom(tmp_path / "p", seed=3, shape=SHAPE), tmp_path / "raw" / "p10")
    warned = []
    monkeypatch.setattr("napari.utils.notifications.show_warning", warned.append)
    assert make_napari_viewer().open(str(raw), plugin="napari-sevnet") == []  # a clinic's series names: the grids are said,
    assert warned[-1].startswith("p10: its scans lie each on its own grid") and "BraTS" not in warned[-1], warned  # not the names
    for path in raw.glob("*.nii.gz"):  # BraTS names, still on their own grids
        path.rename(raw / f"p10_{ {'T1_AX_SE': 't1', 'T1_AX_POST_GAD': 't1ce', 'AX_T2_TSE': 't2', 'FLAIR_AX': 'flair'}[path.name[:-7]] }.nii.gz")
    viewer = make_napari_viewer()
    assert viewer.open(str(raw), plugin="napari-sevnet") == [], "raw series: the dock that prepares them opens with the folder"
    assert viewer.window.dock_widgets["Prepare raw scans (napari-sevnet)"]._folder.value == raw
    dock = PrepareWidget(viewer)
    viewer.window.add_dock_widget(dock)
    dock._folder.value, dock._output.value, dock._strip.value, dock._bias_field.value = raw, tmp_path / "prepared", False, False
    worker = dock.prepare()
    assert not dock._run.enabled and dock.prepare() is worker, "a second click while it works starts no second preparation"
    assert "still preparing" in dock._status.value
    qtbot.waitUntil(lambda: dock.worker is None, timeout=180_000)
    assert dock._run.enabled and dock.prepared is not None and len(viewer.layers) == 4 and tuple(viewer.layers[0].scale) == (1.0, 1.0, 1.0)
    record = json.loads((dock.prepared.folder / "prepare.json").read_text(encoding="utf-8"))
    assert record["bias_field"] is None and "bias_field_s" not in record["timings_s"]  # the dock's choice reached the preparation
    assert record["brain_ml"] is None and "skull kept (not stripped)" in dock._status.value  # not "brain 0 mL"


@pytest.mark.qt
def test_a_dicom_folder_dropped_on_napari_opens_in_the_prepare_dock(qtbot, make_napari_viewer, tmp_path, monkeypatch):
    """napari said only that the reader 'refused the file'; the folder now opens in the dock that makes it a case."""
    raw = make_raw(write_phantom(tmp_path / "p", seed=3, shape=SHAPE), tmp_path / "raw" / "p14")
    exported = tmp_path / "dicom" / "p14"
    for number, (name, description) in enumerate({"T1_AX_POST_GAD": "T1 AX POST GAD", "FLAIR_AX": "FLAIR AX"}.items(), start=2):
        write_dicom_series(raw / f"{name}.nii.gz", exported / f"series{number}", description, "DOE^PAT14", number)
    told = []
    monkeypatch.setattr("napari.utils.notifications.show_info", told.append)
    viewer = make_napari_viewer()
    assert viewer.open(str(exported), plugin="napari-sevnet") == [] and len(viewer.layers) == 0
    dock = viewer.window.dock_widgets["Prepare raw scans (napari-sevnet)"]
    qtbot.waitUntil(lambda: dock.found is not None, timeout=60_000)
    assert dock._folder.value == exported and dock._series["t1ce"].value.startswith("T1 AX POST GAD") and dock._series["flair"].value.startswith("FLAIR AX")
    assert told and "p14 holds DICOM series" in told[-1]


def test_the_prepare_dock_lists_the_series_and_prepares_the_ones_chosen(qtbot, make_napari_viewer, tmp_path, monkeypatch):
    """A clinician confirms the proposal per sequence, and leaves out a series too damaged to use."""
    from napari_sevnet.widgets.prepare import NONE, PrepareWidget

    raw = make_raw(write_phantom(tmp_path / "p", seed=4, shape=SHAPE), tmp_path / "raw" / "p12")
    (raw / "LOCALIZER.nii.gz").write_bytes((raw / "AX_T2_TSE.nii.gz").read_bytes())  # a series no name says a sequence of
    (raw / "SAG_T2_TSE.nii.gz").write_bytes((raw / "AX_T2_TSE.nii.gz").read_bytes())  # a second T2, in another plane: named
    errors = []
    monkeypatch.setattr("napari.utils.notifications.show_error", errors.append)
    viewer = make_napari_viewer()
    dock = PrepareWidget(viewer)
    viewer.window.add_dock_widget(dock)
    dock._folder.value = raw
    qtbot.waitUntil(lambda: dock.found is not None, timeout=30_000)
    assert {m: c.value for m, c in dock._series.items()} == {"t1": "T1_AX_SE.nii.gz", "t1ce": "T1_AX_POST_GAD.nii.gz", "t2": "AX_T2_TSE.nii.gz", "flair": "FLAIR_AX.nii.gz"}
    assert "LOCALIZER.nii.gz" in dock._series["t2"].choices and "6 NIfTI series; each sequence proposed" in dock._status.value
    assert "Also named like a sequence: SAG_T2_TSE.nii.gz (T2)." in dock._status.value
    dock._output.value, dock._strip.value, dock._bias_field.value = tmp_path / "prepared", False, False
    dock._series["flair"].value = "LOCALIZER.nii.gz"
    viewer.add_image(np.zeros((4, 4, 4)))  # napari resets a dock's choices when a layer comes or goes: what was listed and chosen stays
    assert dock._series["flair"].value == "LOCALIZER.nii.gz" and dock._series["t1"].value == "T1_AX_SE.nii.gz"
    viewer.layers.clear()
    dock._series["t2"].value = "T1_AX_SE.nii.gz"
    assert dock.prepare() is None and "T1_AX_SE.nii.gz is chosen for more than one sequence" in errors[-1]
    dock._series["t2"].value, dock._series["flair"].value = "AX_T2_TSE.nii.gz", NONE
    dock.prepare()
    qtbot.waitUntil(lambda: dock.worker is None, timeout=180_000)
    assert dock.prepared is not None and dock.prepared.sequences == ("t1", "t1ce", "t2") and dock.prepared.folder.name == "p12"
    assert not list(dock.prepared.folder.glob("*flair*")) and len(viewer.layers) == 3


def test_a_dicom_series_left_out_by_hand_is_not_taken_from_its_description(tmp_path):
    from napari_sevnet import dicom

    raw = make_raw(write_phantom(tmp_path / "p", seed=3, shape=SHAPE), tmp_path / "raw" / "p13")
    exported = tmp_path / "dicom" / "p13"
    for number, (name, description) in enumerate({"T1_AX_POST_GAD": "T1 AX POST GAD", "FLAIR_AX": "FLAIR AX"}.items(), start=2):
        write_dicom_series(raw / f"{name}.nii.gz", exported / f"series{number}", description, "DOE^PAT13", number)
    # a second FLAIR acquired later (series 10) in a folder whose name sorts first: the first acquired is proposed
    write_dicom_series(raw / "FLAIR_AX.nii.gz", exported / "series10", "FLAIR COR", "DOE^PAT13", 10)
    found = dicom.find_series(exported)
    assert [s.description for s in found] == ["T1 AX POST GAD", "FLAIR AX", "FLAIR COR"], "in the scanner's order"
    from napari_sevnet.layers import napari_get_reader

    with pytest.raises(InputError, match="holds DICOM series.*Prepare raw scans with this folder"):  # without a viewer: said
        napari_get_reader(str(exported))(str(exported))
    assert set(dicom.choose(found)) == {"t1ce", "flair"} and dicom.choose(found)["flair"].description == "FLAIR AX"
    assert set(dicom.choose(found, {"flair": "none"})) == {"t1ce"} and set(dicom.choose(found, {"flair": None})) == {"t1ce"}
    # as the Prepare dock offers them: the proposal by description, and a choice that leaves FLAIR out
    from napari_sevnet.prepare import series_options

    offered = series_options(exported)
    assert offered.dicom and list(offered.proposal) == ["t1ce", "flair"] and offered.proposal["t1ce"].startswith("T1 AX POST GAD")
    assert list(offered.others.values()) == ["flair"] and next(iter(offered.others)).startswith("FLAIR COR"), "the repeat is named"
    inputs, series = offered.inputs(exported, {"t1ce": offered.proposal["t1ce"]})
    assert inputs == exported and set(dicom.choose(found, series)) == {"t1ce"}


def test_a_folder_of_two_visits_is_not_made_into_one_case(tmp_path):
    """A PACS export often holds several studies of a patient: the series of two visits are not proposed or prepared
    as one case (registration would succeed, the tumour would be a mix of two dates); each series shows its date."""
    from napari_sevnet import dicom
    from napari_sevnet.prepare import series_options

    raw = make_raw(write_phantom(tmp_path / "p", seed=3, shape=SHAPE), tmp_path / "raw" / "p14")
    exported = tmp_path / "dicom" / "p14"
    for number, (name, description) in enumerate({"T1_AX_POST_GAD": "T1 AX POST GAD", "FLAIR_AX": "FLAIR AX"}.items(), start=2):
        write_dicom_series(raw / f"{name}.nii.gz", exported / f"visit1-{number}", description, "DOE^PAT14", number, "1.2.826.0.1.3680043.8.498.11", "20240110")
        write_dicom_series(raw / f"{name}.nii.gz", exported / f"visit2-{number}", description, "DOE^PAT14", number + 10, "1.2.826.0.1.3680043.8.498.12", "20240410")
    found = dicom.find_series(exported)
    with pytest.raises(InputError, match=r"of 2 studies \(visits\): 2024-01-10 \(2 series\), 2024-04-10 \(2 series\); a case is one visit"):
        dicom.choose(found)
    first = {s.role: s.uid for s in found if s.study_date == "2024-01-10"}
    second = {s.role: s.uid for s in found if s.study_date == "2024-04-10"}
    with pytest.raises(InputError, match="different studies .visits.: T1ce of 2024-01-10, FLAIR of 2024-04-10"):
        dicom.choose(found, {"t1ce": first["t1ce"], "flair": second["flair"]})
    assert {r: s.uid for r, s in dicom.choose(found, second).items()} == second, "one visit's series, chosen by hand"
    from napari_sevnet.prepare import prepare_case

    with pytest.raises(InputError, match=f"^{exported}: the series are of 2 studies"):  # named by the folder, before any work
        prepare_case(exported, tmp_path / "prepared", strip=False)
    assert not (tmp_path / "prepared").exists()
    offered = series_options(exported)  # the dock proposes nothing and shows each series' date to choose by
    assert offered.proposal == {} and sorted(offered.options)[:2] == ["FLAIR AX, 2024-01-10 (21 images)", "FLAIR AX, 2024-04-10 (21 images)"]


def test_a_dicom_series_of_two_echoes_or_with_a_slice_missing_is_refused_by_name(tmp_path):
    """ITK reads two echoes of one series interleaved as one volume, and a series with a slice missing as evenly
    spaced, each with a warning no user sees: both are refused, naming the series and why."""
    import SimpleITK as sitk

    from napari_sevnet import dicom

    volume = sitk.GetImageFromArray(np.random.default_rng(0).integers(0, 100, (10, 32, 32)).astype(np.int16))
    volume.SetSpacing((1.0, 1.0, 3.0))

    def write(folder, echoes, skip=()):
        folder.mkdir()
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        for echo in range(echoes):
            for k in range(volume.GetDepth()):
                if k in skip:
                    continue
                image = volume[:, :, k]
                for key, value in {"0010|0020": "DOE^PAT15", "0020|000d": "1.2.3", "0020|000e": f"1.2.3.{folder.name}", "0008|103e": "PD_T2_TSE",
                                   "0008|0060": "MR", "0008|0016": "1.2.840.10008.5.1.4.1.1.4", "0008|0018": f"1.2.3.{folder.name}.{echo}.{k}",
                                   "0020|0013": str(1 + k + 100 * echo), "0018|0086": str(echo + 1), "0020|0037": "1\\0\\0\\0\\1\\0",
                                   "0020|0032": "\\".join(f"{v:.6f}" for v in volume.TransformIndexToPhysicalPoint((0, 0, k)))}.items():
                    image.SetMetaData(key, value)
                writer.SetFileName(str(folder / f"e{echo}_{k:03d}.dcm"))
                writer.Execute(image)
        (series,) = dicom.find_series(folder)
        return series

    with pytest.raises(InputError, match=r"PD_T2_TSE, [0-9-]+ \(20 images\) holds 20 images at 10 slice positions: several volumes in one series"):
        dicom.convert({"t2": write(tmp_path / "1", echoes=2)}, tmp_path / "out")
    with pytest.raises(InputError, match="has slices missing: the gaps between slices run from 3.00 to 6.00 mm"):
        dicom.convert({"t2": write(tmp_path / "2", echoes=1, skip=(4,))}, tmp_path / "out")
    written = dicom.convert({"t2": write(tmp_path / "3", echoes=1)}, tmp_path / "out")  # one whole echo reads as it is
    assert sitk.ReadImage(str(written["t2"])).GetSize() == (32, 32, 10)


def write_dicom_series(image_path: Path, folder: Path, description: str, patient: str, series_number: int,
                       study: str = "1.2.826.0.1.3680043.8.498.1", date: str | None = None) -> None:
    """A NIfTI volume as a DICOM MR series (one file per slice), as a scanner exports it (``date``: YYYYMMDD, else today)."""
    import time as _time

    import SimpleITK as sitk

    image = sitk.Cast(sitk.ReadImage(str(image_path)), sitk.sitkInt16)
    folder.mkdir(parents=True)
    stamp = date or _time.strftime("%Y%m%d")
    series_uid = f"1.2.826.0.1.3680043.8.498.{series_number}.{int(_time.time() * 1000) % 10**9}"
    direction = image.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        slice_ = image[:, :, k]
        tags = {"0010|0010": patient, "0010|0020": patient, "0020|000d": study, "0020|000e": series_uid, "0008|103e": description,
                "0008|0060": "MR", "0008|0016": "1.2.840.10008.5.1.4.1.1.4", "0008|0018": f"{series_uid}.{k + 1}", "0020|0011": str(series_number),
                "0020|0013": str(k + 1), "0020|0052": "1.2.826.0.1.3680043.8.498.99", "0008|0020": stamp, "0008|0030": "120000",
                "0020|0037": "\\".join(f"{v:.6f}" for v in (*direction[0:7:3], *direction[1:8:3])),
                "0020|0032": "\\".join(f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))),
                "0018|0050": f"{image.GetSpacing()[2]:.4f}", "0028|0030": f"{image.GetSpacing()[1]:.6f}\\{image.GetSpacing()[0]:.6f}"}
        for key, value in tags.items():
            slice_.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"IM{k + 1:04d}.dcm"))
        writer.Execute(slice_)


def test_dicom_series_in_and_a_dicom_seg_out(tmp_path):
    import highdicom as hd

    from napari_sevnet import dicom
    from napari_sevnet.prepare import prepare_case

    raw = make_raw(write_phantom(tmp_path / "p", seed=3, shape=SHAPE), tmp_path / "raw" / "p11")
    exported = tmp_path / "dicom" / "p11"
    descriptions = {"T1_AX_SE": "T1 AX SE", "T1_AX_POST_GAD": "T1 AX POST GAD", "AX_T2_TSE": "AX T2 TSE", "FLAIR_AX": "FLAIR AX"}
    for number, (name, description) in enumerate(descriptions.items(), start=2):
        write_dicom_series(raw / f"{name}.nii.gz", exported / f"series{number}", description, "DOE^PAT11", number)
    found = dicom.find_series(exported)
    assert sorted(s.role for s in found) == ["flair", "t1", "t1ce", "t2"], "the sequence proposed from each description"
    prepared = prepare_case(exported, tmp_path / "prepared", strip=False)
    assert (prepared.folder / "p11_t1ce.nii.gz").is_file() and prepared.native_reference.is_file()
    from napari_sevnet.io import load_case
    from napari_sevnet.prepare import visit_of

    today = dt.date.today().isoformat()  # the study date the series were written with
    assert visit_of(load_case(prepared.folder).paths) == {"patient_id": "DOE^PAT11", "study_date": today}, "who and when kept, to check two visits by"
    reference = next(s for s in found if s.role == "t1ce")
    native = nib.load(str(prepared.native_reference))
    regions = np.zeros((3, *native.shape), bool)
    regions[:, 20:40, 25:45, 4:10] = True
    regions[2, 30:35, 30:35, 5:8] = True
    regions[1] |= regions[2]
    seg_path = dicom.write_seg(regions, reference, tmp_path / "p11_seg.dcm")
    seg = hd.seg.segread(str(seg_path))
    assert seg.number_of_segments == 3 and seg.SeriesDescription.startswith("napari-sevnet")
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == reference.uid
    back = seg.get_volume(combine_segments=False)  # re-read on the source frames' geometry
    assert back.array.shape[-1] == 3 and int(back.array[..., 2].sum()) == int(regions[2].sum())
    other = exported / "series9"
    write_dicom_series(raw / "AX_T2_TSE.nii.gz", other, "AX T2 TSE REPEAT", "ROE^OTHER", 9)
    with pytest.raises(InputError, match="different patients"):
        dicom.choose(dicom.find_series(exported), {"t2": next(s.uid for s in dicom.find_series(exported) if s.patient_id == "ROE^OTHER")})
    # by hand: a typo in a sequence name, one series for two sequences, and a series moved to the role it really has
    with pytest.raises(InputError, match="'t1c' is not a sequence"):
        dicom.choose(found, {"t1c": reference.uid})
    with pytest.raises(InputError, match="one series is one sequence"):
        dicom.choose(found, {"t1": reference.uid, "t1ce": reference.uid})
    moved = dicom.choose(found, {"t1": reference.uid})
    assert moved["t1"].uid == reference.uid and "t1ce" not in moved, "the series is not also left as T1ce"


def test_a_visit_record_edited_by_hand_gives_no_date_rather_than_a_wrong_one(tmp_path):
    from napari_sevnet.prepare import PREPARE_RECORD, visit_of

    scan = tmp_path / "case_t1.nii.gz"
    scan.write_bytes(b"")
    for visit, expected in (({"patient_id": "DOE", "study_date": "2024-13-45"}, {"patient_id": "DOE"}), ("not a record", {}),
                            ({"patient_id": "DOE", "study_date": "2024-02-05", "other": 1}, {"patient_id": "DOE", "study_date": "2024-02-05"})):
        (tmp_path / PREPARE_RECORD).write_text(json.dumps({"visit": visit}))
        assert visit_of({"t1": scan}) == expected
    assert visit_of({"t1": tmp_path / "elsewhere" / "x.nii.gz"}) == {}, "a case not prepared here"
