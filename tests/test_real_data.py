"""Checks on the real BraTS scans in ../shared/data (skipped with a reason when absent)."""

import nibabel as nib
import numpy as np
import pytest

from napari_sevnet import io
from napari_sevnet.inference import Predictor
from tests.conftest import real_case


def test_brats2021_case_loads_with_expert_regions():
    case = io.load_case(real_case("BraTS2021_00006"))
    assert case.image.shape == (4, 155, 240, 240) and case.spacing == (1.0, 1.0, 1.0)
    assert case.label_convention == "brats2021"
    # README: NCR 25,506, ED 85,957, ET 26,448 voxels
    assert case.regions.sum(axis=(1, 2, 3)).tolist() == [25506 + 85957 + 26448, 25506 + 26448, 26448]


def test_brats2023_case_loads():
    case = io.load_case(real_case("BraTS-GLI-00001-000") / "BraTS-GLI-00001-000-t2f.nii.gz")
    assert case.layout == "brats2023" and case.image.shape == (4, 155, 240, 240) and case.regions is None


def test_lps_and_ras_copies_of_a_real_case_give_identical_arrays(tmp_path):
    src = real_case("TCGA-DU-7294")
    lps = io.load_case(src)
    ras_dir = tmp_path / "ras"
    ras_dir.mkdir()
    for path in lps.paths.values():
        img = nib.load(path)
        ras = nib.as_closest_canonical(img)
        assert not np.array_equal(ras.affine, img.affine)  # the copy really has another header
        nib.save(ras, ras_dir / path.name)
    ras_case = io.load_case(ras_dir)
    np.testing.assert_array_equal(ras_case.image, lps.image)
    np.testing.assert_array_equal(ras_case.regions, lps.regions)


@pytest.mark.slow
def test_predicted_mask_lies_on_the_input_grid(random_checkpoint, tmp_path):
    src = real_case("BraTS-GLI-00001-000")
    case = io.load_case(src)
    result = Predictor(random_checkpoint, "cpu").predict(case.image)
    out = io.write_mask(result.regions, case.grid, tmp_path / "pred_seg.nii.gz", "2023")
    written, source = nib.load(out), nib.load(case.paths["flair"])
    assert written.shape == source.shape
    np.testing.assert_array_equal(written.affine, source.affine)
    back = io.load_case(mapping={**{m: case.paths[m] for m in io.MODALITIES}, "seg": out}, label_convention="2023")
    np.testing.assert_array_equal(back.regions, result.regions)


@pytest.mark.slow
def test_fine_tuning_the_default_on_a_real_case_it_gets_wrong_fits_its_consensus(tmp_path):
    """TCGA-DU-7294, where the default over-calls FLAIR hyperintensity (model card): 8 steps of finetune_real_case.yaml fix most of it.

    Measured (2026-12-06): the default's 0.53 WT Dice (precision 0.36) -> 0.92 after 8 steps, 0.91 after 16 (the test's
    schedule until then; each step is about 25 s on one CPU thread, so 8 keep the suite shorter).
    """
    import subprocess
    import sys
    from pathlib import Path

    from napari_sevnet.metrics import dice

    src = real_case("TCGA-DU-7294")
    root = Path(__file__).resolve().parents[1]
    before = Predictor(None, "cpu").predict(io.load_case(src).image)  # the config's init: the shipped default
    cmd = [sys.executable, "-m", "training.cli", "--config", str(root / "training" / "configs" / "finetune_real_case.yaml"),
           f"data.roots=[{src}]", "epochs=1", "steps_per_epoch=8", "-o", str(tmp_path / "run")]
    subprocess.run(cmd, check=True, capture_output=True, timeout=900, cwd=root)
    case = io.load_case(src)
    after = Predictor(tmp_path / "run" / "last.json", "cpu").predict(case.image)
    wt_before, wt_after = dice(before.regions[0], case.regions[0]), dice(after.regions[0], case.regions[0])
    assert wt_before < 0.6 and wt_after >= wt_before + 0.3, (wt_before, wt_after)


@pytest.mark.slow
def test_no_real_case_looks_swapped_and_each_swapped_copy_names_its_pair():
    """The swap check on every real case here: silent on the cases as they are; each of the four pairs its rules cover,
    swapped, is named; a double swap is said to be a mix-up."""
    from napari_sevnet.assumptions import swapped_pair_warnings

    def swapped(image, *pairs):
        image = image.copy()
        for x, y in pairs:
            i, j = io.MODALITIES.index(x), io.MODALITIES.index(y)
            image[[i, j]] = image[[j, i]]
        return image

    named = {("t2", "flair"): "T2 and FLAIR", ("t1", "t1ce"): "T1ce and T1", ("t1", "t2"): "T2 and T1", ("t1ce", "t2"): "T2 and T1ce"}
    cases = sorted(real_case("brats18").iterdir()) + [real_case(name) for name in ("BraTS2021_00006", "TCGA-DU-7294", "BraTS-GLI-00001-000")]
    cases.append(real_case("TCIA-RAW-FG-6692") / "brats_space")
    for folder in cases:
        image = io.load_case(folder, read_mask=False).image
        assert swapped_pair_warnings(image) == [], folder.name
        for pair, name in named.items():
            (warning,) = swapped_pair_warnings(swapped(image, pair))
            assert warning.startswith(f"{name} look swapped ("), (folder.name, pair, warning)
        (warning,) = swapped_pair_warnings(swapped(image, ("t2", "flair"), ("t1", "t1ce")))
        assert warning.startswith("the sequences look mixed up ("), (folder.name, warning)
