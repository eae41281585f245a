"""Correcting a 3D mask in a few clicks: grow from the model's probabilities, remove what the click touches, move the whole edge, fill between slices.

All of them work on numpy arrays (no Qt, no napari) and return a mask, so
the Correct dock (and the simulated annotator of ``benchmarks/correction.py``)
applies them as one edit of a Labels layer.

* :func:`grow` (a positive click): the 3D connected region around the click
  where the model's probability for the region is at least a threshold,
  never farther than ``max_radius_mm`` from the click, so one click cannot
  flood the brain. Where the click's own voxel is below the threshold, the
  threshold follows it down to the probability there; where the model saw
  nothing at all (under ``INFORMATIVE``), the region grows on the image
  instead: voxels whose intensity (FLAIR for WT, T1ce for TC and ET,
  :data:`GUIDE_SEQUENCE`) lies within ``INTENSITY_TOLERANCE`` standard
  deviations of the clicked one, no farther than ``IMAGE_REACH_MM`` (5 mm:
  intensity alone cannot tell tumour core from brain of the same brightness;
  with the full reach such clicks added several times more brain than tumour
  on the training cases).
* :func:`shrink` (a negative click), its mirror: the part of the mask's
  connected component under the click, within a reach that grows with how
  deep inside the mask the click lies (``REACH_PER_DEPTH`` times that depth,
  between ``IMAGE_REACH_MM`` and ``max_radius_mm``), that the model was no more sure
  of than of the clicked voxel (probability below ``keep_above``, by default
  a little above the click's own) and, given the guide sequence, looks like
  the clicked voxel: a false alarm goes, the tumour next to it stays. The
  depth-bound reach matters where the model was sure of its false alarm (the
  probability cannot tell it from the tumour): a click on a thin false rim
  trims the rim near the click, a click deep in a false island removes the
  island. With the full 20 mm reach such rim clicks on the real held-out cases
  removed several times more tumour than false alarm (4063 tumour voxels for
  803 false ones on CBICA_AOP_1), and the next click put it back.
* :func:`move_threshold` (the whole region at once): the model's edge moved
  to another threshold, only where the probability lies between the two, so
  one move tightens or loosens a rim that is too wide or too narrow all around.
* :func:`fill_between` (two or more drawn slices): the slices in between get
  the shape interpolated between their neighbours by signed distance, only
  where the brush went on those slices (the rest of the tumour stays).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

STRUCTURE = np.ones((3, 3, 3), bool)  # 26-connected, as the lesion-wise metrics count components
DEFAULT_THRESHOLD = 0.3
DEFAULT_RADIUS_MM = 20.0
FOLLOW_DOWN = 0.8  # a click below the threshold grows where the probability is at least this share of the click's own
INFORMATIVE = 0.05  # below this the model saw nothing there: grow on the image instead
INTENSITY_TOLERANCE = 0.5  # in standard deviations of the head's intensities within the click's ball
IMAGE_REACH_MM = 5.0  # growing on the image alone (the model saw nothing there) reaches at most this far
REACH_PER_DEPTH = 3.0  # a negative click reaches this many times its depth inside the mask (at least IMAGE_REACH_MM)
#: the sequence that shows each region best: what a click on missed tumour grows on
GUIDE_SEQUENCE = {"WT": "flair", "TC": "t1ce", "ET": "t1ce"}


def _ball_box(shape, seed, radius_mm, spacing):
    """The box around ``seed`` that holds the ball of ``radius_mm``, and the ball inside it."""
    half = [int(np.ceil(radius_mm / s)) for s in spacing]
    box = tuple(slice(max(c - h, 0), min(c + h + 1, n)) for c, h, n in zip(seed, half, shape))
    grids = np.ogrid[tuple(slice(b.start - c, b.stop - c) for b, c in zip(box, seed))]
    ball = sum((g * s) ** 2 for g, s in zip(grids, spacing)) <= radius_mm**2
    return box, ball


def grow(probability: np.ndarray, seed, *, image: np.ndarray | None = None, threshold: float = DEFAULT_THRESHOLD, follow: bool = True,
         max_radius_mm: float = DEFAULT_RADIUS_MM, spacing=(1.0, 1.0, 1.0)) -> tuple[np.ndarray, float]:
    """(bool mask of the grown region, the threshold used) for a positive click at voxel ``seed``.

    With ``follow`` a threshold above the clicked voxel's probability follows it down (the first click); without,
    ``threshold`` is used as given (the user moved the slider). ``image``: the guide sequence (Z, Y, X), used where
    the probability says nothing; there a lower threshold accepts intensities farther from the clicked one.
    """
    seed = tuple(int(v) for v in seed)
    here = float(probability[seed])
    on_image = here < INFORMATIVE and image is not None
    box, ball = _ball_box(probability.shape, seed, min(max_radius_mm, IMAGE_REACH_MM) if on_image else max_radius_mm, spacing)
    local_seed = tuple(c - b.start for c, b in zip(seed, box))
    used = max(here * FOLLOW_DOWN, 0.01) if follow and here < threshold else threshold
    if not on_image:
        candidates = (np.asarray(probability[box], dtype=np.float32) >= used) & ball
    else:
        local = np.asarray(image[box], dtype=np.float32)
        head = local[ball & (local != 0)]
        spread = float(head.std()) if head.size > 1 else 1.0
        used = threshold  # on the image the probability's follow-down means nothing
        tolerance = INTENSITY_TOLERANCE * (1 - used) / (1 - DEFAULT_THRESHOLD)
        candidates = (np.abs(local - float(image[seed])) <= tolerance * spread) & (local != 0) & ball
    candidates[local_seed] = True
    labels, _ = ndimage.label(candidates, structure=STRUCTURE)
    out = np.zeros(probability.shape, bool)
    out[box] = labels == labels[local_seed]
    return out, used


def shrink(mask: np.ndarray, seed, probability: np.ndarray | None = None, *, image: np.ndarray | None = None, keep_above: float | None = None,
           max_radius_mm: float = DEFAULT_RADIUS_MM, reach_per_depth: float | None = REACH_PER_DEPTH, spacing=(1.0, 1.0, 1.0)) -> tuple[np.ndarray, float]:
    """(bool mask of the voxels a negative click at ``seed`` removes from ``mask``, the threshold used); empty outside the mask.

    ``reach_per_depth`` None: the full ``max_radius_mm`` whatever the click's depth inside the mask.
    """
    seed = tuple(int(v) for v in seed)
    out = np.zeros(mask.shape, bool)
    if probability is None:
        keep_above = 1.0
    elif keep_above is None:
        keep_above = min(float(probability[seed]) / FOLLOW_DOWN, 1.0 + 1e-6)
    if not mask[seed]:
        return out, keep_above
    if reach_per_depth is not None:
        max_radius_mm = min(max_radius_mm, max(IMAGE_REACH_MM, reach_per_depth * _depth_inside(mask, seed, max_radius_mm, spacing)))
    box, ball = _ball_box(mask.shape, seed, max_radius_mm, spacing)
    local = np.asarray(mask[box], bool) & ball
    if probability is not None:
        local &= np.asarray(probability[box], dtype=np.float32) < keep_above
    if image is not None:
        intensity = np.asarray(image[box], dtype=np.float32)
        head = intensity[ball & (intensity != 0)]
        spread = float(head.std()) if head.size > 1 else 1.0
        local &= np.abs(intensity - float(image[seed])) <= INTENSITY_TOLERANCE * spread
    local_seed = tuple(c - b.start for c, b in zip(seed, box))
    local[local_seed] = True
    labels, _ = ndimage.label(local, structure=STRUCTURE)
    out[box] = labels == labels[local_seed]
    return out, keep_above


def move_threshold(mask: np.ndarray, probability: np.ndarray, old: float, new: float) -> np.ndarray:
    """``mask`` with the model's edge moved from threshold ``old`` to ``new`` everywhere at once: the whole region looser or tighter.

    Only voxels whose probability lies between the two thresholds change, so
    what a click or the brush did elsewhere stays: lowering adds those voxels
    where they touch the region (26-connected through them, never a speck
    apart), raising removes those inside it.
    """
    mask = np.asarray(mask, bool)
    probability = np.asarray(probability)
    if new >= old:
        return mask & ~((probability >= old) & (probability < new))
    band = (probability >= new) & (probability < old) & ~mask
    labels, _ = ndimage.label(mask | band, structure=STRUCTURE)
    touching = np.unique(labels[mask])
    return mask | (band & np.isin(labels, touching[touching > 0]))


def _depth_inside(mask: np.ndarray, seed, limit_mm: float, spacing) -> float:
    """Distance in mm from ``seed`` to the nearest voxel outside ``mask`` (at most about ``limit_mm``: looked up in a box)."""
    box, _ = _ball_box(mask.shape, seed, limit_mm, spacing)
    local = np.pad(np.asarray(mask[box], bool), 1, constant_values=True)  # the box's edge is not the mask's
    depth = ndimage.distance_transform_edt(local, sampling=spacing)
    return float(depth[tuple(c - b.start + 1 for c, b in zip(seed, box))])


def _signed_distance(section: np.ndarray, spacing) -> np.ndarray:
    """Negative inside, positive outside, in mm (2D)."""
    if not section.any():
        return np.full(section.shape, np.inf)
    outside = ndimage.distance_transform_edt(~section, sampling=spacing)
    inside = ndimage.distance_transform_edt(section, sampling=spacing)
    return outside - inside


def fill_between(mask: np.ndarray, drawn: list[int], axis: int = 0, spacing=(1.0, 1.0, 1.0), areas: dict | None = None) -> np.ndarray:
    """``mask`` with the slices between consecutive ``drawn`` slices (along ``axis``) interpolated by signed distance.

    The drawn slices themselves are kept; each gap gets, slice by slice, the
    region where the distance-weighted mix of its two neighbours' signed
    distances is negative: a shape that morphs from one drawn outline to the next.
    ``areas`` (drawn slice -> its in-plane box, e.g. where the brush went): each
    gap changes only within the box around its two slices' areas, so a shape
    drawn beside the tumour does not redraw the tumour in the slices between.
    """
    out = np.array(mask, bool, copy=True)
    drawn = sorted({int(d) for d in drawn})
    in_plane = tuple(s for i, s in enumerate(spacing) if i != axis)
    for a, b in zip(drawn, drawn[1:]):
        if b - a < 2:
            continue
        within = (slice(None),) * (out.ndim - 1)
        if areas is not None:
            within = tuple(slice(min(p.start, q.start), max(p.stop, q.stop)) for p, q in zip(areas[a], areas[b]))
        da = _signed_distance(np.take(out, a, axis=axis)[within], in_plane)
        db = _signed_distance(np.take(out, b, axis=axis)[within], in_plane)
        for k in range(a + 1, b):
            t = (k - a) / (b - a)
            mixed = (1 - t) * np.where(np.isinf(da), 1e3, da) + t * np.where(np.isinf(db), 1e3, db)
            index = list(within)
            index.insert(axis, k)
            out[tuple(index)] = mixed < 0
    return out


def largest_error_centre(prediction: np.ndarray, truth: np.ndarray, spacing=(1.0, 1.0, 1.0)):
    """(voxel, True for missed tumour / False for a false alarm) at the centre of the largest error region, or None.

    The centre is the error voxel farthest from the region's border: where an
    interactive-segmentation study places a simulated user's click.
    """
    best = None
    for missed, error in ((True, truth & ~prediction), (False, prediction & ~truth)):
        if not error.any():
            continue
        labels, n = ndimage.label(error, structure=STRUCTURE)
        sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
        biggest = int(np.argmax(sizes)) + 1
        if best is None or sizes[biggest - 1] > best[0]:
            best = (sizes[biggest - 1], labels == biggest, missed)
    if best is None:
        return None
    _, region, missed = best
    box = ndimage.find_objects(region.astype(np.uint8))[0]
    local = np.pad(region[box], 1)
    depth = ndimage.distance_transform_edt(local, sampling=spacing)
    centre = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return tuple(int(c) - 1 + b.start for c, b in zip(centre, box)), missed
