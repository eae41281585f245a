import numpy as np

from napari_sevnet.io import MODALITIES, load_case
from napari_sevnet.phantom import main, make_phantom


def test_deterministic_and_varied():
    a, b, c = make_phantom(5, (48, 48, 48)), make_phantom(5, (48, 48, 48)), make_phantom(6, (48, 48, 48))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.labels, c.labels)


def test_tumour_anatomy_and_contrast():
    p = make_phantom(2, (64, 64, 64))
    wt, tc, et = p.regions
    ncr, ed = tc & ~et, wt & ~tc
    assert ncr.sum() > 0 and ed.sum() > 0 and et.sum() > 0
    t1, t1ce, t2, flair = (p.image[MODALITIES.index(m)] for m in MODALITIES)
    brain = p.image[0] > 0
    normal = brain & ~wt
    assert t1ce[et].mean() > 1.3 * t1ce[normal].mean()  # ET bright on T1ce
    assert t1ce[ncr].mean() < 0.7 * t1ce[et].mean()  # necrosis dark on T1ce
    assert flair[ed].mean() > 1.3 * flair[normal].mean()  # edema bright on FLAIR
    assert t2[ed].mean() > 1.3 * t2[normal].mean()  # and on T2


def test_cli_writes_brats2021_folders(tmp_path):
    assert main([str(tmp_path), "--cases", "2", "--seed", "7", "--shape", "32", "32", "32"]) == 0
    folders = sorted(tmp_path.iterdir())
    assert [f.name for f in folders] == ["phantom_0007", "phantom_0008"]
    case = load_case(folders[0])
    assert case.layout == "brats2021" and case.regions is not None
    np.testing.assert_array_equal(case.regions, make_phantom(7, (32, 32, 32)).regions)
    assert main([str(tmp_path), "--seed", "7", "--shape", "32", "32", "32"]) == 1  # refuses to overwrite


def test_anatomy_stops_growing_at_head_size():
    """On a grid wider than a head (the BraTS grid is, in-plane) the brain keeps an adult size."""
    from napari_sevnet.inference import brain_box
    from napari_sevnet.phantom import HEAD_MM

    narrow, wide = make_phantom(4, (48, 64, 48)), make_phantom(4, (48, 320, 48))
    extent = lambda p: [s.stop - s.start for s in brain_box(p.image)]  # noqa: E731
    assert 0.75 * 64 < extent(narrow)[1] < 0.9 * 64  # small grids: the brain scales with the grid
    assert 0.75 * HEAD_MM[1] < extent(wide)[1] < 0.9 * HEAD_MM[1] < 200  # about 170 mm, like real brains
    box = brain_box(wide.image)[1]
    assert abs((box.start + box.stop) / 2 - 160) < 10  # centred in the field of view
