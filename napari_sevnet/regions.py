"""BraTS label conventions <-> the nested regions WT, TC, ET used everywhere inside.

Inside the project a segmentation is a boolean array of shape (3, Z, Y, X) in
the order of :data:`REGIONS`: whole tumour (NCR+ED+ET), tumour core (NCR+ET)
and enhancing tumour (ET). Label values exist only at the edges:

============  =====  =====  =====
convention     NCR    ED     ET
============  =====  =====  =====
brats2021       1      2      4
brats2023       1      2      3
msd             2      1      3     (Decathlon Task01: 1 edema, 2 non-enhancing, 3 enhancing)
============  =====  =====  =====
"""

from __future__ import annotations

import numpy as np

REGIONS = ("WT", "TC", "ET")

#: label value of each tumour sub-region per convention
CONVENTIONS: dict[str, dict[str, int]] = {
    "brats2021": {"NCR": 1, "ED": 2, "ET": 4},
    "brats2023": {"NCR": 1, "ED": 2, "ET": 3},
    "msd": {"NCR": 2, "ED": 1, "ET": 3},
}
CONVENTION_ALIASES = {"2021": "brats2021", "2023": "brats2023", "decathlon": "msd"}


#: what a mask read as necrosis alone (label 1 only, under a BraTS name) most likely is
NECROSIS_ALONE = ("holds label 1 alone, read by its BraTS name as necrosis with no oedema and no enhancing tumour around it; "
                  "a whole-tumour mask painted with one label (the default of ITK-SNAP and most editors) is far likelier")


def necrosis_alone(regions: np.ndarray) -> bool:
    """Whether (3, Z, Y, X) WT/TC/ET regions are a tumour of necrosis alone: what a one-label mask becomes in BraTS labels."""
    return bool(regions[0].any() and not regions[2].any() and np.array_equal(regions[0], regions[1]))


def convention_name(name: str) -> str:
    """Canonical convention name for ``name`` ('2021', 'brats2023', 'msd', ...)."""
    key = CONVENTION_ALIASES.get(str(name).lower(), str(name).lower())
    if key not in CONVENTIONS:
        raise ValueError(f"unknown label convention {name!r}; use one of {sorted(CONVENTIONS)}")
    return key


def _listed(values: list) -> str:
    """A few of the unknown values, not hundreds: a scan chosen as the mask has one per intensity."""
    if len(values) <= 8:
        return str(values)
    return f"[{', '.join(map(str, values[:5]))}, ..., {values[-1]}] ({len(values)} values: a scan rather than a label mask?)"


def guess_convention(labels: np.ndarray) -> str:
    """The convention of a label map whose file does not say it, when the values leave no doubt.

    4 present -> BraTS 2021. Only 0/1/2 read the same in BraTS 2021 and 2023 ->
    2021. A 3 is BraTS 2023 or the Decathlon's 1/2/3, which swaps necrosis and
    edema: that is ambiguous, and so is a value outside both, a ``ValueError``
    that asks for the convention.
    """
    values = set(np.unique(labels).tolist())
    if not values <= {0, 1, 2, 3, 4}:
        raise ValueError(f"unknown label values {_listed(sorted(values - {0, 1, 2, 3, 4}))}; expected BraTS labels 0/1/2/4 or 0/1/2/3")
    if 3 in values and 4 in values:
        raise ValueError("label map holds both 3 and 4: neither BraTS 2021 (1/2/4) nor BraTS 2023 (1/2/3)")
    if 3 in values:
        raise ValueError("label values 0-3 are BraTS 2023 labels or the Decathlon's (which swap necrosis and edema), and the file does not say which")
    if values == {0, 1} or values == {1}:
        raise ValueError("label map holds label 1 alone: in BraTS labels that is necrosis with no oedema and no enhancing tumour around it, "
                         "but a mask painted with one label (the default of ITK-SNAP and most editors) is far likelier; label its regions "
                         "(necrosis 1, oedema 2, enhancing 4), or, if it is necrosis alone, say it is in BraTS 2021 labels")
    return "brats2021"


def labels_to_regions(labels: np.ndarray, convention: str) -> np.ndarray:
    """Integer label map -> nested boolean regions (3, *labels.shape) in WT, TC, ET order.

    Raises ``ValueError`` naming any value the convention does not define.
    """
    table = CONVENTIONS[convention_name(convention)]
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        rounded = np.rint(labels)
        if not np.array_equal(rounded, labels):
            raise ValueError("label map holds non-integer values")
        labels = rounded.astype(np.int16)
    allowed = {0, *table.values()}
    unknown = sorted(set(np.unique(labels).tolist()) - allowed)
    if unknown:
        raise ValueError(f"unknown label values {_listed(unknown)} for convention {convention_name(convention)} (allowed {sorted(allowed)})")
    ncr, ed, et = (labels == table[k] for k in ("NCR", "ED", "ET"))
    return np.stack([ncr | ed | et, ncr | et, et])


def make_nested(regions: np.ndarray) -> np.ndarray:
    """Make edited masks nested again: ET inside TC inside WT, by adding, never removing.

    The rule: a voxel marked as an inner region also belongs to every region
    around it (TC := TC | ET, WT := WT | TC). Painting ET therefore grows TC and
    WT with it; to remove tumour, erase it from every layer that holds it.
    """
    wt, tc, et = (np.asarray(regions[i], dtype=bool) for i in range(3))
    tc = tc | et
    return np.stack([wt | tc, tc, et])


def regions_to_labels(regions: np.ndarray, convention: str = "brats2021", dtype=np.uint8) -> np.ndarray:
    """Nested regions (3, ...) -> label map in ``convention`` (regions are made nested first)."""
    table = CONVENTIONS[convention_name(convention)]
    wt, tc, et = make_nested(regions)
    labels = np.zeros(wt.shape, dtype=dtype)
    labels[wt] = table["ED"]
    labels[tc] = table["NCR"]
    labels[et] = table["ET"]
    return labels


def volumes_ml(regions: np.ndarray, spacing: tuple[float, float, float]) -> dict[str, float]:
    """Volume of each region in millilitres (1 mL = 1000 mm^3) from the voxel spacing in mm."""
    voxel_ml = float(np.prod(spacing)) / 1000.0
    return {name: float(np.count_nonzero(regions[i])) * voxel_ml for i, name in enumerate(REGIONS)}


def drop_small_components(regions: np.ndarray, min_ml: float, spacing: tuple[float, float, float], region: int = 0) -> int:
    """Remove every piece (26-connected) of ``regions[region]`` under ``min_ml`` from it and the regions inside it, in place.

    A whole-tumour piece goes from all three regions, a core piece from core and
    enhancing (it stays oedema), an enhancing piece from enhancing only (it stays
    core), so the regions stay nested. Returns how many pieces went. Specks are
    the model's commonest false alarm; a piece this small is below RANO's
    measurable size, clutters the lesion table and counts as a false lesion.
    """
    from scipy import ndimage

    labels, count = ndimage.label(regions[region], structure=np.ones((3, 3, 3), bool))
    if count == 0:
        return 0
    sizes = np.bincount(labels.ravel())[1:]
    small = np.flatnonzero(sizes * float(np.prod(spacing)) / 1000.0 < min_ml) + 1
    if small.size:
        regions[region:] &= ~np.isin(labels, small)[None]
    return int(small.size)


def fill_core_holes(regions: np.ndarray) -> int:
    """Fill the holes of the tumour core slice by slice (axial, the first axis), in place; the whole tumour grows with it. Returns the voxels added.

    The core is the enhancing rim and the necrosis it encloses. The model
    calls the rim surely and the dark necrotic centre less so: above the core
    threshold the centre is often left out, as a hole in the core (up to
    17,000 voxels on BraTS2021_00006). In 3D such a cavity usually opens to
    the edge somewhere, so it is filled where an axial slice encloses it.
    Enhancing tumour is a rim by nature and is left as it is: the filled
    voxels become necrosis.
    """
    from scipy import ndimage

    core = regions[1]
    boxes = ndimage.find_objects(core.view(np.uint8))  # the core's bounding box; none when it is empty
    if not boxes:
        return 0
    box = boxes[0]
    before = core[box]
    filled = np.stack([ndimage.binary_fill_holes(section) for section in before])
    added = int(np.count_nonzero(filled & ~before))
    if added:
        core[box] = filled
        regions[0][box] |= filled
    return added


def postprocess(regions: np.ndarray, spacing: tuple[float, float, float], min_component_ml: dict[str, float], min_et_voxels: int | None,
                fill_holes: bool = False) -> dict:
    """The model's clean-up of nested regions, in place; what it did, for the result's record.

    Small pieces go region by region from the outside in (``min_component_ml``
    per region, 0 keeps every piece); then a whole enhancing tumour under
    ``min_et_voxels`` is relabelled necrosis (the BraTS 2021 winners' rule: a
    tiny ET is more likely noise than enhancement); then, with ``fill_holes``,
    what the core encloses on an axial slice becomes core (:func:`fill_core_holes`).
    """
    record: dict = {}
    removed = {name: drop_small_components(regions, min_component_ml[name], spacing, i) for i, name in enumerate(REGIONS) if min_component_ml.get(name, 0) > 0}
    if removed:
        record.update({"min_component_ml": {name: float(min_component_ml[name]) for name in removed}, "components_removed": removed})
    if min_et_voxels:
        small = 0 < int(regions[2].sum()) < min_et_voxels
        record.update({"min_et_voxels": int(min_et_voxels), "et_relabelled_voxels": int(regions[2].sum()) if small else 0})
        if small:
            regions[2] = False
    if fill_holes:
        record["core_holes_filled_voxels"] = fill_core_holes(regions)
    return record
