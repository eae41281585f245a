"""What the model assumes about its input, checked on every case before it runs.

The bundled models were trained on skull-stripped, co-registered BraTS scans:
about 1 mm isotropic, a background of exact zeros around the brain, positive
intensities, an adult brain of roughly 1.0-1.6 L. A scan that breaks one of
these is segmented anyway when it can be, but never silently:

* another voxel size is resampled to the training spacing and back (a note
  says so: :func:`needs_resampling`);
* no zero background (an intensity offset, the skull still there), intensities
  that are mostly negative, or a brain volume outside a plausible range give a
  warning that reaches the CLI, the report and the GUI (:func:`input_warnings`);
* a case with sequences missing gets the model card's held-out Dice for that set
  of sequences, or says the set was never scored (:func:`sequence_set_warnings`);
* sequences that look the wrong way round (T2 and FLAIR, T1 and T1ce, T1 or T1ce
  and T2: what a clinic's export or a hand assignment mixes up) give a warning
  naming them (:func:`swapped_pair_warnings`).
"""

from __future__ import annotations

import itertools

import numpy as np

from napari_sevnet.io import MODALITIES, MODALITY_LABELS

#: spacing the models were trained at (BraTS): the default for checkpoints that do not declare it
TRAINING_SPACING_MM = (1.0, 1.0, 1.0)
SPACING_TOLERANCE = 0.1  # relative: 1.05 mm is fine, 0.5 or 1.5 mm is resampled
MIN_BACKGROUND_FRACTION = 0.05  # a skull-stripped BraTS volume is 80-90 % zeros
PLAUSIBLE_BRAIN_ML = (400.0, 2200.0)
#: the sets of sequences a model card scores on held-out cases (``held_out_figures_by_sequences``): name -> the sequences present;
#: every one of the 14 a case can have besides all four
SEQUENCE_SETS = {
    "all four": ("t1", "t1ce", "t2", "flair"),
    "no T1": ("t1ce", "t2", "flair"),
    "no T2": ("t1", "t1ce", "flair"),
    "no FLAIR": ("t1", "t1ce", "t2"),
    "no T1ce": ("t1", "t2", "flair"),  # a protocol without contrast agent (renal failure, pregnancy)
    "FLAIR + T1ce": ("t1ce", "flair"),
    "T2 + FLAIR": ("t2", "flair"),
    "T1 + FLAIR": ("t1", "flair"),
    "T1 + T1ce": ("t1", "t1ce"),
    "T1ce + T2": ("t1ce", "t2"),
    "T1 + T2": ("t1", "t2"),
    "T1ce only": ("t1ce",),
    "FLAIR only": ("flair",),
    "T1 only": ("t1",),
    "T2 only": ("t2",),
}


def needs_resampling(spacing, training_spacing=TRAINING_SPACING_MM) -> bool:
    ratio = np.asarray(spacing, float) / np.asarray(training_spacing, float)
    return bool(np.any(np.abs(ratio - 1) > SPACING_TOLERANCE))


def input_warnings(image: np.ndarray, spacing=TRAINING_SPACING_MM) -> list[str]:
    """Sentences about how ``image`` (4, Z, Y, X) differs from what the model was trained on; empty when it does not."""
    warnings = []
    for i, m in enumerate(MODALITIES):
        volume = image[i]
        zeros = float(np.mean(volume == 0))
        if zeros < MIN_BACKGROUND_FRACTION:
            values, counts = np.unique(volume[:: max(volume.size // 200_000, 1)], return_counts=True)
            warnings.append(
                f"{MODALITY_LABELS[m]} has no zero background ({100 * zeros:.1f} % of voxels are 0, the most common value is "
                f"{values[np.argmax(counts)]:g}): the model expects skull-stripped scans with a zero background (an intensity offset in the header? the skull still there?)"
            )
        inside = volume[volume != 0]
        if inside.size and float(np.mean(inside < 0)) > 0.5:
            warnings.append(f"{MODALITY_LABELS[m]} is mostly negative inside the head: MRI magnitudes are not, and the model was trained on positive ones")
    brain_ml = float(np.count_nonzero(np.any(image != 0, axis=0))) * float(np.prod(spacing)) / 1000.0
    lo, hi = PLAUSIBLE_BRAIN_ML
    if not lo <= brain_ml <= hi:
        warnings.append(f"the non-zero volume is {brain_ml:.0f} mL, outside the {lo:.0f}-{hi:.0f} mL of a skull-stripped adult brain (skull not removed? part of the head only?)")
    return warnings + swapped_pair_warnings(image)


#: (x, y, what makes x's brightest voxels dull in y): on all 24 real cases here (BraTS 2013-2023, TCGA) the brightest
#: 2 % of x rank lower in y than the brightest 2 % of y rank in x, by 0.07 to 0.79 (T2/FLAIR), 0.12 to 0.73 (T1ce/T1),
#: 0.07 to 0.50 (T2/T1) and 0.06 to 0.58 (T2/T1ce); FLAIR against T1 or T1ce goes either way, so it is not a rule
SWAPPABLE_PAIRS = (
    ("t2", "flair", "CSF is the brightest on T2 and dark on FLAIR"),
    ("t1ce", "t1", "contrast-enhancing vessels and tumour are the brightest on T1ce and not bright on T1"),
    ("t2", "t1", "CSF is the brightest on T2 and dark on T1"),
    ("t2", "t1ce", "CSF is the brightest on T2 and dark on T1ce"),
)
BRIGHTEST_FRACTION = 0.02
_SAMPLES = 400_000  # voxels of the brain the ranks are taken on: enough for two decimals, a few ms


def _brightest_rank(x: np.ndarray, y: np.ndarray) -> float:
    """The mean rank (0-1) in ``y`` of the voxels brightest in ``x``; both are the brain's voxels in one order."""
    top = x >= np.quantile(x, 1 - BRIGHTEST_FRACTION)
    return float(np.searchsorted(np.sort(y), y[top]).mean() / y.size)


def swap_score(image: np.ndarray, x: str, y: str) -> float | None:
    """How far sequences ``x`` and ``y`` of ``image`` (4, Z, Y, X) look swapped: above 0 when the brightest voxels of x
    are brighter in y than y's are in x, which the physics of the pair says is the wrong way round; None when one is absent."""
    a, b = image[MODALITIES.index(x)], image[MODALITIES.index(y)]
    brain = (a != 0) & (b != 0)
    count = int(np.count_nonzero(brain))
    if count < 1000:
        return None
    step = max(count // _SAMPLES, 1)
    a, b = a[brain][::step].astype(np.float32), b[brain][::step].astype(np.float32)
    return _brightest_rank(a, b) - _brightest_rank(b, a)


def likely_order(image: np.ndarray) -> tuple[dict[str, str], list[tuple[str, str, str, float]]]:
    """({sequence: the sequence its file looks like}, the rules of :data:`SWAPPABLE_PAIRS` the files break as given, with
    their scores); the order is empty when no rule is broken.

    The order is the one that breaks no rule and moves the fewest files, preferring a swap of a pair whose own rule is
    broken: on the 24 real cases here, each of T2/FLAIR, T1/T1ce, T1/T2 and T1ce/T2 swapped is named right on all 24,
    and the cases as they are break no rule. A FLAIR swapped with T1 or T1ce breaks one on 9 and 7 of the 24 only.
    """
    present = [m for i, m in enumerate(MODALITIES) if image[i].any()]  # a missing sequence is zeros
    scores = {}
    for i, x in enumerate(present):
        for y in present[i + 1:]:
            score = swap_score(image, x, y)
            if score is not None:  # None: too few brain voxels in both to say
                scores[x, y], scores[y, x] = score, -score

    def broken(looks_like: dict[str, str]) -> list[tuple[str, str, str, float]]:
        rules = [(x, y, why, scores.get((looks_like.get(x), looks_like.get(y)))) for x, y, why in SWAPPABLE_PAIRS]
        return [rule for rule in rules if rule[3] is not None and rule[3] > 0]

    as_given = broken({m: m for m in present})
    if not as_given:
        return {}, []
    pairs_broken = [{x, y} for x, y, _, _ in as_given]
    orders = []
    for permuted in itertools.permutations(present):
        looks_like = dict(zip(present, permuted))
        if not broken(looks_like):
            moved = {m for m in present if looks_like[m] != m}
            orders.append((len(moved), moved not in pairs_broken, [looks_like[m] for m in present], looks_like))
    return (min(orders, key=lambda o: o[:3])[3] if orders else {}), as_given


def swapped_pair_warnings(image: np.ndarray) -> list[str]:
    """A sentence naming the sequences that look the wrong way round, and why: a swap leaves no error, only a wrong
    result (two held-out cases with T2 and FLAIR swapped: WT Dice 0.85 -> 0.48; T1 and T1ce: ET 0.80 -> 0.03; T1 and
    T2: WT 0.85 -> 0.67; T1ce and T2: ET 0.80 -> 0.26)."""
    looks_like, broken = likely_order(image)
    if not broken:
        return []
    moved = {m for m in MODALITIES if looks_like.get(m, m) != m}
    # one pair: named, with its own rule's evidence when it has one; more (a double swap read as a three-way one, say):
    # no order is sure enough to name, the most broken rule is the evidence
    x, y, why, score = next((r for r in broken if {r[0], r[1]} == moved), max(broken, key=lambda r: r[3]))
    if len(moved) == 2:
        a, b = (x, y) if {x, y} == moved else sorted(moved, key=MODALITIES.index)
        what = f"{MODALITY_LABELS[a]} and {MODALITY_LABELS[b]} look swapped"
    else:
        what = "the sequences look mixed up"
    return [f"{what} ({why}; here it is the other way round, by {score:.2f}): check which file is which sequence (file names, "
            "Plugins > napari-sevnet > Assign sequences); the result is wrong if they are"]


def sequence_set_warnings(sequences, figures: dict | None, scored: str = "this model") -> list[str]:
    """What a result from only ``sequences`` is worth, from a model card's ``held_out_figures_by_sequences`` (``figures``).

    A model trained with sequences left out segments any subset, but some subsets are far off (T1ce alone: held-out WT
    0.29 for the default), and the figures are measured for a few sets only. Enhancement is seen on T1ce alone, so without
    it the enhancing tumour and the core it defines have no direct evidence, whatever the figures say.

    ``scored``: what the figures were measured on, for the sentence (a model retrained on every case carries the
    figures of its recipe trained without the held-out ones).
    """
    present = tuple(m for m in MODALITIES if m in sequences)
    if present == MODALITIES:
        return []
    warnings = []
    if "t1ce" not in present:
        warnings.append("without T1ce the enhancement that defines the enhancing tumour (ET) and the core (TC) is not seen: those layers are the model's inference from the other sequences")
    means = (figures or {}).get("mean_dice") or {}
    name = next((n for n, s in SEQUENCE_SETS.items() if set(s) == set(present)), None)
    labels = ", ".join(MODALITY_LABELS[m] for m in present)

    def dice(set_name):
        return " / ".join(f"{r} {means[set_name][r]:.2f}" for r in ("WT", "TC", "ET") if r in means[set_name])

    complete = f" (all four: {dice('all four')})" if "all four" in means else ""
    if name in means:
        warnings.append(f"with {labels} only, the mean Dice of {scored} on {len(figures.get('cases') or [])} held-out cases was {dice(name)}{complete}")
    elif means:
        warnings.append(f"{scored} was never scored with {labels} only: expect it to be further off than with all four{complete}")
    else:
        warnings.append(f"the model card has no held-out figures for missing sequences: how far off {scored} is with {labels} only is unknown")
    return warnings
