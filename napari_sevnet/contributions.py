"""What each MRI sequence contributed to a result: the case segmented again without it.

For a model trained with sequences left out, the contribution of sequence
``s`` to region ``r`` is how much the mean probability of ``r`` inside the
predicted ``r`` drops when ``s`` is left out (0 when nothing changes, up to 1
when the region vanishes without it). A clinician can read it ("ET rests on
T1ce") where the SE channels are abstract. It costs one pass per sequence.
"""

from __future__ import annotations

import numpy as np

from napari_sevnet.io import MODALITIES
from napari_sevnet.regions import REGIONS


def sequence_contributions(predictor, image: np.ndarray, *, sequences=MODALITIES, spacing=None, cancel=None) -> dict[str, dict[str, float]]:
    """{sequence: {region: drop in mean probability inside the predicted region}} for each present sequence."""
    if not predictor.handles_missing_sequences:
        raise ValueError("contributions need a model trained with missing sequences (leaving one out must be something it knows)")
    present = tuple(m for m in MODALITIES if m in sequences)
    full = predictor.predict(image, spacing=spacing, sequences=present, cancel=cancel)
    inside = {r: full.regions[i] for i, r in enumerate(REGIONS)}
    baseline = {r: float(full.probabilities[i][inside[r]].mean()) if inside[r].any() else 0.0 for i, r in enumerate(REGIONS)}
    out = {}
    for left_out in present:
        rest = tuple(m for m in present if m != left_out)
        if not rest:  # the only sequence: without it there is no image
            out[left_out] = dict(baseline)
            continue
        without = predictor.predict(image, spacing=spacing, sequences=rest, cancel=cancel)
        out[left_out] = {
            r: baseline[r] - (float(without.probabilities[i][inside[r]].mean()) if inside[r].any() else 0.0) for i, r in enumerate(REGIONS)
        }
    return out
