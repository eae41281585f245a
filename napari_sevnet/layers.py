"""Cases <-> napari layers: the npe2 reader, writer and sample data (no Qt here).

Image layers are named by modality (T1, T1ce, T2, FLAIR), carry the voxel
spacing as ``scale`` and the source grid in ``metadata['sevnet']`` so masks
can be written back onto the scan. Regions are three Labels layers, each
holding 0/1, in documented colours:

=====  ===================  =========
layer  region               colour
=====  ===================  =========
WT     whole tumour         green  #2ecc40
TC     tumour core          red    #ff4136
ET     enhancing tumour     yellow #ffdc00
=====  ===================  =========
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np

from napari_sevnet.errors import InputError
from napari_sevnet.io import MODALITIES, MODALITY_LABELS, Case, find_case_files, load_case, write_mask
from napari_sevnet.regions import REGIONS, convention_name

REGION_COLOURS = {"WT": "#2ecc40", "TC": "#ff4136", "ET": "#ffdc00"}
META_KEY = "sevnet"
SAMPLE_DATA_DIR = Path(__file__).resolve().parent.parent / "sample_data"


def contrast_limits(volume: np.ndarray) -> tuple[float, float]:
    """0.5-99.5 percentiles over the brain, so one bright voxel does not wash the scan out."""
    brain = volume[volume != 0]
    if brain.size == 0:
        return (0.0, 1.0)
    lo, hi = np.percentile(brain[:: max(brain.size // 200_000, 1)], [0.5, 99.5])
    return (float(lo), float(hi if hi > lo else lo + 1))


def region_layer_kwargs(region: str, scale, meta: dict) -> dict:
    from napari.utils.colormaps import DirectLabelColormap

    colormap = DirectLabelColormap(color_dict={None: "transparent", 0: "transparent", 1: REGION_COLOURS[region]})
    return {"name": region, "scale": scale, "colormap": colormap, "opacity": 0.55, "metadata": {META_KEY: {**meta, "region": region}}}


def region_labels(regions: np.ndarray, scale, translate, meta: dict) -> list:
    """WT/TC/ET Labels layers of one result, ready to insert (they may be built off the GUI thread)."""
    from napari.layers import Labels

    return [
        Labels(regions[i].astype(np.uint8), translate=translate, **region_layer_kwargs(region, scale, meta))
        for i, region in enumerate(REGIONS)
    ]


def uncertainty_layer(entropy: np.ndarray, scale, translate, meta: dict):
    """An image layer of the WT entropy (bits) over the scan: dark where sure, bright where unsure."""
    from napari.layers import Image

    return Image(
        entropy, name="WT uncertainty", scale=scale, translate=translate, colormap="inferno", blending="additive",
        opacity=0.7, contrast_limits=(0.0, 1.0), metadata={META_KEY: {**meta, "uncertainty": "entropy_bits"}},
    )


def case_layers(case: Case, visible: str = "flair") -> list[tuple]:
    """LayerData tuples: four images (and WT/TC/ET labels when the case has a segmentation)."""
    scale = tuple(case.spacing)
    meta = {"group": uuid.uuid4().hex, "case_id": case.case_id, "grid": case.grid, "paths": {k: str(v) for k, v in case.paths.items()}}
    layers = []
    for i, m in enumerate(MODALITIES):
        kwargs = {
            "name": MODALITY_LABELS[m],
            "scale": scale,
            "colormap": "gray",
            "contrast_limits": contrast_limits(case.image[i]),
            "visible": m == visible,
            "metadata": {META_KEY: {**meta, "modality": m}},
        }
        layers.append((case.image[i], kwargs, "image"))
    if case.regions is not None:
        for i, r in enumerate(REGIONS):
            layers.append((case.regions[i].astype(np.uint8), region_layer_kwargs(r, scale, meta), "labels"))
    return layers


def napari_get_reader(path):
    """npe2 reader: claim a BraTS case folder or a file of one; else let other readers try."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    try:
        find_case_files(path)
    except InputError:
        return None
    return read_case_layers


def read_case_layers(path) -> list[tuple]:
    """Read the case at ``path`` completely before returning, so a bad file adds no layer at all."""
    path = path[0] if isinstance(path, list) else path
    return case_layers(load_case(path))


def write_regions(path: str, layer_data: list[tuple]) -> list[str]:
    """npe2 writer: WT/TC/ET Labels layers -> one BraTS 2021 label NIfTI on the source grid.

    The file name may end in ``.2023.nii.gz`` to write the BraTS 2023 labels.
    """
    by_region = {}
    grid = None
    for data, meta, _ in layer_data:
        info = meta.get("metadata", {}).get(META_KEY, {})
        region = info.get("region") or (meta.get("name") if meta.get("name") in REGIONS else None)
        if region:
            by_region[region] = np.asarray(data) > 0
            grid = grid or info.get("grid")
    missing = [r for r in REGIONS if r not in by_region]
    if missing:
        raise InputError(path, f"select the WT, TC and ET layers to save (missing {missing})")
    if grid is None:
        raise InputError(path, "these layers do not come from a case opened with napari-sevnet, so the source grid is unknown")
    convention = convention_name("2023") if str(path).endswith((".2023.nii.gz", ".2023.nii")) else "brats2021"
    regions = np.stack([by_region[r] for r in REGIONS])
    return [str(write_mask(regions, grid, path, convention))]


def region_group(layers, layer) -> dict:
    """The WT/TC/ET layers made together with ``layer`` (one Segment run or one opened case)."""
    group = layer.metadata.get(META_KEY, {}).get("group")
    found = {}
    for other in layers:
        info = other.metadata.get(META_KEY, {})
        if group is not None and info.get("group") == group and info.get("region") in REGIONS:
            found[info["region"]] = other
    missing = [r for r in REGIONS if r not in found]
    if missing:
        raise InputError(None, f"the {', '.join(missing)} layer(s) of {layer.name!r} were deleted; export needs WT, TC and ET")
    return found


def case_from_layers(layers, region_layer) -> Case:
    """The case behind a result layer: re-read from its files, or its image layers (any iterable) when it has none."""
    info = region_layer.metadata.get(META_KEY, {})
    if info.get("grid") is None:
        raise InputError(None, f"layer {region_layer.name!r} does not come from a case opened with napari-sevnet, so its scan is unknown")
    paths = {k: Path(v) for k, v in (info.get("paths") or {}).items()}
    if all(m in paths for m in MODALITIES):
        files = {m: paths[m] for m in MODALITIES}
        case = load_case(files["t1"]) if len(set(files.values())) == 1 else load_case(mapping=files)
        case.case_id = info.get("case_id") or case.case_id
    else:  # an in-memory case (the phantom sample): its image layers are the scan
        images = {}
        for layer in layers:
            meta = layer.metadata.get(META_KEY, {})
            if meta.get("modality") in MODALITIES and meta.get("group") == info.get("group"):
                images[meta["modality"]] = np.asarray(layer.data, dtype=np.float32)
        by_name = {layer.name: layer for layer in layers}
        for m, name in (info.get("source_layers") or {}).items():
            if name in by_name and m not in images:
                images[m] = np.asarray(by_name[name].data, dtype=np.float32)
        missing = [MODALITY_LABELS[m] for m in MODALITIES if m not in images]
        if missing:
            raise InputError(None, f"the scan behind {region_layer.name!r} has no files and its {', '.join(missing)} layer(s) are gone")
        case = Case(case_id=info.get("case_id") or "case", image=np.stack([images[m] for m in MODALITIES]), grid=info["grid"], paths={}, layout="in-memory")
    if case.shape != tuple(region_layer.data.shape):
        raise InputError(case.paths.get("t1"), f"the scan has shape {case.shape}, the layer {region_layer.name!r} {region_layer.data.shape}; was the file replaced?")
    return case


def phantom_sample() -> list[tuple]:
    """A small synthetic case that opens instantly (no files involved)."""
    from napari_sevnet.phantom import phantom_case

    return case_layers(phantom_case(seed=7, shape=(96, 112, 96), case_id="phantom_sample"))


def demo_case_folder() -> Path:
    env = os.environ.get("SEVNET_SAMPLE_CASE")
    if env:
        return Path(env)
    cases = sorted(p for p in SAMPLE_DATA_DIR.iterdir() if p.is_dir()) if SAMPLE_DATA_DIR.is_dir() else []
    if not cases:
        raise InputError(SAMPLE_DATA_DIR, "no demo case found (run `make sample-data` in a source checkout)")
    return cases[0]


def demo_case_sample() -> list[tuple]:
    """The demo case written by ``make sample-data`` (BraTS 2021 layout, on disk)."""
    return case_layers(load_case(demo_case_folder()))
