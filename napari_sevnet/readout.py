"""What a neuro-oncologist reads off a segmentation: lesions, RANO measurements, the change between two visits.

A lesion is a 26-connected component of the tumour core (TC = necrosis +
enhancing tumour); the edema of the whole tumour belongs to the lesion it lies
nearest to. Per lesion: the volumes of necrosis (NCR), edema (ED) and
enhancing tumour (ET) in mL, the centroid in scanner coordinates (mm, RAS as
the file's affine gives them), and on the axial slice where its enhancing
part is largest the RANO bidimensional measurement: the longest diameter of
the enhancing part and the longest diameter perpendicular to it. A lesion is
measurable when both are at least 10 mm (twice the slice thickness where
slices are thicker than 5 mm) and its enhancing part is seen on at least two
axial slices (RANO 2010, Wen et al.); the sum of the products over the target
lesions, the five largest measurable ones, is what response assessment compares.

Two visits (:func:`compare_visits`): the change of each volume and of the
sum of products, absolute and in percent, and the RANO category from the
product (>= 25 % increase: progression; >= 50 % decrease: partial response;
no enhancing tumour left: complete response; else stable), and, when the
visits lie on one grid, a new measurable lesion apart from the baseline's
tumour core is progression too (:func:`new_lesions`). The imaging
criteria only: RANO also weighs steroids, clinical state and non-enhancing
growth, which a segmentation cannot see.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage

from napari_sevnet.errors import InputError
from napari_sevnet.io import MODALITIES, MODALITY_LABELS, SourceGrid

MEASURABLE_MM = 10.0
MEASURABLE_SLICES = 2  # RANO: seen on two or more axial slices
TARGET_LESIONS = 5  # RANO 2010: up to five target lesions are measured and summed
NEW_LESION_MM = 5.0  # a follow-up lesion farther than this from the baseline's tumour core is a new one, not the old one grown
PROGRESSION, PARTIAL_RESPONSE = 0.25, -0.50
STRUCTURE = np.ones((3, 3, 3), bool)


def format_ml(value: float) -> str:
    """A volume as read in a table: one decimal, but a speck shows as '<0.1', not as a '0.0' that reads as nothing."""
    return "0" if value == 0 else "<0.1" if value < 0.05 else f"{value:.1f}"


@dataclass
class Diameters:
    """The RANO measurement on one axial slice: two segments (endpoints in voxel coordinates z, y, x) and their lengths in mm."""

    slice: int
    longest_mm: float
    perpendicular_mm: float
    longest: tuple[tuple[float, float, float], tuple[float, float, float]]
    perpendicular: tuple[tuple[float, float, float], tuple[float, float, float]]
    slices: int = MEASURABLE_SLICES  # the axial slices the enhancing part is seen on
    minimum_mm: float = MEASURABLE_MM  # each diameter's least for a measurable lesion (10 mm; twice the slice thickness over 5 mm)

    @property
    def product_mm2(self) -> float:
        return self.longest_mm * self.perpendicular_mm

    @property
    def measurable(self) -> bool:
        return self.longest_mm >= self.minimum_mm and self.perpendicular_mm >= self.minimum_mm and self.slices >= MEASURABLE_SLICES


@dataclass
class Lesion:
    index: int
    ncr_ml: float
    ed_ml: float
    et_ml: float
    centroid_ras_mm: tuple[float, float, float]
    voxel: tuple[int, int, int]  # the centroid as a voxel of the canonical grid, for the viewer
    diameters: Diameters | None  # None: no enhancing part
    target: bool = False  # one of the (at most five) largest measurable lesions, whose products are summed
    component: int = 0  # its label in ``ndimage.label(TC, STRUCTURE)``: how :func:`new_lesions` finds its voxels again

    @property
    def measurable(self) -> bool:
        return self.diameters is not None and self.diameters.measurable

    @property
    def product_mm2(self) -> float:
        return self.diameters.product_mm2 if self.measurable else 0.0

    @property
    def measurable_words(self) -> str:
        """The table's 'measurable' cell: a measurable lesion past the five largest is not summed."""
        return ("yes" if self.target else "yes (not summed)") if self.measurable else "no"

    def to_json(self) -> dict:
        out = asdict(self)
        out.update(measurable=self.measurable, product_mm2=self.product_mm2)
        if self.diameters is not None:
            out["diameters"]["product_mm2"] = self.diameters.product_mm2
        return out


@dataclass
class Readout:
    lesions: list[Lesion] = field(default_factory=list)
    volumes_ml: dict = field(default_factory=dict)

    @property
    def sum_of_products_mm2(self) -> float:
        """Over the target lesions (the five largest measurable), as RANO sums them."""
        return float(sum(lesion.product_mm2 for lesion in self.lesions if lesion.target))

    @property
    def measurable(self) -> int:
        return sum(lesion.measurable for lesion in self.lesions)

    def to_json(self) -> dict:
        return {"lesions": [lesion.to_json() for lesion in self.lesions], "volumes_ml": self.volumes_ml,
                "sum_of_products_mm2": self.sum_of_products_mm2, "measurable_lesions": self.measurable,
                "target_lesions": sum(lesion.target for lesion in self.lesions)}


def canonical_affine(grid: SourceGrid) -> np.ndarray:
    """Voxel (z, y, x) of the canonical grid -> scanner RAS mm, as the file's affine places it."""
    from nibabel.orientations import inv_ornt_aff

    ras = grid.affine @ inv_ornt_aff(grid.orientation, grid.shape)  # voxel (i_R, j_A, k_S) -> world
    swap = np.eye(4)[[2, 1, 0, 3]]  # (z, y, x) -> (x, y, z)
    return ras @ swap


def measure(regions: np.ndarray, spacing, grid: SourceGrid | None = None) -> Readout:
    """The lesion table of nested regions (3, Z, Y, X) on a grid of ``spacing`` (mm, Z/Y/X)."""
    wt, tc, et = (np.asarray(regions[i], bool) for i in range(3))
    voxel_ml = float(np.prod(spacing)) / 1000.0
    labels, n = ndimage.label(tc, structure=STRUCTURE)
    readout = Readout(volumes_ml={"WT": wt.sum() * voxel_ml, "TC": tc.sum() * voxel_ml, "ET": et.sum() * voxel_ml})
    if n == 0:
        return readout
    tumour = ndimage.find_objects((wt | tc).astype(np.uint8))[0]  # every lesion and all edema lie in it: the distances need no more
    nearest = ndimage.distance_transform_edt(labels[tumour] == 0, sampling=spacing, return_distances=False, return_indices=True)
    owner = labels[tumour][tuple(nearest)]  # each voxel's nearest lesion: where its edema belongs
    edema = (wt & ~tc)[tumour]
    to_world = canonical_affine(grid) if grid is not None else None
    boxes = ndimage.find_objects(labels)
    ed_counts = np.bincount(owner[edema], minlength=n + 1)
    for k, box in enumerate(boxes, start=1):
        lesion = labels[box] == k
        lesion_et = lesion & et[box]
        centroid = np.array(ndimage.center_of_mass(lesion)) + [b.start for b in box]
        world = to_world @ np.r_[centroid, 1.0] if to_world is not None else np.r_[(centroid * np.asarray(spacing))[::-1], 1.0]
        diameters = None
        if lesion_et.any():
            areas = lesion_et.sum(axis=(1, 2))
            z = int(np.argmax(areas))
            diameters = rano_diameters(lesion_et[z], spacing[1:], z + box[0].start, (box[1].start, box[2].start))
            diameters.slices = int(np.count_nonzero(areas))
            diameters.minimum_mm = max(MEASURABLE_MM, 2.0 * float(spacing[0]) if spacing[0] > 5.0 else 0.0)
        readout.lesions.append(Lesion(
            index=k, ncr_ml=float((lesion & ~et[box]).sum()) * voxel_ml, ed_ml=float(ed_counts[k]) * voxel_ml, et_ml=float(lesion_et.sum()) * voxel_ml,
            centroid_ras_mm=tuple(round(float(v), 2) for v in world[:3]), voxel=tuple(int(round(v)) for v in centroid), diameters=diameters, component=k,
        ))
    readout.lesions.sort(key=lambda lesion: (-lesion.product_mm2, -(lesion.et_ml + lesion.ncr_ml)))
    for number, lesion in enumerate(readout.lesions, start=1):
        lesion.index = number
    for lesion in [lesion for lesion in readout.lesions if lesion.measurable][:TARGET_LESIONS]:
        lesion.target = True
    return readout


def enhancement_caveat(sequences) -> str | None:
    """RANO measures contrast enhancement, seen on T1ce only: a result made without T1ce has none to measure."""
    if sequences and "t1ce" not in sequences:
        return "made without T1ce: its enhancing lesions and their diameters are the model's inference, not measured enhancement"
    return None


def rano_diameters(section: np.ndarray, spacing_yx, z: int, offset=(0, 0)) -> Diameters:
    """Longest diameter of a 2D region and the longest chord perpendicular to it (mm; endpoints as voxel z, y, x).

    Lengths are measured between voxel centres. The perpendicular chord is the
    longest extent of the region along the perpendicular direction, over strips
    one voxel wide across the longest diameter.
    """
    sy, sx = (float(v) for v in spacing_yx)
    points = np.argwhere(section).astype(float)
    mm = points * [sy, sx]
    if len(points) == 1:
        end = (float(z), points[0][0] + offset[0], points[0][1] + offset[1])
        return Diameters(z, 0.0, 0.0, (end, end), (end, end))
    hull = _hull(mm)
    pairs = np.linalg.norm(hull[:, None] - hull[None], axis=-1)
    i, j = np.unravel_index(int(np.argmax(pairs)), pairs.shape)
    longest = float(pairs[i, j])
    u = (hull[j] - hull[i]) / longest
    v = np.array([-u[1], u[0]])
    t, s = mm @ u, mm @ v
    width = min(sy, sx)
    strips = np.floor((t - t.min()) / width).astype(int)
    best, best_strip = -1.0, 0
    for strip in np.unique(strips):
        inside = s[strips == strip]
        extent = float(inside.max() - inside.min())
        if extent > best:
            best, best_strip = extent, strip
    inside = strips == best_strip
    t_mid = float(t[inside].mean())
    s_lo, s_hi = float(s[inside].min()), float(s[inside].max())

    def to_voxel(p_mm):
        return (float(z), p_mm[0] / sy + offset[0], p_mm[1] / sx + offset[1])

    ends = (to_voxel(hull[i]), to_voxel(hull[j]))
    perpendicular = (to_voxel(t_mid * u + s_lo * v), to_voxel(t_mid * u + s_hi * v))
    return Diameters(z, longest, best, ends, perpendicular)


def _hull(points: np.ndarray) -> np.ndarray:
    from scipy.spatial import ConvexHull, QhullError

    try:
        return points[ConvexHull(points).vertices]
    except (QhullError, ValueError):  # collinear: every point is on the hull
        return points


#: a BraTS 2023+ case id names the patient and the timepoint: BraTS-GLI-00001-000 is patient 00001's first visit
_BRATS_VISIT = re.compile(r"BraTS-([A-Za-z]+)-(\d+)-(\d+)")


def visit_caveat(baseline_id: str | None, follow_up_id: str | None, baseline_visit: dict | None = None, follow_up_visit: dict | None = None) -> str | None:
    """Words when the visits cannot be baseline and follow-up: by the patient ids and study dates of cases prepared from
    DICOM (``*_visit``: :func:`napari_sevnet.prepare.visit_of`), else by the case ids (BraTS 2023+ ids name patient and timepoint)."""
    base, follow = baseline_visit or {}, follow_up_visit or {}
    if base.get("patient_id") and follow.get("patient_id") and base["patient_id"] != follow["patient_id"]:
        return (f"the baseline {baseline_id} and the follow-up {follow_up_id} are two different patients by their DICOM patient ids "
                f"({base['patient_id']}, {follow['patient_id']}): a change between two patients means nothing; choose this patient's earlier visit")
    if base.get("study_date") and follow.get("study_date"):
        if base["study_date"] == follow["study_date"]:
            return (f"the baseline {baseline_id} and the follow-up {follow_up_id} were scanned the same day ({base['study_date']}): "
                    "they are not two visits; choose this patient's earlier visit as the baseline")
        if base["study_date"] > follow["study_date"]:
            return (f"the baseline {baseline_id} was scanned on {base['study_date']}, after the follow-up {follow_up_id} ({follow['study_date']}): "
                    "the visits are the wrong way round, and the change and its category read backwards")
        return None
    ids = [_BRATS_VISIT.fullmatch(str(i or "")) for i in (baseline_id, follow_up_id)]
    if not all(ids):
        return None  # other ids say nothing about who or when: nothing to check
    (_, base_patient, base_time), (_, follow_patient, follow_time) = (m.groups() for m in ids)
    if base_patient != follow_patient:
        return (f"the baseline {baseline_id} and the follow-up {follow_up_id} are two different patients ({base_patient}, {follow_patient}) "
                "by their ids: a change between two patients means nothing; choose this patient's earlier visit")
    if int(base_time) >= int(follow_time):
        return (f"the baseline {baseline_id} is not an earlier timepoint than the follow-up {follow_up_id} by their ids: "
                "the visits may be the wrong way round, and the change and its category read backwards")
    return None


def with_study_date(visit: dict, date: str | None, where) -> dict:
    """``visit`` (:func:`napari_sevnet.prepare.visit_of`) with the study date a user gave (YYYY-MM-DD), which NIfTI
    visits do not carry; a date that is not one, or that contradicts the date its DICOM series gave, is an InputError
    naming ``where``."""
    import datetime as dt

    if not (date or "").strip():
        return visit
    try:
        date = dt.date.fromisoformat(date.strip()).isoformat()
    except ValueError:
        raise InputError(where, f"{date!r} is not a date as YYYY-MM-DD") from None
    if visit.get("study_date") and visit["study_date"] != date:
        raise InputError(where, f"was scanned on {visit['study_date']} by its DICOM series, not on {date}")
    return {**visit, "study_date": date}


def on_one_grid(regions_a: np.ndarray, grid_a: SourceGrid, regions_b: np.ndarray, grid_b: SourceGrid) -> bool:
    """Whether two visits' regions lie voxel for voxel on one grid (co-registered, as BraTS' longitudinal cases are)."""
    return regions_a.shape == regions_b.shape and np.allclose(grid_a.affine, grid_b.affine, atol=1e-3)


def new_lesions(baseline_regions: np.ndarray, follow_up_regions: np.ndarray, follow_up: Readout, spacing) -> list[int]:
    """The numbers of the follow-up's measurable lesions that lie apart from every part of the baseline's tumour core
    (more than :data:`NEW_LESION_MM` from it): new lesions, which RANO counts as progression whatever the sum does.
    Both visits' regions on one grid (the follow-up's, ``spacing``)."""
    base_core = np.asarray(baseline_regions[1], bool)
    labels, _ = ndimage.label(np.asarray(follow_up_regions[1], bool), structure=STRUCTURE)
    if not base_core.any():
        return [lesion.index for lesion in follow_up.lesions if lesion.measurable]
    distance = ndimage.distance_transform_edt(~base_core, sampling=spacing)
    return [lesion.index for lesion in follow_up.lesions if lesion.measurable and distance[labels == lesion.component].min() > NEW_LESION_MM]


def compare_visits(baseline: Readout, follow_up: Readout, *, baseline_id: str | None = None, follow_up_id: str | None = None,
                   new: list[int] | None = None, unassessed: str | None = None, baseline_visit: dict | None = None, follow_up_visit: dict | None = None) -> dict:
    """Change from ``baseline`` to ``follow_up``: volumes and sum of products (absolute, %) and the RANO imaging category.

    ``new``: the follow-up's new measurable lesions (:func:`new_lesions`; None: not assessed, for the reason
    ``unassessed``, by default the visits not being on one grid), each progression. With the case ids and the visits
    (:func:`visit_caveat`), a ``caveat`` says when they show two patients or visits the wrong way round; ``study_dates``
    and ``days`` between them where both are known.
    """
    def change(a: float, b: float) -> dict:
        return {"baseline": a, "follow_up": b, "absolute": b - a, "percent": (100.0 * (b - a) / a) if a else None}

    before, after = baseline.sum_of_products_mm2, follow_up.sum_of_products_mm2
    dates = {"baseline": (baseline_visit or {}).get("study_date"), "follow_up": (follow_up_visit or {}).get("study_date")}
    if follow_up.volumes_ml.get("ET", 0.0) == 0.0 and baseline.volumes_ml.get("ET", 0.0) > 0.0:
        category = "complete response"
    elif before and (after - before) / before >= PROGRESSION:
        category = "progression"
    elif not before and after:
        category = "progression"  # new measurable enhancing disease
    elif new:
        category = "progression"  # a new measurable lesion, whatever the sum did
    elif before and (after - before) / before <= PARTIAL_RESPONSE:
        category = "partial response"
    else:
        category = "stable disease"
    return {
        "volumes_ml": {r: change(baseline.volumes_ml[r], follow_up.volumes_ml[r]) for r in baseline.volumes_ml},
        "sum_of_products_mm2": change(before, after),
        "category": category,
        "new_lesions": new,
        "criteria": "RANO imaging thresholds on the sum of bidimensional products of the target lesions, the five largest measurable, at each visit (>= +25 %: progression; <= -50 %: partial response; no enhancement left: complete response), "
                    + (f"and a new measurable lesion (more than {NEW_LESION_MM:.0f} mm from the baseline's tumour core) is progression; " if new is not None
                       else f"new lesions not assessed ({unassessed or 'the visits are not on one grid'}); ")
                    + "steroids, clinical state and non-enhancing growth are not assessed",
        "caveat": visit_caveat(baseline_id, follow_up_id, baseline_visit, follow_up_visit),
        "study_dates": dates,
        "days": _days_between(dates["baseline"], dates["follow_up"]),
    }


def _days_between(earlier: str | None, later: str | None) -> int | None:
    import datetime as dt

    return (dt.date.fromisoformat(later) - dt.date.fromisoformat(earlier)).days if earlier and later else None


#: the sequence two visits are registered on: the first that both have
ALIGNMENT_SEQUENCES = ("flair", "t2", "t1ce", "t1")


def alignment_sequence(fixed_sequences, moving_sequences) -> str | None:
    """The sequence to register two visits on (FLAIR first: the whole tumour and the head's outline), None if they share none."""
    return next((m for m in ALIGNMENT_SEQUENCES if m in fixed_sequences and m in moving_sequences), None)


def baseline_on_follow_up(base_case, base_regions: np.ndarray, follow_case) -> tuple[np.ndarray | None, str]:
    """The baseline's regions registered onto the follow-up's grid (visits on two grids), and what was done, in words:
    ``(regions, "registered rigidly on FLAIR")``, or ``(None, why not)`` when the visits share no sequence or the
    registration fails. Both cases are :class:`~napari_sevnet.io.Case`."""
    sequence = alignment_sequence(follow_case.sequences, base_case.sequences)
    if sequence is None:
        return None, "the two visits share no sequence to register them on"
    channel = MODALITIES.index(sequence)
    try:
        aligned = align_regions(follow_case.image[channel], follow_case.spacing, base_case.image[channel], base_case.spacing, base_regions)
    except RuntimeError as exc:  # SimpleITK's own words
        return None, f"registering the visits' {MODALITY_LABELS[sequence]} failed ({str(exc).strip().splitlines()[-1]})"
    return aligned, f"registered rigidly on {MODALITY_LABELS[sequence]}"


def align_regions(fixed_image: np.ndarray, fixed_spacing, moving_image: np.ndarray, moving_spacing, moving_regions: np.ndarray) -> np.ndarray:
    """One visit's regions moved onto the other visit's grid by a rigid registration of one sequence (SimpleITK, offline).

    Used when the two visits are not on one grid: volumes do not need it, the
    side-by-side view and any voxel-wise comparison do. Both images must be of
    the same sequence (:func:`alignment_sequence`).
    """
    import SimpleITK as sitk

    def image(array, spacing):
        img = sitk.GetImageFromArray(np.asarray(array, np.float32))
        img.SetSpacing(tuple(float(s) for s in spacing[::-1]))
        return img

    fixed, moving = image(fixed_image, fixed_spacing), image(moving_image, moving_spacing)
    transform = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS)
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.1, seed=0)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(2.0, 1e-3, 200)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([4, 2, 1])
    method.SetSmoothingSigmasPerLevel([2, 1, 0])
    method.SetInitialTransform(transform, inPlace=False)
    final = method.Execute(fixed, moving)
    moved = [sitk.GetArrayFromImage(sitk.Resample(image(r.astype(np.float32), moving_spacing), fixed, final, sitk.sitkNearestNeighbor, 0.0)) > 0.5 for r in moving_regions]
    return np.stack(moved)
