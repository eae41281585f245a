import threading

import numpy as np
import pytest
import torch

from napari_sevnet.errors import Cancelled
from napari_sevnet.inference import Predictor, brain_box, normalize
from napari_sevnet.phantom import make_phantom
from napari_sevnet.regions import make_nested


def test_normalize_is_zscore_over_brain():
    image = np.zeros((4, 8, 8, 8), np.float32)
    image[:, 2:6, 2:6, 2:6] = np.random.default_rng(0).uniform(100, 900, (4, 4, 4, 4))
    out = normalize(image)
    brain = np.any(image != 0, axis=0)
    assert np.allclose(out[:, brain].mean(1), 0, atol=1e-5) and np.allclose(out[:, brain].std(1), 1, atol=1e-4)
    assert not out[:, ~brain].any()
    assert brain_box(image) == (slice(2, 6), slice(2, 6), slice(2, 6))


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(3, (40, 48, 44))


@pytest.mark.parametrize("whole", [True, False])
def test_predict_pastes_back_on_the_full_grid(random_checkpoint, phantom, whole):
    predictor = Predictor(random_checkpoint, "cpu", whole_crop=whole)
    seen = []
    result = predictor.predict(phantom.image, progress=lambda f, m: seen.append(f))
    assert result.regions.shape == (3, 40, 48, 44) and result.regions.dtype == bool
    assert result.probabilities.shape == (3, 40, 48, 44)
    assert np.array_equal(result.regions, make_nested(result.regions))
    outside = np.ones((40, 48, 44), bool)
    outside[result.box] = False
    assert not result.probabilities[:, outside].any()
    assert set(result.attention) == set(predictor.model.stage_names)
    assert all(v.ndim == 1 and (0 < v).all() and (v < 1).all() for v in result.attention.values())
    assert seen[0] == 0.0 and seen[-1] == 1.0
    assert {"preprocess_s", "inference_s", "total_s"} <= set(result.timings)


def test_windows_have_the_training_patch_size(random_checkpoint, phantom):
    predictor = Predictor(random_checkpoint, "cpu")
    seen = []
    first_conv = next(m for m in predictor.model.modules() if isinstance(m, torch.nn.Conv3d))
    first_conv.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape[2:])))
    predictor.predict(phantom.image)  # a 40x48x44 phantom, 32^3 training patches: several windows
    assert len(seen) > 1 and set(seen) == {predictor.patch_size} == {(32, 32, 32)}
    small = np.zeros((4, 20, 24, 20), np.float32)
    small[:, 2:18, 2:22, 2:18] = 1 + np.random.default_rng(0).random((4, 16, 20, 16))
    seen.clear()
    predictor.predict(small)  # smaller than a patch: zero-padded to one, as in training
    assert seen == [(32, 32, 32)]


def test_sliding_window_matches_whole_crop_closely(random_checkpoint, phantom):
    whole = Predictor(random_checkpoint, "cpu", whole_crop=True).predict(phantom.image)
    windows = Predictor(random_checkpoint, "cpu").predict(phantom.image)
    # instance norm sees different statistics per window, so not identical, but close
    assert np.abs(whole.probabilities - windows.probabilities).mean() < 0.05


@pytest.mark.parametrize("windows_fit", [True, False])
def test_a_gpu_out_of_memory_falls_back_to_windows_then_to_the_cpu_and_says_so(random_checkpoint, phantom, windows_fit):
    """A laptop's small GPU: the whole brain in one pass does not fit; windows may; else the CPU does it (no GPU here:
    the GPU's answers are simulated, the work itself is done on the CPU)."""
    predictor = Predictor(random_checkpoint, "cpu", whole_crop=True)
    expected = predictor.predict(phantom.image)
    real, calls = predictor._infer, []

    def on_a_small_gpu(*args):
        calls.append((predictor.device.type, predictor.whole_crop))
        if predictor.device.type == "cuda":
            if predictor.whole_crop or not windows_fit:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            predictor.device = torch.device("cpu")  # the windows' work, done here
            try:
                return real(*args)
            finally:
                predictor.device = torch.device("cuda")
        return real(*args)

    predictor._infer, predictor.device = on_a_small_gpu, torch.device("cuda")
    result = predictor.predict(phantom.image)
    if windows_fit:
        assert calls == [("cuda", True), ("cuda", False)] and result.device == "cuda"
        assert any("segmented in windows" in note for note in result.notes)
    else:
        assert calls == [("cuda", True), ("cuda", False), ("cpu", False)] and result.device == "cpu"
        assert any("segmented on the CPU instead" in note for note in result.notes)
        assert predictor.device.type == "cpu", "later cases go straight to the CPU"
    assert result.regions.shape == expected.regions.shape
    predictor.device = torch.device("cpu")  # out of memory on the CPU is not the GPU's: no retry hides it
    predictor._infer = lambda *args: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    with pytest.raises(torch.cuda.OutOfMemoryError):
        predictor.predict(phantom.image)


def test_tta_averages_mirror_flips(random_checkpoint, phantom):
    plain = Predictor(random_checkpoint, "cpu").predict(phantom.image)
    tta = Predictor(random_checkpoint, "cpu", tta=True).predict(phantom.image)
    assert not np.allclose(plain.probabilities, tta.probabilities)
    flipped = Predictor(random_checkpoint, "cpu", tta=True).predict(phantom.image[:, :, :, ::-1].copy())
    # TTA over all mirror flips is flip-equivariant
    np.testing.assert_allclose(flipped.probabilities[:, :, :, ::-1], tta.probabilities, atol=1e-4)
    # two passes, the scan and its left-right mirror: the cheap ensemble is left-right equivariant
    predictor = Predictor(random_checkpoint, "cpu")
    pair, mirrored = predictor.predict(phantom.image, tta=2), predictor.predict(phantom.image[:, :, :, ::-1].copy(), tta=2)
    assert pair.members == 2 and pair.tta
    np.testing.assert_allclose(mirrored.probabilities[:, :, :, ::-1], pair.probabilities, atol=1e-4)


def test_cancel(random_checkpoint, phantom):
    event = threading.Event()
    event.set()
    with pytest.raises(Cancelled):
        Predictor(random_checkpoint, "cpu", tta=True).predict(phantom.image, cancel=event)


def test_a_feature_map_is_on_the_image_grid_and_computed_as_predict_sees_the_case(random_checkpoint, phantom):
    predictor = Predictor(random_checkpoint, "cpu")
    fmap = predictor.feature_map(phantom.image, "enc2", 3)
    assert fmap.shape == (40, 48, 44) and np.any(fmap)
    assert np.array_equal(predictor.feature_map(phantom.image, "enc2", 3, spacing=(1.0, 1.0, 1.0)), fmap)
    fine = predictor.feature_map(phantom.image, "enc2", 3, spacing=(0.5, 0.5, 0.5))  # predict resamples a 0.5 mm case to 1 mm
    assert fine.shape == fmap.shape and not np.allclose(fine, fmap)
    with pytest.raises(ValueError, match="unknown stage"):
        predictor.feature_map(phantom.image, "enc9", 0)
    with pytest.raises(ValueError, match="channels 0 to 7, not 8"):
        predictor.feature_map(phantom.image, "enc2", 8)


def test_bad_image_shape(random_checkpoint):
    with pytest.raises(ValueError, match=r"\(4, Z, Y, X\)"):
        Predictor(random_checkpoint, "cpu").predict(np.zeros((3, 8, 8, 8)))
