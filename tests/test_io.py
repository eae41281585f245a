"""Reading any BraTS layout into the canonical grid, writing masks back exactly, refusing bad files."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.orientations import io_orientation

from napari_sevnet import io
from napari_sevnet.errors import InputError
from napari_sevnet.phantom import make_phantom
from napari_sevnet.regions import regions_to_labels

SHAPE = (20, 24, 28)  # canonical (Z, Y, X)

AFFINES = {
    "LPS": np.diag([-1.0, -1.0, 1.0, 1.0]),
    "RAS": np.diag([1.0, 1.0, 1.0, 1.0]),
    # oblique axis order: file axes are (S, R, A) with 2 mm along S and an offset
    "SRA": np.array([[0, 1.0, 0, 10], [0, 0, 1.0, -20], [2.0, 0, 0, 5], [0, 0, 0, 1]]),
}


def write_case(folder: Path, affine: np.ndarray, naming: str = "brats2021", seed: int = 0, gz: bool = True) -> tuple[Path, dict]:
    """Write a phantom with the given file affine; returns the folder and the canonical truth."""
    p = make_phantom(seed, SHAPE)
    grid = io.SourceGrid(affine=affine, shape=(0, 0, 0), orientation=io_orientation(affine))
    suffixes = {v: k for k, v in io.NAMINGS[naming].items()}
    ext = ".nii.gz" if gz else ".nii"
    folder.mkdir(parents=True, exist_ok=True)
    for i, m in enumerate(io.MODALITIES):
        nib.save(nib.Nifti1Image(grid.from_canonical(p.image[i]), affine), folder / f"case{suffixes[m]}{ext}")
    labels = regions_to_labels(p.regions, "brats2023" if naming == "brats2023" else "brats2021")
    nib.save(nib.Nifti1Image(grid.from_canonical(labels), affine), folder / f"case{suffixes['seg']}{ext}")
    return folder, {"image": p.image, "regions": p.regions}


@pytest.mark.parametrize("orientation", list(AFFINES))
def test_canonical_arrays_whatever_the_header(tmp_path, orientation):
    folder, truth = write_case(tmp_path / orientation, AFFINES[orientation])
    case = io.load_case(folder)
    assert case.image.shape == (4, *SHAPE) and case.image.dtype == np.float32
    np.testing.assert_array_equal(case.image, truth["image"])
    np.testing.assert_array_equal(case.regions, truth["regions"])
    expected_spacing = (2.0, 1.0, 1.0) if orientation == "SRA" else (1.0, 1.0, 1.0)
    assert case.spacing == expected_spacing


@pytest.mark.parametrize("orientation", ["LPS", "RAS", "SRA"])
def test_load_write_load_is_exact(tmp_path, orientation):
    folder, _ = write_case(tmp_path / "in", AFFINES[orientation])
    case = io.load_case(folder)
    out = io.write_mask(case.regions, case.grid, tmp_path / "out" / "case_seg.nii.gz")
    written = nib.load(out)
    source = nib.load(folder / "case_seg.nii.gz")
    np.testing.assert_array_equal(written.affine, source.affine)
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), np.asanyarray(source.dataobj))
    again = io.load_case(mapping={**{m: case.paths[m] for m in io.MODALITIES}, "seg": out})
    np.testing.assert_array_equal(again.regions, case.regions)


def test_write_in_2023_convention(tmp_path):
    folder, _ = write_case(tmp_path / "in", AFFINES["LPS"])
    case = io.load_case(folder)
    out = io.write_mask(case.regions, case.grid, tmp_path / "m.nii.gz", "2023")
    assert set(np.unique(np.asanyarray(nib.load(out).dataobj)).tolist()) == {0, 1, 2, 3}


def test_lps_and_ras_copies_give_identical_arrays(tmp_path):
    a, _ = write_case(tmp_path / "lps", AFFINES["LPS"])
    b, _ = write_case(tmp_path / "ras", AFFINES["RAS"])
    ca, cb = io.load_case(a), io.load_case(b)
    np.testing.assert_array_equal(ca.image, cb.image)
    np.testing.assert_array_equal(ca.regions, cb.regions)


def test_brats2023_naming_and_any_file_of_the_case(tmp_path):
    folder, truth = write_case(tmp_path / "c", AFFINES["LPS"], naming="brats2023", gz=False)
    case = io.load_case(folder / "case-t2w.nii")
    assert case.layout == "brats2023" and case.label_convention == "brats2023"
    assert case.paths["t1ce"].name == "case-t1c.nii"
    np.testing.assert_array_equal(case.regions, truth["regions"])


def test_t1_is_not_confused_with_t1ce(tmp_path):
    folder, truth = write_case(tmp_path / "c", AFFINES["RAS"])
    case = io.load_case(folder / "case_t1ce.nii.gz")
    np.testing.assert_array_equal(case.image[1], truth["image"][1])
    np.testing.assert_array_equal(case.image[0], truth["image"][0])


def test_decathlon_layout(tmp_path):
    p = make_phantom(1, SHAPE)
    affine = AFFINES["RAS"]
    grid = io.SourceGrid(affine=affine, shape=(0, 0, 0), orientation=io_orientation(affine))
    order = [io.MODALITIES.index(m) for m in io.MSD_CHANNELS]
    data = np.stack([grid.from_canonical(p.image[i]) for i in order], axis=-1)
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "imagesTr" / "BRATS_001.nii.gz")
    nib.save(nib.Nifti1Image(grid.from_canonical(regions_to_labels(p.regions, "msd")), affine), tmp_path / "labelsTr" / "BRATS_001.nii.gz")
    for path in (tmp_path / "imagesTr" / "BRATS_001.nii.gz", tmp_path / "labelsTr" / "BRATS_001.nii.gz"):
        case = io.load_case(path)
        assert case.layout == "msd" and case.label_convention == "msd"
        np.testing.assert_array_equal(case.image, p.image)
        np.testing.assert_array_equal(case.regions, p.regions)


def test_explicit_mapping(tmp_path):
    folder, truth = write_case(tmp_path / "c", AFFINES["LPS"])
    renamed = {}
    for role, path in io.find_case_files(folder)[1].items():
        renamed[role] = path.rename(tmp_path / f"scan_{role.upper()}.nii.gz")
    case = io.load_case(mapping=renamed)
    np.testing.assert_array_equal(case.image, truth["image"])
    assert case.case_id == "scan", "the names say it (scan_T1, scan_T1CE: BraTS names, whatever the case)"
    folder, _ = write_case(tmp_path / "c2", AFFINES["LPS"])
    case_id, files, _ = io.find_case_files(folder)
    assert io.load_case(mapping={r: p for r, p in files.items() if r != "seg"}).case_id == case_id == "case", "BraTS names say the id"
    with pytest.raises(InputError, match="missing"):
        io.load_case(mapping={"t1": renamed["t1"]})


# ------------------------------------------------------------------ writing (bad input: test_reliability.py)


def test_no_silent_overwrite_and_nothing_left_on_error(tmp_path):
    folder, _ = write_case(tmp_path / "c", AFFINES["LPS"])
    case = io.load_case(folder)
    target = tmp_path / "out" / "m.nii.gz"
    io.write_mask(case.regions, case.grid, target)
    before = target.read_bytes()
    with pytest.raises(InputError, match="already exists"):
        io.write_mask(np.zeros_like(case.regions), case.grid, target)
    assert target.read_bytes() == before
    with pytest.raises(ValueError):
        io.write_mask(case.regions[:, :-1], case.grid, tmp_path / "out" / "bad.nii.gz")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["m.nii.gz"]


def test_an_eight_bit_map_reads_back_within_half_a_step_and_is_far_smaller(tmp_path):
    """The worklist keeps its probability and uncertainty maps in steps of 1/255: the low bits of a float map are noise that does not compress."""
    rng = np.random.default_rng(0)
    volume = np.clip(rng.normal(0.3, 0.3, (40, 48, 44)), 0, 1).astype(np.float32)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    grid = io.grid_of(nib.Nifti1Image(np.zeros(volume.shape[::-1], np.float32), affine))
    full = io.write_volume(volume, grid, tmp_path / "full.nii.gz")
    small = io.write_volume(volume, grid, tmp_path / "small.nii.gz", eight_bit=True)
    back = grid.to_canonical(np.asarray(io.read_nifti(small)[0], np.float32))
    assert np.abs(back - volume).max() <= 0.5 / 255 + 1e-6
    assert small.stat().st_size < full.stat().st_size / 3


@pytest.mark.skipif(__import__("os").name != "posix", reason="file modes are POSIX")
def test_a_write_never_sets_the_umask_while_other_threads_create_files(tmp_path, monkeypatch):
    """Reading the umask means setting it: a file another thread made meanwhile would be writable by all."""
    import os

    from napari_sevnet.files import write_text_atomic

    def forbidden(_mask):
        raise AssertionError("os.umask called while writing")

    monkeypatch.setattr(os, "umask", forbidden)
    path = write_text_atomic(tmp_path / "report.json", "{}")
    assert path.read_text(encoding="utf-8") == "{}" and path.stat().st_mode & 0o002 == 0, "not writable by all"


def test_voxels_without_a_value_are_read_as_background_and_said(tmp_path):
    """SPM and some registration tools write NaN where the original field of view did not reach: the case opens, and says so."""
    folder, truth = write_case(tmp_path / "c", AFFINES["RAS"])
    flair = folder / "case_flair.nii.gz"
    data = np.asanyarray(nib.load(flair).dataobj).astype(np.float32)
    data[:2] = np.nan  # two slabs of the file's first axis: 2 x 24 x 20 of 20 x 24 x 28 voxels
    nib.save(nib.Nifti1Image(data, AFFINES["RAS"]), flair)
    case = io.load_case(folder)
    (warning,) = case.warnings
    assert warning.startswith("case_flair.nii.gz: 960 voxels (7.1%) have no value (NaN") and "not to be relied on" in warning
    flair_index = io.MODALITIES.index("flair")
    assert np.isfinite(case.image).all() and (case.image[flair_index] == 0).sum() >= 960
    np.testing.assert_array_equal(case.image[0], truth["image"][0])  # the other scans as they were
    assert io.load_case(write_case(tmp_path / "d", AFFINES["RAS"])[0]).warnings == ()


def test_a_mask_painted_with_one_label_is_told_from_brats_labels_and_from_another_grid(tmp_path):
    from napari_sevnet.phantom import write_phantom

    case = io.load_case(write_phantom(tmp_path / "cases", seed=3, shape=(32, 40, 32)))
    img = nib.load(case.paths["seg"])
    brats = np.asanyarray(img.dataobj)
    painted = tmp_path / "painted.nii.gz"
    nib.save(nib.Nifti1Image((brats > 0).astype(np.uint8) * 255, img.affine), painted)
    whole, label = io.read_one_label_mask(painted, case.grid)
    assert label == 255 and np.array_equal(whole, case.regions[0])
    assert io.read_one_label_mask(case.paths["seg"], case.grid) is None, "BraTS labels: three values"
    shifted = np.array(img.affine)
    shifted[:3, 3] += 5
    nib.save(nib.Nifti1Image((brats > 0).astype(np.uint8), shifted), tmp_path / "elsewhere.nii.gz")
    assert io.read_one_label_mask(tmp_path / "elsewhere.nii.gz", case.grid) is None, "another grid"
    assert io.read_one_label_mask(tmp_path / "missing.nii.gz", case.grid) is None


@pytest.mark.parametrize("naming", ["brats2021", "brats2023"])
def test_files_named_by_their_sequence_alone_read_as_their_brats_names(tmp_path, naming):
    """t1.nii.gz ... seg.nii.gz (or BraTS 2023's t1n ... seg): the folder is the case, a 2023 set's mask has 2023 labels."""
    folder, truth = write_case(tmp_path / "named" / "case", AFFINES["LPS"], naming=naming)
    bare = tmp_path / "bare" / "Patient 7"
    bare.mkdir(parents=True)
    for path in folder.iterdir():
        path.rename(bare / path.name.replace("case_", "").replace("case-", "").upper())
    case = io.load_case(bare)
    assert case.case_id == "Patient 7" and case.layout == naming and not case.missing
    np.testing.assert_array_equal(case.image, truth["image"])
    np.testing.assert_array_equal(case.regions, truth["regions"])
    assert case.label_convention == naming


def test_a_correction_saved_beside_the_scans_under_its_own_name_is_no_second_case(tmp_path):
    """corrected_seg.nii.gz in the case folder made the folder 'hold several cases' and the case unopenable."""
    folder, truth = write_case(tmp_path / "case", AFFINES["LPS"])
    corrected = truth["regions"].copy()
    corrected[:, :2] = False
    grid = io.load_case(folder).grid
    for name in ("corrected_seg.nii.gz", "case_corrected_seg.nii.gz"):
        io.write_mask(corrected, grid, folder / name)
        case = io.load_case(folder)
        assert case.case_id == "case" and case.paths["seg"].name == "case_seg.nii.gz"  # the folder: its own mask
        np.testing.assert_array_equal(case.regions, truth["regions"])
        case = io.load_case(folder / name)  # the file: the case with this mask
        assert case.case_id == "case" and case.paths["seg"].name == name
        np.testing.assert_array_equal(case.regions, corrected)
        (folder / name).unlink()
