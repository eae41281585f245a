"""Cases <-> napari layers: the npe2 reader, writer and sample data (no Qt here).

Image layers are named by case and modality ("Brats18_X FLAIR"), carry the voxel
spacing as ``scale`` and a :class:`LayerInfo` in ``metadata['sevnet']`` (the
case, its source grid so masks can be written back onto the scan, and for
results the model run). Regions are three Labels layers named by case and run
("Brats18_X WT (run 2)"; "(file)" for a mask read with the case), each
holding 0/1, in documented colours; the selected region is filled and the
others of its result outlined (:mod:`napari_sevnet.display`), and edits keep
them nested (:mod:`napari_sevnet.editing`):

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
import time
import uuid
import weakref
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from napari_sevnet.errors import InputError, NotSaved
from napari_sevnet.io import MODALITIES, MODALITY_LABELS, Case, SourceGrid, holds_nifti, load_case, named_case_id, nifti_stem, read_one_label_mask, role_of, without_unreadable_mask, write_mask
from napari_sevnet.regions import NECROSIS_ALONE, REGIONS, convention_name, necrosis_alone

REGION_COLOURS = {"WT": "#2ecc40", "TC": "#ff4136", "ET": "#ffdc00"}
ONE_LABEL_COLOUR = "dodgerblue"  # a mask painted with one label, shown beside a case: apart from the regions' colours
META_KEY = "sevnet"
SAMPLE_DATA_DIR = Path(__file__).resolve().parent.parent / "sample_data"


@dataclass
class LayerInfo:
    """What napari-sevnet knows about one of its layers, kept in ``layer.metadata['sevnet']``.

    Layers of one opened case, or of one Segment run, share a ``group``; an
    image layer names its ``modality``, a result layer its ``region``.
    """

    group: str = field(default_factory=lambda: uuid.uuid4().hex)
    case_id: str | None = None
    grid: SourceGrid | None = None  # the source file's grid: where a mask is written back
    paths: dict[str, str] | None = None  # role -> file the case was read from
    modality: str | None = None  # image layers: t1, t1ce, t2, flair
    region: str | None = None  # result layers: WT, TC, ET
    uncertainty: str | None = None  # uncertainty layers: what the map holds ("entropy_bits")
    checkpoint: str | None = None  # results: the model that made them
    device: str | None = None
    source_layers: dict[str, str] | None = None  # results: modality -> name of the image layer segmented
    attention: dict | None = None  # results: stage -> mean SE excitation
    prediction: np.ndarray | None = None  # results: the model's own (3, Z, Y, X) regions, to measure edits against
    probabilities: np.ndarray | None = None  # results: the model's (3, Z, Y, X) probabilities (float16), for the click tools
    thresholds: dict[str, float] | None = None  # results: region -> the probability its edge was cut at (the Correct dock moves it)
    run: int | None = None  # results: the how-manieth run on this case in the viewer (None: a mask from the case's files)
    sequences: tuple[str, ...] | None = None  # results: the sequences the model was given
    warnings: tuple[str, ...] | None = None  # results: what the run said may make them wrong (an input unlike the training data); scans: what reading them changed

    def to_metadata(self) -> dict:
        return {META_KEY: self}

    @property
    def scan_path(self) -> str | None:
        """The file a scan layer was read from (None for results, and for scans that have no file of their own)."""
        return (self.paths or {}).get(self.modality) if self.modality else None

    @classmethod
    def from_metadata(cls, metadata: dict | None) -> LayerInfo | None:
        info = (metadata or {}).get(META_KEY)
        return info if isinstance(info, cls) else None

    @classmethod
    def from_layer(cls, layer) -> LayerInfo | None:
        """The layer's info, or None for a layer napari-sevnet did not make."""
        return cls.from_metadata(getattr(layer, "metadata", None))

    def but(self, **changes) -> LayerInfo:
        """A copy with ``changes`` (the layers of one group differ only in modality or region)."""
        return replace(self, **changes)


def contrast_limits(volume: np.ndarray) -> tuple[float, float]:
    """0.5-99.5 percentiles over the brain, so one bright voxel does not wash the scan out."""
    brain = volume[volume != 0]
    if brain.size == 0:
        return (0.0, 1.0)
    lo, hi = np.percentile(brain[:: max(brain.size // 200_000, 1)], [0.5, 99.5])
    return (float(lo), float(hi if hi > lo else lo + 1))


def region_layer_kwargs(region: str, scale, info: LayerInfo) -> dict:
    from napari.utils.colormaps import DirectLabelColormap

    from napari_sevnet.display import FILL_OPACITY, region_layer_name

    # any non-zero value in the region's colour: what is seen is what is counted and exported
    colormap = DirectLabelColormap(color_dict={None: REGION_COLOURS[region], 0: "transparent", 1: REGION_COLOURS[region]})
    return {"name": region_layer_name(info.case_id, region, info.run), "scale": scale, "colormap": colormap, "opacity": FILL_OPACITY, "metadata": info.but(region=region).to_metadata()}


def region_labels(regions: np.ndarray, scale, translate, info: LayerInfo) -> list:
    """WT/TC/ET layers of one result, kept nested as they are edited; ready to insert (they may be built off the GUI thread)."""
    from napari_sevnet.display import style_regions
    from napari_sevnet.editing import nested_region_layers

    layers = nested_region_layers(regions, **{r: {**region_layer_kwargs(r, scale, info), "translate": translate} for r in REGIONS})
    style_regions(dict(zip(REGIONS, layers)), editing="ET")  # ET is selected once they are in
    return layers


def one_label_layer(whole: np.ndarray, case: Case, file_name: str) -> tuple:
    """A mask painted with one label, beside the case's scans: no result (nothing exports or fine-tunes on it)."""
    from napari.utils.colormaps import DirectLabelColormap

    colormap = DirectLabelColormap(color_dict={None: ONE_LABEL_COLOUR, 0: "transparent"})
    return whole.astype(np.uint8), {"name": f"{case.case_id} whole tumour ({file_name}, one label)", "scale": tuple(case.spacing),
                                    "colormap": colormap, "opacity": 0.4}, "labels"


def uncertainty_layer(entropy: np.ndarray, scale, translate, info: LayerInfo):
    """An image layer of the WT entropy (bits) over the scan: dark where sure, bright where unsure."""
    from napari.layers import Image

    from napari_sevnet.display import region_layer_name

    return Image(
        entropy, name=region_layer_name(info.case_id, "WT uncertainty", info.run), scale=scale, translate=translate, colormap="inferno", blending="additive",
        opacity=0.7, contrast_limits=(0.0, 1.0), metadata=LayerInfo(group=info.group, case_id=info.case_id, run=info.run, uncertainty="entropy_bits").to_metadata(),
    )


def case_layers(case: Case, visible: str = "flair") -> list[tuple]:
    """LayerData tuples: four images (and WT/TC/ET labels when the case has a segmentation)."""
    scale = tuple(case.spacing)
    info = LayerInfo(case_id=case.case_id, grid=case.grid, paths={k: str(v) for k, v in case.paths.items()})
    layers = []
    if visible not in case.sequences:
        visible = case.sequences[-1]
    for i, m in enumerate(MODALITIES):
        if m not in case.sequences:
            continue  # a missing sequence has no layer: the Segment dock leaves it at none
        kwargs = {
            "name": f"{case.case_id} {MODALITY_LABELS[m]}",
            "scale": scale,
            "colormap": "gray",
            "contrast_limits": contrast_limits(case.image[i]),
            "visible": m == visible,
            "metadata": info.but(modality=m, warnings=case.warnings or None).to_metadata(),  # a result made from it says them again
        }
        layers.append((case.image[i], kwargs, "image"))
    if case.regions is not None:
        for i, r in enumerate(REGIONS):
            layers.append((case.regions[i].astype(np.uint8), region_layer_kwargs(r, scale, info), "labels"))
    return layers


def prediction_layers(case: Case, report: dict, run: int | None, open_scans: dict[str, str] | None = None, taken: Collection[str] = ()) -> list:
    """A case's scans with a ``sevnet-predict`` result (its ``report``), as napari layers: the model's WT/TC/ET
    as the result of ``run``, editable and measured against the model's own mask, with the probabilities the
    Correct dock's clicks use when the report kept them, and the uncertainty map.

    ``open_scans``: file -> name of the case's scan layers already in the viewer; those are not added again.
    ``taken``: the names of the viewer's layers; a new scan whose name another case's scan holds (two visits with
    one case id) is named with its folder too, so the result's guides are its own scans, not napari's renamed copy.
    """
    from napari.layers import Layer

    from napari_sevnet.io import read_nifti, read_segmentation

    open_scans = open_scans or {}
    scans = [t for t in case_layers(case) if t[2] == "image"]
    names = {}  # sequence -> the name of its layer, new or open
    images = []
    for data, kwargs, kind in scans:
        scan = LayerInfo.from_metadata(kwargs["metadata"])
        path = scan.scan_path
        if path not in open_scans and kwargs["name"] in taken:
            kwargs = {**kwargs, "name": f"{kwargs['name']} ({Path(path).parent.name})"}
        names[scan.modality] = open_scans.get(path, kwargs["name"])
        if path not in open_scans:
            images.append(Layer.create(data, kwargs, kind))
    scale, translate = tuple(case.spacing), (0.0, 0.0, 0.0)
    regions, _ = read_segmentation(report["segmentation"], case.grid, case.reference, report.get("label_convention"))
    maps = report.get("maps") or {}
    probabilities = None
    if all(f"prob_{r}" in maps for r in REGIONS):
        probabilities = np.stack([case.grid.to_canonical(np.asarray(read_nifti(maps[f"prob_{r}"])[0], np.float32)) for r in REGIONS]).astype(np.float16)
    info = LayerInfo(case_id=case.case_id, grid=case.grid, paths={k: str(v) for k, v in case.paths.items()}, checkpoint=report.get("checkpoint"),
                     device=report.get("device"), source_layers=names, prediction=regions, probabilities=probabilities,
                     thresholds=(report.get("postprocessing") or {}).get("thresholds"), run=run, sequences=tuple(report.get("sequences") or case.sequences),
                     warnings=tuple(str(w) for w in report.get("warnings") or ()) or None)
    layers = images + region_labels(regions, scale, translate, info)
    if maps.get("uncertainty_WT"):
        data, _ = read_nifti(maps["uncertainty_WT"])
        layers.append(uncertainty_layer(case.grid.to_canonical(np.asarray(data, np.float32)), scale, translate, info))
    return layers


def read_prediction_layers(mask: Path, report_path: Path) -> list[tuple]:
    """A ``sevnet-predict`` result opened from its output folder: the scans it was made from (named in its report)
    with the result as the case's next run, as after a run in the Segment dock."""
    import json

    import napari
    from napari.utils.notifications import show_warning

    from napari_sevnet.display import next_run

    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
        inputs = {role: Path(p) for role, p in report["inputs"].items() if role != "seg"}
        case_id = str(report["case"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(report_path, f"not a readable sevnet-predict report ({exc}); open the case itself, or delete the report to open the mask alone") from None
    gone = [str(p) for p in inputs.values() if not p.is_file()]
    if gone or not inputs:
        raise InputError(mask, f"the scans it was made from are not where its report {report_path.name} says ({', '.join(gone) or 'none named'}): "
                               "open the case's folder, or put the scans back")
    case = load_case(inputs["image"]) if "image" in inputs else load_case(mapping=inputs, allow_missing=True)
    case.case_id = case_id
    # the files opened, wherever the output folder has moved since
    report["segmentation"] = str(mask)
    report["maps"] = {name: str(mask.with_name(Path(p).name)) for name, p in (report.get("maps") or {}).items()}
    viewer = napari.current_viewer()
    # a mask dropped onto its open case adds the result only
    layers = (prediction_layers(case, report, next_run(viewer.layers, case_id), open_scans(viewer.layers), [layer.name for layer in viewer.layers])
              if viewer is not None else prediction_layers(case, report, 1))
    prepare_viewer(viewer)
    for warning in report.get("warnings") or []:
        show_warning(f"{case_id}: {warning}")
    return _layer_tuples(layers + _recovered(case, viewer))


def _layer_tuples(layers) -> list[tuple]:
    """A reader hands napari layer data: the regions come back as plain Labels, tied again as they go in (prepare_viewer)."""
    return [layer.as_layer_data_tuple() for layer in layers]


def _recovered(case: Case, viewer) -> list:
    """The case's corrections kept by :mod:`napari_sevnet.recovery` (not those open in ``viewer``), with a notice."""
    from napari_sevnet.recovery import recovered_layers

    open_groups = layer_groups(viewer.layers) if viewer is not None else set()
    layers, message = recovered_layers(case.case_id, case.grid, case.paths, case.spacing, case.shape, open_groups)
    if message:
        from napari.utils.notifications import show_warning

        show_warning(message)
    return layers


def layer_groups(layers) -> set[str]:
    """The groups (opened cases, results) that napari-sevnet layers among ``layers`` belong to."""
    return {info.group for info in map(LayerInfo.from_layer, layers) if info is not None}


def open_scans(layers) -> dict[str, str]:
    """File -> layer name of the scans among ``layers`` that napari-sevnet read (the first layer of a file opened twice)."""
    found = {}
    for layer in layers:
        info = LayerInfo.from_layer(layer)
        path = info.scan_path if info is not None else None
        if path:
            found.setdefault(path, layer.name)
    return found


def segmented_layers(info: LayerInfo, layers) -> dict[str, str]:
    """Sequence -> name of the image layer a result was segmented from: as its run recorded it while a layer has that
    name, else (a layer renamed since; a recovered result, which outlives the layers of its run) the open layer read
    from the same file, else the recorded name (gone: the caller says which layer was removed)."""
    from napari_sevnet.io import MODALITIES

    names, by_file = {layer.name for layer in layers}, open_scans(layers)
    recorded, paths = info.source_layers or {}, info.paths or {}
    found = {}
    for m in MODALITIES:
        path = str(paths.get(m))
        if recorded.get(m) in names or (m in recorded and path not in by_file):
            found[m] = recorded[m]
        elif path in by_file:
            found[m] = by_file[path]
    return found


def napari_get_reader(path):
    """npe2 reader: claim what looks like a case (a NIfTI file, a folder holding NIfTI files).

    A claimed path that is not a usable case fails in the reader with our
    message (which sequences are missing, which names were not recognised and
    what to do), instead of napari's bare "refused the file".
    """
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    path = Path(path)
    try:
        if path.is_file():
            looks_like_a_case = nifti_stem(path.name) is not None
        else:  # a case folder, or a folder of case folders (the reader then says to open one, or use the Worklist)
            entries = [p for p in path.iterdir() if not p.name.startswith(".")]
            looks_like_a_case = any(p.is_file() and nifti_stem(p.name) for p in entries) or any(p.is_dir() and holds_nifti(p) for p in entries)
    except OSError:
        return None
    if looks_like_a_case:
        return read_case_layers
    from napari_sevnet.prepare import is_dicom_folder

    return open_in_prepare_dock if path.is_dir() and is_dicom_folder(path) else None


def open_in_prepare_dock(path) -> list[tuple]:
    """A folder of DICOM series dropped on napari: made into a case first, so the Prepare raw scans dock opens with it
    (its series listed under the sequences their descriptions propose), where napari would only say it "refused the file"."""
    path = Path(path[0] if isinstance(path, list) else path)
    problem = InputError(path, "holds DICOM series, which are made into a case first (the sequences chosen, co-registered, skull-stripped): "
                               "Plugins > napari-sevnet > Prepare raw scans with this folder, or sevnet-predict --prepare FOLDER -o OUT",
                         remedy="Prepare raw scans")
    if not _open_remedy(problem, path, note="holds DICOM series, which are made into a case first"):
        raise problem
    return [(None,)]  # napari's "read, nothing to add"


_REMEDY_STEPS = {"Prepare raw scans": "check the sequences, choose where the case goes and press Prepare and open",
                 "Assign sequences": "check which file is which sequence and press Open"}


def _open_remedy(problem: InputError, path: Path, note: str | None = None) -> bool:
    """Open the dock that makes ``path``'s folder usable (``problem.remedy``) with that folder, saying what was wrong
    (the error it was raised from; else ``note``, nothing wrong with the files) and what to do there; False without a
    viewer to open it in (a script): the error stands."""
    import napari

    viewer = napari.current_viewer()
    if problem.remedy is None or viewer is None:
        return False
    from napari.utils.notifications import show_info, show_warning

    folder = path if path.is_dir() else path.parent
    _, dock = viewer.window.add_plugin_dock_widget("napari-sevnet", problem.remedy)
    dock._folder.value = folder
    then = f"the {problem.remedy} dock is open with {folder.name}: {_REMEDY_STEPS[problem.remedy]}"
    cause = problem.__cause__
    if isinstance(cause, InputError):  # the files' own problem (names, grids), which the dock puts right
        show_warning(f"{Path(cause.path).name if cause.path else folder.name}: {cause.problem}. {then[0].upper()}{then[1:]}")
    else:
        show_info(f"{folder.name} {note}: {then}")
    return True


def case_for_viewer(load) -> tuple[Case, list[tuple], list[str]]:
    """(case, its layer tuples, what to tell the user) as napari opens a case; ``load(read_mask)`` reads it.

    A mask painted with one label comes beside the scans as a layer to compare with (it is no result); any other
    mask that cannot be read (another case's, labels of no known scheme) leaves the scans open without it, saying
    why, as ``sevnet-predict`` segments them: where it failed the whole case before, the scans could not even be
    looked at or segmented. One read as necrosis alone is said, since a one-label mask is far likelier.
    """
    case, mask_error = without_unreadable_mask(load)
    outline = read_one_label_mask(mask_error.path, case.grid) if mask_error is not None and mask_error.path else None
    layers, warnings = case_layers(case), list(case.warnings)
    if mask_error is not None and outline is None:
        warnings.append(f"its mask {mask_error.path} is not shown, the scans are opened without it: {mask_error.problem}")
    if outline is not None:
        mask_file = Path(mask_error.path).name
        layers.append(one_label_layer(outline[0], case, mask_file))
        warnings.append(f"{mask_file} holds one label ({outline[1]}), not BraTS labels: opened as a whole tumour "
                        "(blue) to compare with, not as WT/TC/ET; to correct or export it, label its regions (necrosis 1, "
                        "oedema 2, enhancing 4); sevnet-evaluate --whole-tumour-references scores a result against it as it is")
    if case.regions is not None and necrosis_alone(case.regions):
        warnings.append(f"{Path(case.paths['seg']).name} {NECROSIS_ALONE}: then its WT layer is right, but its TC layer, all of it, "
                        "is no tumour core; relabel the mask before exporting it for fine-tuning")
    return case, layers, warnings


def shown_sources(layers) -> tuple[set, set, set]:
    """What ``layers`` (a viewer's, read on the GUI thread) show of cases read from files: (file, sequence) of the
    scans, (mask file, region) of the masks, and the layers' names; :func:`not_open_yet` leaves those out."""
    known = [info for info in map(LayerInfo.from_layer, layers) if info is not None]
    scans = {(info.scan_path, info.modality) for info in known if info.modality}
    masks = {(info.paths.get("seg"), info.region) for info in known if info.region and info.run is None and info.paths}
    return scans, masks, {layer.name for layer in layers}


def not_open_yet(layers: list[tuple], shown_already: tuple[set, set, set]) -> list[tuple]:
    """A case's layer tuples but the scans (a file as the same sequence: not one assigned another since) and the mask's
    regions read from the same files that the viewer shows already (:func:`shown_sources`)."""
    scans, masks, names = shown_already

    def shown(layer: tuple) -> bool:
        info = LayerInfo.from_metadata(layer[1].get("metadata"))
        if info is None:
            return layer[1]["name"] in names  # a mask painted with one label: by its name, which names its file
        return (info.scan_path, info.modality) in scans if info.modality else (info.paths.get("seg"), info.region) in masks

    return [layer for layer in layers if not shown(layer)]


def read_case_layers(path) -> list[tuple]:
    """Read the case at ``path`` completely before returning, so a bad file adds no layer at all."""
    from napari_sevnet.assignments import load_assigned_or_named
    from napari_sevnet.report import report_beside

    started = time.monotonic()
    path = path[0] if isinstance(path, list) else path
    report = report_beside(path) if Path(path).is_file() else None
    if report is not None:  # sevnet-predict's output: the mask with the scans it was made from
        return read_prediction_layers(Path(path), report)
    try:
        case, layers, warnings = case_for_viewer(lambda read_mask: load_assigned_or_named(path, read_mask=read_mask))
    except InputError as exc:  # raw series, or files named in no known scheme: the dock that makes them a case opens
        if not _open_remedy(exc, Path(path)):
            raise
        return [(None,)]
    import napari

    viewer = napari.current_viewer()
    layers = (not_open_yet(layers, shown_sources(viewer.layers)) if viewer is not None else layers) + _layer_tuples(_recovered(case, viewer))
    same_open = _answered_just_before(case, started, viewer)
    if not layers:  # all its files chosen at once in File > Open, each of which opens the whole case; or opened again
        if not same_open:  # the case's other files of the same File > Open: the case came in, nothing to say
            from napari.utils.notifications import show_info

            show_info(f"{case.case_id} is open already: its layers are in the layer list")
        _LAST_ANSWERED["at"] = time.monotonic()
        return [(None,)]  # napari's "read, nothing to add"
    prepare_viewer()
    if warnings:
        from napari.utils.notifications import show_warning

        for line in warnings:
            show_warning(f"{case.case_id}: {line}")
    if case.missing:
        from napari.utils.notifications import show_info

        show_info(f"{case.case_id} has no {', '.join(MODALITY_LABELS[m] for m in case.missing)}: the default model segments it with what is there "
                  "(it was trained with sequences left out; its figures per set of sequences are in its model card)")
    _LAST_ANSWERED["at"] = time.monotonic()
    return layers


#: the case the reader answered last (its files, as assigned) and when it, or the adding of a layer since, ended:
#: napari reads the files chosen together in one File > Open one after another, each as the layers of the one
#: before are added
_LAST_ANSWERED: dict = {"case": None, "at": float("-inf")}
_SAME_OPEN_S = 1.0
_INSERTIONS_TIMED: weakref.WeakSet = weakref.WeakSet()


def _answered_just_before(case, started: float, viewer) -> bool:
    """Whether the read that started at ``started`` (time.monotonic) follows one of the same case with no pause between:
    another of its files chosen in the same File > Open, not the case opened again by the user."""
    if viewer is not None and viewer not in _INSERTIONS_TIMED:
        _INSERTIONS_TIMED.add(viewer)
        viewer.layers.events.inserted.connect(lambda _: _LAST_ANSWERED.update(at=time.monotonic()))
    key = frozenset((role, str(Path(path).absolute())) for role, path in case.paths.items())
    same = _LAST_ANSWERED["case"] == key and started - _LAST_ANSWERED["at"] < _SAME_OPEN_S
    _LAST_ANSWERED["case"] = key
    return same


def prepare_viewer(viewer=None) -> None:
    """Radiological orientation with the sides named, and result regions styled by selection, in ``viewer``.

    The reader has no viewer of its own: it prepares napari's current one, the viewer the case opens in.
    """
    from napari_sevnet.display import follow_selection, show_radiological
    from napari_sevnet.editing import keep_nested
    from napari_sevnet.recovery import watch

    if viewer is None:
        import napari

        viewer = napari.current_viewer()
    if viewer is not None:
        show_radiological(viewer)
        follow_selection(viewer)
        keep_nested(viewer)
        watch(viewer)  # recovery copies of each result's edits
        forget_copies(viewer)


def forget_copies(viewer) -> None:
    """A layer napari makes from one of ours (Layers > Duplicate, Convert to Image) becomes a plain layer of its own.

    It keeps the original's metadata, so Export, the writer, the click tools and recovery, which find a result's
    WT/TC/ET by their group, could take a copy for the original (and export a mask edited no more), or an image
    for a region layer. Runs before every other handler of the viewer's insertions, so none of them sees it as ours.
    """
    from napari.layers import Image, Labels

    def on_inserted(event) -> None:
        layer = event.value
        info = LayerInfo.from_layer(layer)
        if info is None or (info.region, info.modality, info.uncertainty) == (None, None, None):
            return
        role = (info.group, info.region, info.modality, info.uncertainty)
        converted = not isinstance(layer, Labels if info.region else Image)
        if converted or any(other is not layer and (known := LayerInfo.from_layer(other)) is not None
                            and (known.group, known.region, known.modality, known.uncertainty) == role for other in viewer.layers):
            layer.metadata = {key: value for key, value in layer.metadata.items() if key != META_KEY}

    if viewer not in _COPIES_WATCHED:
        _COPIES_WATCHED.add(viewer)
        viewer.layers.events.inserted.connect(on_inserted, position="first")


_COPIES_WATCHED: weakref.WeakSet = weakref.WeakSet()


_OWN_SAVES: dict[Path, tuple[str, int, int]] = {}  # file -> (the result's group, mtime_ns, size) as this session saved it


def _may_replace(path: Path, group: str | None) -> bool:
    """Whether ``path`` may be written over: absent, or this result's own earlier save, unchanged since.

    Saving a result again after more edits is an editor's everyday step (napari's
    dialog has asked already); any other file (an expert's mask, another result's
    save, a file changed since) is never replaced.
    """
    if not path.exists():
        return False
    stat = path.stat()
    return group is not None and _OWN_SAVES.get(path.resolve()) == (group, stat.st_mtime_ns, stat.st_size)


def _our_mask_read_back(path: Path, info: LayerInfo | None) -> bool:
    """Whether ``path`` is the file these mask layers were read from (no run of the model's), napari-sevnet wrote it and
    it is not the case's own mask (``<case>_seg``): a correction saved on an earlier day under a name of its own, opened,
    corrected further and saved again. An expert's or a clinic's mask, or the mask of an exported case, is never replaced so."""
    import nibabel as nib

    seg = (info.paths or {}).get("seg") if info is not None and info.run is None else None
    if not seg or Path(seg).resolve() != path.resolve() or named_case_id(path) == info.case_id:
        return False
    try:
        description = bytes(nib.load(str(path)).header.get("descrip", b"")).split(b"\0")[0]
    except Exception:  # noqa: BLE001 - a file nibabel cannot read is not one of ours
        return False
    return description.startswith(b"napari-sevnet ")


def _remember_save(path: Path, group: str | None) -> None:
    if group is not None:
        stat = path.stat()
        _OWN_SAVES[path.resolve()] = (group, stat.st_mtime_ns, stat.st_size)


def write_regions(path: str, layer_data: list[tuple]) -> list[str]:
    """npe2 writer: WT/TC/ET Labels layers -> one BraTS 2021 label NIfTI on the source grid.

    The file name may end in ``.2023.nii.gz`` to write the BraTS 2023 labels.
    A case prepared from raw series (``sevnet-prepare``) also gets
    ``<name>_native.nii.gz``: the same masks on the reference series' own grid.
    A file is replaced only when it is this result's own earlier save, or the napari-sevnet mask these layers were read from.
    """
    by_region, names, groups = {}, [], set()
    grid = paths = source = None
    for data, meta, _ in layer_data:
        known = LayerInfo.from_metadata(meta.get("metadata"))
        info = known or LayerInfo()
        region = info.region or (meta.get("name") if meta.get("name") in REGIONS else None)
        if region:
            names.append(meta.get("name") or region)
            groups.add(known.group if known is not None else None)
            by_region.setdefault(region, []).append(np.asarray(data) > 0)
            grid, paths, source = grid or info.grid, paths or info.paths, known
    missing = [r for r in REGIONS if r not in by_region]
    try:
        if len(groups) > 1 or any(len(masks) > 1 for masks in by_region.values()):  # one file would mix two results (or two patients)
            raise InputError(path, f"the selected layers come from more than one result ({', '.join(names)}): select the WT, TC and ET of one result")
        by_region = {r: masks[0] for r, masks in by_region.items()}
        if missing:
            raise InputError(path, f"select the WT, TC and ET layers of one result to save them as a BraTS label file (missing {', '.join(missing)})")
        if grid is None:
            raise InputError(path, "these layers do not come from a case opened with napari-sevnet, so the source grid is unknown")
        named = role_of(Path(path).name)  # a BraTS 2023 mask name (<case>-seg) promises 2023 labels to whoever reads it
        as_2023 = str(path).endswith((".2023.nii.gz", ".2023.nii")) or (named is not None and named[1:] == ("seg", "brats2023"))
        convention = convention_name("2023") if as_2023 else "brats2021"
        regions = np.stack([by_region[r] for r in REGIONS])
        (group,) = groups
        from napari_sevnet.prepare import prepared_folder_of, write_native_mask

        prepared = prepared_folder_of(paths)
        targets = [Path(path)] + ([Path(path).with_name(f"{nifti_stem(Path(path).name)}_native.nii.gz")] if prepared is not None else [])
        for target in targets:
            if target.exists() and not (_may_replace(target, group) or _our_mask_read_back(target, source)):
                raise InputError(target, "already exists, and it is neither this result's own earlier save nor the napari-sevnet mask it was read from: "
                                         "napari-sevnet replaces no other file (it may be an expert's mask or another correction); save under another name")
        written = [write_mask(regions, grid, targets[0], convention, overwrite=True)]
        if prepared is not None:
            written.append(write_native_mask(regions, grid, prepared, targets[1], convention, overwrite=True)[0])
        for target in written:
            _remember_save(target, group)
        from napari_sevnet.recovery import discard

        if group is not None:
            discard(group)  # saved: its recovery copy has done its work
        return [str(target) for target in written]
    except InputError as exc:
        raise NotSaved(str(exc)) from None


def region_group(layers, layer) -> dict:
    """The WT/TC/ET layers made together with ``layer`` (one Segment run or one opened case)."""
    own = LayerInfo.from_layer(layer)
    found = {}
    for other in layers:
        info = LayerInfo.from_layer(other)
        if info is not None and own is not None and info.group == own.group and info.region in REGIONS:
            found[info.region] = other
    missing = [r for r in REGIONS if r not in found]
    if missing:
        raise InputError(None, f"the {', '.join(missing)} layer(s) of {layer.name!r} were deleted; export needs WT, TC and ET")
    return found


def case_from_layers(layers, region_layer) -> Case:
    """The case behind a result layer: re-read from its files, or its image layers (any iterable) when it has none."""
    info = LayerInfo.from_layer(region_layer)
    if info is None or info.grid is None:
        raise InputError(None, f"layer {region_layer.name!r} does not come from a case opened with napari-sevnet, so its scan is unknown")
    paths = {k: Path(v) for k, v in (info.paths or {}).items()}
    files = {m: paths[m] for m in MODALITIES if m in paths}
    if files:
        decathlon = len(files) == len(MODALITIES) and len(set(files.values())) == 1  # one 4D file holds all four
        case = load_case(files["t1"]) if decathlon else load_case(mapping=files, allow_missing=True)
        case.case_id = info.case_id or case.case_id
    else:  # an in-memory case (the phantom sample): its image layers are the scan
        images = {}
        for layer in layers:
            other = LayerInfo.from_layer(layer)
            if other is not None and other.modality in MODALITIES and other.group == info.group:
                images[other.modality] = np.asarray(layer.data, dtype=np.float32)
        by_name = {layer.name: layer for layer in layers}
        for m, name in (info.source_layers or {}).items():
            if name in by_name and m not in images:
                images[m] = np.asarray(by_name[name].data, dtype=np.float32)
        missing = [MODALITY_LABELS[m] for m in MODALITIES if m not in images]
        if missing:
            raise InputError(None, f"the scan behind {region_layer.name!r} has no files and its {', '.join(missing)} layer(s) are gone")
        case = Case(case_id=info.case_id or "case", image=np.stack([images[m] for m in MODALITIES]), grid=info.grid, paths={}, layout="in-memory")
    if case.shape != tuple(region_layer.data.shape):
        raise InputError(case.paths.get("t1"), f"the scan has shape {case.shape}, the layer {region_layer.name!r} {region_layer.data.shape}; was the file replaced?")
    return case


def phantom_sample() -> list[tuple]:
    """A small synthetic case that opens instantly (no files involved)."""
    from napari_sevnet.phantom import phantom_case

    layers = case_layers(phantom_case(seed=7, shape=(96, 112, 96), case_id="phantom_sample"))
    prepare_viewer()
    return layers


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
    layers = case_layers(load_case(demo_case_folder()))
    prepare_viewer()
    return layers
