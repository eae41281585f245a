import numpy as np
import pytest

from napari_sevnet import regions as reg


@pytest.mark.parametrize("convention,values", [("brats2021", (1, 2, 4)), ("brats2023", (1, 2, 3)), ("msd", (2, 1, 3))])
def test_labels_to_regions_and_back(convention, values):
    ncr, ed, et = values
    labels = np.array([[[0, ncr, ed, et]]], dtype=np.uint8)
    regions = reg.labels_to_regions(labels, convention)
    # WT = NCR+ED+ET, TC = NCR+ET, ET
    assert regions[:, 0, 0].tolist() == [[False, True, True, True], [False, True, False, True], [False, False, False, True]]
    assert np.array_equal(reg.regions_to_labels(regions, convention), labels)


def test_conversion_between_conventions():
    labels2021 = np.array([0, 1, 2, 4])
    regions = reg.labels_to_regions(labels2021, "2021")
    assert reg.regions_to_labels(regions, "2023").tolist() == [0, 1, 2, 3]
    assert reg.regions_to_labels(regions, "msd").tolist() == [0, 2, 1, 3]


def test_unknown_labels_rejected():
    with pytest.raises(ValueError, match=r"unknown label values \[3\]"):
        reg.labels_to_regions(np.array([0, 1, 3]), "brats2021")
    with pytest.raises(ValueError, match="unknown label values"):
        reg.guess_convention(np.array([0, 7]))
    with pytest.raises(ValueError, match="both 3 and 4"):
        reg.guess_convention(np.array([3, 4]))
    with pytest.raises(ValueError, match=r"unknown label values \[5, 6, 7, 8, 9, \.\.\., 499\] \(495 values: a scan rather than a label mask\?\)") as scan:
        reg.guess_convention(np.arange(500))  # a FLAIR picked as the mask: a few of its values, not five hundred
    assert len(str(scan.value)) < 200
    with pytest.raises(ValueError, match="unknown label convention"):
        reg.convention_name("brats2099")


def test_guess_convention_only_where_the_values_leave_no_doubt():
    assert reg.guess_convention(np.array([0, 1, 2, 4])) == "brats2021"
    assert reg.guess_convention(np.array([0, 2])) == "brats2021"  # the same in 2021 and 2023
    with pytest.raises(ValueError, match="Decathlon"):
        reg.guess_convention(np.array([0, 1, 2, 3]))  # 2023 or the Decathlon's: the naming must say
    with pytest.raises(ValueError, match="label 1 alone.*ITK-SNAP"):
        reg.guess_convention(np.array([0, 1]))  # necrosis alone, or a mask painted with an editor's one default label
    assert reg.guess_convention(np.array([0])) == "brats2021", "an empty mask is empty in every convention"


def test_make_nested_adds_inner_regions_outwards():
    wt = np.array([0, 1, 0, 0], bool)
    tc = np.array([0, 0, 1, 0], bool)
    et = np.array([0, 0, 0, 1], bool)
    nested = reg.make_nested(np.stack([wt, tc, et]))
    assert nested[0].tolist() == [False, True, True, True]
    assert nested[1].tolist() == [False, False, True, True]
    assert nested[2].tolist() == [False, False, False, True]
    assert np.array_equal(reg.make_nested(nested), nested)  # idempotent


def test_volumes_ml_uses_spacing():
    regions = np.zeros((3, 10, 10, 10), bool)
    regions[0, :5] = True  # 500 voxels
    regions[1, :1] = True  # 100 voxels
    vol = reg.volumes_ml(regions, (2.0, 1.0, 1.0))  # 2 mm^3 per voxel
    assert vol == {"WT": 1.0, "TC": 0.2, "ET": 0.0}


def test_drop_small_components_removes_small_pieces_from_every_region_by_volume():
    regions = np.zeros((3, 40, 40, 40), bool)
    regions[:, 5:15, 5:15, 5:15] = True  # 1000 voxels: the tumour
    regions[0, 30:33, 30:33, 30:33] = True  # 27 voxels away from it
    regions[1:, 31, 31, 31] = True
    kept = regions.copy()
    assert reg.drop_small_components(regions, 0.5, (1.0, 1.0, 1.0)) == 1
    np.testing.assert_array_equal(regions[:, 5:15, 5:15, 5:15], kept[:, 5:15, 5:15, 5:15])
    assert not regions[:, 25:, 25:, 25:].any() and regions.sum() == 3000
    regions = kept.copy()
    assert reg.drop_small_components(regions, 0.5, (3.0, 3.0, 3.0)) == 0, "27 voxels of 27 mm^3 are 0.73 mL"
    assert reg.drop_small_components(np.zeros((3, 4, 4, 4), bool), 0.5, (1.0, 1.0, 1.0)) == 0


def _ring_enhancing_tumour(shape=(12, 32, 32)):
    """A hollow enhancing sphere shell whose dark centre the model left out of the core: the classic ring-enhancing glioblastoma."""
    zz, yy, xx = np.indices(shape)
    r = np.sqrt(((zz - 6) * 2.0) ** 2 + (yy - 16) ** 2 + (xx - 16) ** 2)
    et = (r >= 6) & (r < 9)
    wt = r < 12
    return np.stack([wt, et.copy(), et])


def test_fill_core_holes_makes_the_enclosed_centre_core_not_enhancing():
    regions = _ring_enhancing_tumour()
    centre = np.zeros(regions.shape[1:], bool)
    centre[3:10, 12:21, 12:21] = True
    centre &= ~regions[1]
    et_before = regions[2].copy()
    added = reg.fill_core_holes(regions)
    assert added > 0 and added == int(regions[1].sum() - et_before.sum())
    assert regions[1][6, 16, 16], "the necrotic centre enclosed by the rim becomes core"
    np.testing.assert_array_equal(regions[2], et_before)  # enhancing stays a rim: the filled voxels are necrosis
    assert (regions[0] >= regions[1]).all()
    labels = reg.regions_to_labels(regions)
    assert labels[6, 16, 16] == reg.CONVENTIONS["brats2021"]["NCR"]


def test_fill_core_holes_fills_a_cavity_open_in_3d_but_closed_on_each_slice():
    regions = _ring_enhancing_tumour()
    regions[1][:6, 14:19, 14:19] = False  # a channel from the centre up and out through the top: no 3D hole left
    regions[2] = regions[1].copy()
    from scipy import ndimage

    assert (ndimage.binary_fill_holes(regions[1]) == regions[1]).all()
    reg.fill_core_holes(regions)
    assert regions[1][6, 16, 16] and regions[1][4, 16, 16], "closed on the axial slice: filled"
    assert not regions[1][0, 16, 16], "nothing outside the core's outline"


def test_fill_core_holes_leaves_a_solid_or_empty_core_alone():
    regions = np.zeros((3, 8, 8, 8), bool)
    assert reg.fill_core_holes(regions) == 0
    regions[:, 2:6, 2:6, 2:6] = True
    before = regions.copy()
    assert reg.fill_core_holes(regions) == 0
    np.testing.assert_array_equal(regions, before)


def test_postprocess_records_the_filled_voxels_only_when_asked():
    regions = _ring_enhancing_tumour()
    assert "core_holes_filled_voxels" not in reg.postprocess(regions.copy(), (1.0, 1.0, 1.0), {}, None)
    record = reg.postprocess(regions, (1.0, 1.0, 1.0), {}, None, fill_holes=True)
    assert record["core_holes_filled_voxels"] > 0 and regions[1][6, 16, 16]
