"""Lesion table, RANO diameters and the change between two visits, on shapes of known size."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sevnet.readout import compare_visits, format_ml, measure, rano_diameters


def ellipse(shape, centre, a_mm, b_mm, spacing=(1.0, 1.0), angle_deg=0.0):
    """A filled ellipse with semi-axes a (along x before rotation) and b, in mm."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    y, x = (yy - centre[0]) * spacing[0], (xx - centre[1]) * spacing[1]
    c, s = np.cos(np.deg2rad(angle_deg)), np.sin(np.deg2rad(angle_deg))
    u, v = x * c + y * s, -x * s + y * c
    return (u / a_mm) ** 2 + (v / b_mm) ** 2 <= 1


def angle_between(seg_a, seg_b, spacing=(1.0, 1.0)) -> float:
    """Angle in mm space between two segments given in voxel coordinates (z, y, x)."""
    da, db = np.subtract(seg_a[1], seg_a[0])[1:] * spacing, np.subtract(seg_b[1], seg_b[0])[1:] * spacing
    return float(np.degrees(np.arccos(abs(np.dot(da, db)) / np.linalg.norm(da) / np.linalg.norm(db))))


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (0.5, 0.8)])
@pytest.mark.parametrize("angle", [0.0, 30.0])
def test_diameters_of_a_known_ellipse_within_one_voxel_and_perpendicular(spacing, angle):
    section = ellipse((160, 160), (80, 80), 20.0, 11.0, spacing, angle)
    d = rano_diameters(section, spacing, z=5)
    voxel = max(spacing) * 1.001  # one voxel (between voxel centres a length can fall short by up to one)
    assert abs(d.longest_mm - 40.0) <= voxel and abs(d.perpendicular_mm - 22.0) <= voxel, (d.longest_mm, d.perpendicular_mm)
    assert abs(angle_between(d.longest, d.perpendicular, spacing) - 90.0) < 1.0
    assert d.measurable and d.slice == 5


def test_a_lesion_table_of_two_lesions_one_too_small_to_measure():
    shape = (30, 100, 100)
    regions = np.zeros((3, *shape), bool)
    for z in range(10, 20):
        regions[2, z] = ellipse(shape[1:], (30, 30), 10.0, 8.0)  # enhancing, 20 x 16 mm
        regions[1, z] = ellipse(shape[1:], (30, 30), 12.0, 10.0)  # its necrotic core around it
        regions[2, z] |= ellipse(shape[1:], (75, 75), 3.0, 3.0)  # a second lesion: 6 mm, not measurable
    regions[1] |= regions[2]
    regions[0] = regions[1] | np.pad(np.ones((10, 90, 90), bool), ((10, 10), (5, 5), (5, 5)))
    readout = measure(regions, (1.0, 1.0, 1.0))
    assert len(readout.lesions) == 2 and readout.measurable == 1
    first, second = readout.lesions
    assert first.measurable and not second.measurable and second.diameters.longest_mm < 10
    assert readout.sum_of_products_mm2 == pytest.approx(first.product_mm2)
    assert first.ed_ml + second.ed_ml == pytest.approx((regions[0] & ~regions[1]).sum() / 1000.0), "every edema voxel belongs to one lesion"
    assert first.ncr_ml == pytest.approx((regions[1] & ~regions[2])[:, :60, :60].sum() / 1000.0)
    assert second.ncr_ml == 0 and format_ml(second.ncr_ml) == "0"


def test_rano_measurability_needs_two_slices_and_twice_a_thick_slice_and_sums_five_targets():
    """RANO 2010: both diameters at least 10 mm (twice the slice thickness over 5 mm), seen on two or more axial
    slices; of several measurable lesions the five largest are the targets whose products are summed."""
    shape = (12, 120, 180)
    regions = np.zeros((3, *shape), bool)
    regions[2, 5] = ellipse(shape[1:], (20, 20), 8.0, 8.0)  # 16 mm across, on one axial slice only
    for k, radius in enumerate((14.0, 13.0, 12.0, 11.0, 10.0, 9.0)):  # six measurable lesions, largest first
        regions[2, 3:7] |= ellipse(shape[1:], (60 + 40 * (k // 3), 40 + 50 * (k % 3)), radius, radius)
    regions[1] = regions[0] = regions[2]
    readout = measure(regions, (1.0, 1.0, 1.0))
    flat = next(lesion for lesion in readout.lesions if lesion.diameters.slices == 1)
    assert flat.diameters.longest_mm >= 10 and not flat.measurable and flat.measurable_words == "no", "seen on one slice only"
    measurable = [lesion for lesion in readout.lesions if lesion.measurable]
    assert len(measurable) == 6 and [lesion.target for lesion in measurable] == [True] * 5 + [False]
    assert measurable[-1].measurable_words == "yes (not summed)" and measurable[-1].diameters.longest_mm < measurable[4].diameters.longest_mm
    assert readout.sum_of_products_mm2 == pytest.approx(sum(lesion.product_mm2 for lesion in measurable[:5]))
    assert readout.to_json()["target_lesions"] == 5 and readout.to_json()["measurable_lesions"] == 6
    small = np.zeros((3, 12, 40, 40), bool)
    small[:, 3:7] = ellipse((40, 40), (20, 20), 5.5, 5.5)  # 11 mm across on four slices
    (thin,) = measure(small, (1.0, 1.0, 1.0)).lesions
    (thick,) = measure(small, (6.0, 1.0, 1.0)).lesions  # 6 mm slices: each diameter must reach 12 mm
    assert thin.measurable and thick.diameters.minimum_mm == 12.0 and not thick.measurable


def test_a_speck_of_tumour_reads_as_less_than_a_tenth_not_as_nothing():
    assert [format_ml(v) for v in (0.0, 0.004, 0.049, 0.05, 1.26)] == ["0", "<0.1", "<0.1", "0.1", "1.3"]


def test_two_visits_growth_by_a_known_factor_is_progression_and_the_percentages_are_exact():
    def visit(radius):
        regions = np.zeros((3, 20, 120, 120), bool)
        for z in range(5, 15):
            regions[2, z] = ellipse((120, 120), (60, 60), radius, radius * 0.7)
        regions[1] = regions[0] = regions[2]
        return measure(regions, (1.0, 1.0, 1.0))

    before, after = visit(15.0), visit(18.0)
    change = compare_visits(before, after)
    expected = 100.0 * (after.sum_of_products_mm2 - before.sum_of_products_mm2) / before.sum_of_products_mm2
    assert change["sum_of_products_mm2"]["percent"] == pytest.approx(expected) and expected == pytest.approx(44.0, abs=8)
    assert change["category"] == "progression"
    assert compare_visits(after, before)["category"] == "stable disease"  # -31 %: not yet a partial response
    assert compare_visits(visit(18.0), visit(12.0))["category"] == "partial response"
    empty = measure(np.zeros((3, 20, 120, 120), bool), (1.0, 1.0, 1.0))
    assert compare_visits(before, empty)["category"] == "complete response"


def test_a_new_measurable_lesion_is_progression_though_the_sum_grew_less_than_a_quarter():
    """RANO: a new lesion is progression whatever the sum of products does; the old lesion grown into its margin is not new."""
    from napari_sevnet.readout import new_lesions

    def visit(*lesions):
        regions = np.zeros((3, 20, 120, 160), bool)
        for centre, radius in lesions:
            regions[2, 5:15] |= ellipse((120, 160), centre, radius, radius)
        regions[1] = regions[0] = regions[2]
        return regions

    base = visit(((60, 50), 20.0))
    grown = visit(((60, 50), 21.0))  # the same lesion, a little larger
    spread = visit(((60, 50), 20.0), ((60, 125), 6.0))  # and a 12 mm lesion far from it
    base_readout = measure(base, (1.0, 1.0, 1.0))
    for follow, expected_new, category in ((grown, [], "stable disease"), (spread, [2], "progression")):
        readout = measure(follow, (1.0, 1.0, 1.0))
        new = new_lesions(base, follow, readout, (1.0, 1.0, 1.0))
        change = compare_visits(base_readout, readout, new=new)
        assert new == expected_new and change["category"] == category and change["new_lesions"] == expected_new
        assert abs(change["sum_of_products_mm2"]["percent"]) < 25
    assert "a new measurable lesion" in change["criteria"]
    unassessed = compare_visits(base_readout, measure(spread, (1.0, 1.0, 1.0)))  # visits not on one grid: said, not guessed
    assert unassessed["category"] == "stable disease" and unassessed["new_lesions"] is None and "new lesions not assessed" in unassessed["criteria"]


def test_the_case_report_has_its_sections_and_sevnet_measure_works_end_to_end(tmp_path):
    import json
    import re
    import subprocess
    import sys
    from pathlib import Path

    from napari_sevnet.phantom import write_phantom

    bin_dir = Path(sys.executable).parent
    baseline = write_phantom(tmp_path / "v1", seed=4, shape=(64, 72, 64))
    follow = write_phantom(tmp_path / "v2", seed=5, shape=(64, 72, 64))
    mask = lambda folder: folder / f"{folder.name}_seg.nii.gz"  # noqa: E731
    report, out = tmp_path / "report.html", tmp_path / "readout.json"
    result = subprocess.run([str(bin_dir / "sevnet-measure"), str(follow), str(mask(follow)), "--baseline", str(baseline), str(mask(baseline)),
                             "--report", str(report), "-o", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["lesions"] and "sum_of_products_mm2" in data and data["change"]["category"] in ("progression", "stable disease", "partial response", "complete response")
    assert "sum of products" in result.stdout
    page = report.read_text(encoding="utf-8")
    for section in ("case", "images", "lesions", "volumes", "uncertainty", "model", "visits"):
        assert f"<section id='{section}'>" in page, section
    assert "not for diagnosis" in page and re.search(r"data:image/png;base64,[A-Za-z0-9+/]{1000}", page), "self-contained, with its images"


def test_a_report_on_a_mask_made_without_t1ce_says_what_the_model_card_measured_for_that_set(tmp_path):
    import json

    from napari_sevnet import case_report
    from napari_sevnet.checkpoint import bundled_checkpoint
    from napari_sevnet.io import load_case
    from napari_sevnet.phantom import write_phantom

    folder = write_phantom(tmp_path, seed=4, shape=(48, 56, 48))
    complete = load_case(folder)
    (folder / f"{folder.name}_t1ce.nii.gz").unlink()
    partial = load_case(folder, allow_missing=True)
    readout = measure(partial.regions, partial.spacing)
    page = case_report.render(partial, partial.regions, readout, checkpoint=str(bundled_checkpoint()))
    measured = json.loads(bundled_checkpoint().read_text(encoding="utf-8"))["model_card"]["held_out_figures_by_sequences"]["mean_dice"]["no T1ce"]
    assert "(missing: T1ce)" in page and "without T1ce the enhancement" in page and "with T1, T2, FLAIR only" in page and f"ET {measured['ET']:.2f}" in page
    assert "without T1ce" not in case_report.render(complete, complete.regions, readout, checkpoint=str(bundled_checkpoint()))
    assert "without T1ce" not in case_report.render(partial, partial.regions, readout), "an expert's mask (no model named) gets no model caveat"
    from napari_sevnet.checkpoint import phantom_checkpoint

    assert "synthetic phantoms only" in case_report.render(complete, complete.regions, readout, checkpoint=str(phantom_checkpoint()))
    assert "synthetic phantoms only" not in case_report.render(complete, complete.regions, readout, checkpoint=str(bundled_checkpoint()))


def test_a_report_replaces_only_its_own_scans_earlier_report_and_sevnet_measure_never_overwrites_unasked(tmp_path, capsys):
    """The report path stays in the dock (and in a shell's history) from the last patient: the next one must not replace that report."""
    from napari_sevnet import case_report
    from napari_sevnet.cli import measure_main
    from napari_sevnet.errors import InputError
    from napari_sevnet.io import load_case
    from napari_sevnet.phantom import write_phantom

    first, second = (load_case(write_phantom(tmp_path / "cases", seed=seed, shape=(48, 56, 48))) for seed in (4, 5))
    report = tmp_path / "report.html"
    case_report.write(report, first, first.regions, measure(first.regions, first.spacing, first.grid))
    edited = first.regions.copy()
    edited[:, :, :, :20] = False
    case_report.write(report, first, edited, measure(edited, first.spacing, first.grid))  # the same scan, after edits: replaced
    kept = report.read_bytes()
    with pytest.raises(InputError, match="already holds the report of another scan .*phantom_0004.*choose another name for the report of phantom_0005"):
        case_report.write(report, second, second.regions, measure(second.regions, second.spacing, second.grid))
    assert report.read_bytes() == kept
    notes = tmp_path / "notes.html"
    notes.write_text("<html>the clinician's own notes</html>")
    with pytest.raises(InputError, match="not a napari-sevnet case report"):
        case_report.write(notes, first, first.regions, measure(first.regions, first.spacing, first.grid))
    case_report.write(report, second, second.regions, measure(second.regions, second.spacing, second.grid), overwrite=True)
    assert "phantom_0005 report" in report.read_text(encoding="utf-8")

    case, mask = tmp_path / "cases" / "phantom_0004", tmp_path / "cases" / "phantom_0004" / "phantom_0004_seg.nii.gz"
    out = tmp_path / "readout.json"
    out.write_text("{}")
    assert measure_main([str(case), str(mask), "-o", str(out)]) == 2
    assert "readout.json: already exists; pass --overwrite" in capsys.readouterr().err and out.read_text() == "{}"
    assert measure_main([str(case), str(mask), "-o", str(out), "--overwrite"]) == 0 and "lesions" in out.read_text()
    assert measure_main([str(case), str(mask), "--report", str(notes)]) == 2
    assert "not a napari-sevnet case report" in capsys.readouterr().err
    before = mask.read_bytes()
    with pytest.raises(SystemExit):
        measure_main([str(case), str(mask), "-o", str(mask), "--overwrite"])
    assert "is one of the inputs" in capsys.readouterr().err and mask.read_bytes() == before


@pytest.mark.parametrize(("baseline", "follow_up", "says"), [
    ("BraTS-GLI-00001-000", "BraTS-GLI-00001-001", None),
    ("BraTS-GLI-00001-001", "BraTS-GLI-00001-000", "wrong way round"),
    ("BraTS-GLI-00001-000", "BraTS-GLI-00002-001", "two different patients"),
    ("BraTS2021_00006", "BraTS2021_00009", None),  # no timepoint in these ids: nothing to say
    ("2024-01", "2024-06", None),
])
def test_two_visits_whose_ids_say_they_are_two_patients_or_the_wrong_way_round_are_flagged(tmp_path, capsys, baseline, follow_up, says):
    from napari_sevnet import case_report
    from napari_sevnet.io import load_case
    from napari_sevnet.readout import visit_caveat

    caveat = visit_caveat(baseline, follow_up)
    assert (caveat is None) if says is None else (says in caveat)
    if says is None:
        return
    case = load_case(write_phantom_case(tmp_path))
    readout = measure(case.regions, case.spacing, case.grid)
    comparison = compare_visits(readout, readout, baseline_id=baseline, follow_up_id=follow_up)
    assert comparison["caveat"] == caveat
    assert "Check the visits:" in case_report.render(case, case.regions, readout, comparison=comparison)


def test_sevnet_measure_warns_when_the_baseline_is_the_later_visit(tmp_path, capsys):
    import shutil

    from napari_sevnet.cli import measure_main

    first = write_phantom_case(tmp_path / "a")
    visits = {}
    for name in ("BraTS-GLI-00001-000", "BraTS-GLI-00001-001"):
        folder = tmp_path / name
        folder.mkdir()
        for suffix, new in (("_t1", "-t1n"), ("_t1ce", "-t1c"), ("_t2", "-t2w"), ("_flair", "-t2f"), ("_seg", "-seg")):
            shutil.copy(first / f"{first.name}{suffix}.nii.gz", folder / f"{name}{new}.nii.gz")
        visits[name] = folder
    early, late = visits.values()
    out = tmp_path / "change.json"
    assert measure_main([str(early), str(early / f"{early.name}-seg.nii.gz"), "--baseline", str(late), str(late / f"{late.name}-seg.nii.gz"), "--labels", "2021",
                         "-o", str(out)]) == 0
    assert "sevnet-measure: warning: the baseline BraTS-GLI-00001-001 is not an earlier timepoint" in capsys.readouterr().err
    import json

    assert json.loads(out.read_text(encoding="utf-8"))["change"]["new_lesions"] == [], "one grid: new lesions looked for (none: the same mask)"


def write_phantom_case(folder):
    from napari_sevnet.phantom import write_phantom

    return write_phantom(folder, seed=4, shape=(48, 56, 48))


def test_sevnet_measure_registers_a_baseline_on_another_grid_and_finds_a_new_lesion(tmp_path, capsys):
    """Visits from two sessions lie on two grids: the baseline is registered onto the follow-up (as the Compare dock
    does) and a new measurable lesion far from its tumour core is progression; the same tumour alone is not new."""
    import json

    import nibabel as nib
    from scipy import ndimage

    from napari_sevnet.cli import measure_main
    from napari_sevnet.io import load_case, write_mask
    from napari_sevnet.phantom import write_phantom

    baseline = write_phantom(tmp_path / "v1", seed=4, shape=(64, 72, 64))
    case = load_case(baseline)
    # a 13 mm enhancing ball in the brain, as far from the tumour core as the head allows (over 13 mm)
    room = np.minimum(ndimage.distance_transform_edt(~case.regions[1]), ndimage.distance_transform_edt(case.image[3] > 0))
    centre = np.unravel_index(room.argmax(), room.shape)
    zz, yy, xx = np.indices(case.shape)
    ball = (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= 6.5**2
    spread = case.regions | ball
    mask = tmp_path / "spread_seg.nii.gz"
    write_mask(spread, case.grid, mask, "brats2021")

    def later_session(name, seg):
        """The same head a visit later on a grid shifted by 4 voxels and 6 mm, as a scanner's next session puts it."""
        folder = tmp_path / name / baseline.name
        folder.mkdir(parents=True)
        for path in [*baseline.glob("*_t1*.nii.gz"), *baseline.glob("*_t2.nii.gz"), *baseline.glob("*_flair.nii.gz"), seg]:
            img = nib.load(path)
            affine = img.affine.copy()
            affine[:3, 3] += (6.0, 0.0, 0.0)
            target = folder / (f"{baseline.name}_seg.nii.gz" if path == seg else path.name)
            nib.save(nib.Nifti1Image(np.roll(np.asanyarray(img.dataobj), 4, axis=0), affine), target)
        return folder

    for name, seg, new, category in (("same", baseline / f"{baseline.name}_seg.nii.gz", 0, "stable disease"), ("spread", mask, 1, "progression")):
        follow = later_session(name, seg)
        out = tmp_path / f"{name}.json"
        assert measure_main([str(follow), str(follow / f"{baseline.name}_seg.nii.gz"), "--baseline", str(baseline), str(baseline / f"{baseline.name}_seg.nii.gz"),
                             "-o", str(out)]) == 0
        assert "the baseline was registered rigidly on FLAIR onto the follow-up" in capsys.readouterr().err
        change = json.loads(out.read_text(encoding="utf-8"))["change"]
        assert len(change["new_lesions"]) == new and change["category"] == category, change
        assert "a new measurable lesion" in change["criteria"]

    # two visits that share no sequence cannot be registered: said, in the output and in the criteria
    for path in follow.glob("*_t1*.nii.gz"):
        path.unlink()
    for path in baseline.glob("*_t2.nii.gz"):
        path.unlink()
    for path in baseline.glob("*_flair.nii.gz"):
        path.unlink()
    out = tmp_path / "unregistered.json"
    assert measure_main([str(follow), str(follow / f"{baseline.name}_seg.nii.gz"), "--baseline", str(baseline), str(baseline / f"{baseline.name}_seg.nii.gz"),
                         "-o", str(out)]) == 0
    assert "new lesions not assessed: the visits lie on two grids and the two visits share no sequence to register them on" in capsys.readouterr().err
    change = json.loads(out.read_text(encoding="utf-8"))["change"]
    assert change["new_lesions"] is None and "new lesions not assessed (the two visits share no sequence" in change["criteria"]


@pytest.mark.parametrize("baseline, follow_up, says", [
    ({"patient_id": "DOE^A", "study_date": "2024-01-10"}, {"patient_id": "ROE^B", "study_date": "2024-04-10"}, "two different patients by their DICOM patient ids (DOE^A, ROE^B)"),
    ({"patient_id": "DOE^A", "study_date": "2024-04-10"}, {"patient_id": "DOE^A", "study_date": "2024-01-10"}, "was scanned on 2024-04-10, after the follow-up"),
    ({"study_date": "2024-01-10"}, {"study_date": "2024-01-10"}, "scanned the same day (2024-01-10)"),
    ({"patient_id": "DOE^A", "study_date": "2024-01-10"}, {"patient_id": "DOE^A", "study_date": "2024-04-10"}, None),
])
def test_visits_prepared_from_dicom_are_checked_by_their_patient_id_and_study_date(tmp_path, capsys, baseline, follow_up, says):
    """Clinic cases carry no BraTS ids: the patient id and study date kept by the preparation tell two patients, the
    same day or the wrong order apart, in sevnet-measure, its JSON and the report, which says the interval."""
    import json
    import shutil

    from napari_sevnet.cli import measure_main
    from napari_sevnet.prepare import PREPARE_RECORD

    first = write_phantom_case(tmp_path / "a")
    visits = []
    for name, visit in (("visit1", baseline), ("visit2", follow_up)):
        folder = shutil.copytree(first, tmp_path / name)
        (folder / PREPARE_RECORD).write_text(json.dumps({"case_id": first.name, "reference": "t1ce", "visit": visit}))  # as the preparation writes it
        visits.append(folder)
    out, report = tmp_path / "change.json", tmp_path / "report.html"
    seg = f"{first.name}_seg.nii.gz"
    assert measure_main([str(visits[1]), str(visits[1] / seg), "--baseline", str(visits[0]), str(visits[0] / seg), "-o", str(out), "--report", str(report)]) == 0
    err, change = capsys.readouterr().err, json.loads(out.read_text(encoding="utf-8"))["change"]
    assert change["study_dates"] == {"baseline": baseline["study_date"], "follow_up": follow_up["study_date"]}
    page = report.read_text(encoding="utf-8")
    if says:
        assert says in change["caveat"] and "sevnet-measure: warning: the baseline" in err and "Check the visits:" in page
    else:
        assert change["caveat"] is None and "warning" not in err
        assert change["days"] == 91 and "Baseline scanned on 2024-01-10, follow-up on 2024-04-10 (91 days later)." in page


def test_sevnet_measure_takes_the_study_dates_nifti_visits_do_not_carry(tmp_path, capsys):
    """Two NIfTI visits say nothing of when they were scanned: --dates gives the interval and catches the wrong order;
    a date that contradicts the DICOM series' is refused, naming the case."""
    import json
    import shutil

    from napari_sevnet.cli import measure_main
    from napari_sevnet.prepare import PREPARE_RECORD

    first = write_phantom_case(tmp_path / "a")
    early, late = (shutil.copytree(first, tmp_path / name) for name in ("visit1", "visit2"))
    seg = f"{first.name}_seg.nii.gz"
    out, report = tmp_path / "change.json", tmp_path / "report.html"
    visits = [str(late), str(late / seg), "--baseline", str(early), str(early / seg)]
    assert measure_main([*visits, "--dates", "2024-01-10", "2024-04-10", "-o", str(out), "--report", str(report)]) == 0
    change = json.loads(out.read_text(encoding="utf-8"))["change"]
    assert change["days"] == 91 and change["caveat"] is None
    assert "Baseline scanned on 2024-01-10, follow-up on 2024-04-10 (91 days later)." in report.read_text(encoding="utf-8")
    assert measure_main([*visits, "--dates", "2024-04-10", "2024-01-10", "-o", str(out), "--overwrite"]) == 0
    assert "was scanned on 2024-04-10, after the follow-up" in capsys.readouterr().err

    (late / PREPARE_RECORD).write_text(json.dumps({"case_id": first.name, "reference": "t1ce", "visit": {"study_date": "2024-05-01"}}))
    assert measure_main([*visits, "--dates", "2024-01-10", "2024-04-10"]) == 2
    assert f"{late}: was scanned on 2024-05-01 by its DICOM series, not on 2024-04-10" in capsys.readouterr().err
    assert measure_main([*visits, "--dates", "2024-13-01", "2024-04-10"]) == 2
    assert f"{early}: '2024-13-01' is not a date as YYYY-MM-DD" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        measure_main([*visits, "--dates", "2024-01-10"])
    assert "expected 2 arguments" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        measure_main([str(late), str(late / seg), "--dates", "2024-01-10", "2024-04-10"])
    assert "--dates goes with --baseline" in capsys.readouterr().err


def test_sevnet_measure_says_when_a_mask_reads_as_necrosis_alone(tmp_path, capsys):
    """A one-label whole-tumour mask under a BraTS name reads as necrosis alone: the table's NCR is then the whole tumour."""
    import nibabel as nib

    from napari_sevnet.cli import measure_main

    case = write_phantom_case(tmp_path / "a")
    seg = case / f"{case.name}_seg.nii.gz"
    img = nib.load(seg)
    nib.save(nib.Nifti1Image((np.asanyarray(img.dataobj) > 0).astype(np.uint8), img.affine), seg)
    assert measure_main([str(case), str(seg), "-o", str(tmp_path / "one.json")]) == 0
    assert f"{seg}: holds label 1 alone, read by its BraTS name as necrosis" in capsys.readouterr().err
    assert measure_main([str(case), str(seg), "--labels", "2021", "-o", str(tmp_path / "said.json")]) == 0
    assert "label 1 alone" not in capsys.readouterr().err, "said to be necrosis alone: taken at its word"
