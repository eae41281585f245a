"""Where the model is unsure, and one number per case to sort a worklist by.

The Predictor (``uncertainty=True``) returns, per region, the entropy of the
mean probability over its ensemble members (the 8 mirror flips of test-time
augmentation, times MC-dropout samples when the model has dropout) and where
the members disagree. This module turns them into the case summary written to
``<case>_report.json``:

score = mean WT entropy (bits, 0..1) over the voxels any member calls tumour
      + the fraction of those voxels on which the members disagree.

Both terms are 0 for a case the model is sure of and approach 1 each for one
it cannot decide; a higher score means "correct this case first".
"""

from __future__ import annotations

import numpy as np

from napari_sevnet.regions import REGIONS


def uncertainty_summary(prediction, spacing) -> dict:
    """Per-case uncertainty figures from a Predictor result made with ``uncertainty=True``."""
    if prediction.uncertainty is None or prediction.disagreement is None:
        raise ValueError("this prediction was made without uncertainty (Predictor(uncertainty=True))")
    voxel_ml = float(np.prod(spacing)) / 1000.0
    candidate = prediction.regions[0] | prediction.disagreement[0]  # voxels any member calls whole tumour
    n = int(candidate.sum())
    mean_entropy = float(prediction.uncertainty[0][candidate].mean()) if n else 0.0
    disagreeing = float(prediction.disagreement[0].sum() / n) if n else 0.0
    return {
        "score": round(mean_entropy + disagreeing, 5),
        "mean_entropy_wt_bits": round(mean_entropy, 5),
        "disagreement_fraction_wt": round(disagreeing, 5),
        "disagreement_ml": {r: round(float(prediction.disagreement[i].sum()) * voxel_ml, 3) for i, r in enumerate(REGIONS)},
        "members": int(prediction.members),
    }
