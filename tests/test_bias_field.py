"""The N4 step of sevnet-prepare (and of the bias-field benchmark): it removes a smooth multiplicative field inside the brain."""

import numpy as np

from napari_sevnet.prepare import correct_bias_field


def test_n4_flattens_a_smooth_field_and_keeps_the_background_zero():
    z, y, x = np.mgrid[:48, :56, :48].astype(np.float32)
    brain = (z - 24) ** 2 / 20**2 + (y - 28) ** 2 / 24**2 + (x - 24) ** 2 / 20**2 < 1
    tissue = np.where((x.astype(int) // 6) % 2 == 0, 100.0, 60.0)  # two tissues, so the field is not the only signal
    field = np.exp(0.4 * (x - 24) / 24)  # +/- 40 % across the brain
    volume = np.where(brain, tissue * field, 0).astype(np.float32)
    corrected = correct_bias_field(volume, brain, (1.0, 1.0, 1.0))
    assert not corrected[~brain].any()
    for value in (100.0, 60.0):
        inside = brain & (tissue == value)
        assert np.std(corrected[inside]) / np.mean(corrected[inside]) < 0.5 * np.std(volume[inside]) / np.mean(volume[inside])
