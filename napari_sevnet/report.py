"""What a prediction writes per case, for ``sevnet-predict`` and the worklist alike.

``<case>_seg.nii.gz`` (nested regions in the chosen label convention, on the
source grid), ``<case>_report.json`` (volumes, timings, device, checkpoint,
post-processing, uncertainty summary) and, when asked,
``<case>_prob_{WT,TC,ET}.nii.gz`` and ``<case>_uncertainty_{WT,TC,ET}.nii.gz``;
for a case sevnet-prepare made, ``<case>_seg_native.nii.gz`` on the grid of
the series it was prepared from, as napari's Save writes it.
"""

from __future__ import annotations

import json
from pathlib import Path

from napari_sevnet.errors import InputError
from napari_sevnet.files import write_text_atomic
from napari_sevnet.io import Case, write_mask, write_volume
from napari_sevnet.readout import measure
from napari_sevnet.regions import REGIONS, volumes_ml
from napari_sevnet.uncertainty import uncertainty_summary

#: shown wherever a result is shown (dock status lines, reports): what the model may be used for
RESEARCH_USE = "research use, not for diagnosis"


def output_paths(case_id: str, out_dir: Path, convention: str = "brats2021") -> dict[str, Path]:
    """Where a case's mask and report go; the mask is named as its label convention is (2021 ``_seg``, 2023 ``-seg``)."""
    seg = f"{case_id}-seg.nii.gz" if convention == "brats2023" else f"{case_id}_seg.nii.gz"
    return {"seg": out_dir / seg, "report": out_dir / f"{case_id}_report.json"}


def report_beside(mask: str | Path) -> Path | None:
    """The ``<case>_report.json`` written beside ``mask`` when ``mask`` is that run's ``<case>_seg`` (or ``-seg``)."""
    from napari_sevnet.io import role_of

    mask = Path(mask)
    named = role_of(mask.name)
    report = output_paths(named[0], mask.parent)["report"] if named and named[1] == "seg" else None
    return report if report is not None and report.is_file() else None


def checkpoint_of(mask: str | Path) -> str | None:
    """The model that made ``mask``, from its report, for provenance when the user names none
    (None when there is no report or its checkpoint is not on this machine)."""
    report = report_beside(mask)
    try:
        checkpoint = str(json.loads(report.read_text(encoding="utf-8"))["checkpoint"]) if report else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return checkpoint if checkpoint and Path(checkpoint).is_file() else None


def check_outputs_free(case_id: str, out_dir: Path, convention: str, *, overwrite: bool) -> None:
    """Refuse, before the work, outputs that exist (unless ``overwrite``)."""
    if overwrite:
        return
    for out in output_paths(case_id, out_dir, convention).values():
        if out.exists():
            raise InputError(out, "already exists; pass --overwrite to replace it, or --skip-existing to keep a finished run's")


def finished_before(case: Case, out_dir: Path, convention: str, *, checkpoint: str | None, tta: bool, maps: list[str]) -> bool:
    """Whether ``out_dir`` holds this case's result from a run of the same model, inputs and test-time augmentation,
    with the ``maps`` asked for (its report is written last: a report means a complete set). False when there is none;
    a result of another run, or one whose files are gone, is an InputError saying what differs."""
    paths = output_paths(case.case_id, out_dir, convention)
    if not paths["report"].exists():
        return False
    try:
        report = json.loads(paths["report"].read_text(encoding="utf-8"))
        made_with, inputs, kept = report.get("checkpoint"), report.get("inputs") or {}, report.get("maps") or {}
    except (OSError, ValueError, AttributeError) as exc:
        raise InputError(paths["report"], f"unreadable ({exc}); pass --overwrite to segment the case again") from None

    def same(a, b) -> bool:
        return a is not None and b is not None and Path(a).resolve() == Path(b).resolve()

    differs = []
    if not same(made_with, checkpoint):
        differs.append(f"the model {made_with}")
    if {role: str(Path(p).resolve()) for role, p in inputs.items()} != {role: str(Path(p).resolve()) for role, p in case.paths.items()}:
        differs.append("other input files")
    if bool(report.get("tta")) != tta:
        differs.append(f"test-time augmentation {'on' if report.get('tta') else 'off'}")
    missing = [name for name in maps if not (name in kept and Path(kept[name]).is_file())] + ([] if paths["seg"].is_file() else [paths["seg"].name])
    if missing:
        differs.append(f"no {', '.join(missing)}")
    if differs:
        raise InputError(paths["report"], f"is a run with {'; '.join(differs)}: pass --overwrite to segment the case again")
    return True


def write_case_outputs(case: Case, result, predictor, out_dir: Path, *, convention: str, overwrite: bool = False, probabilities: bool = False,
                       eight_bit_maps: bool = False, native: bool = False, mask_not_read: str | None = None) -> dict:
    """Write the mask, the optional maps and the report (last, so a report means a complete set); returns the report.

    ``eight_bit_maps``: the maps in steps of 1/255 (:func:`~napari_sevnet.io.write_volume`), as the worklist keeps them.
    ``native``: a prepared case's mask on its native grid as well (when that series is still where it was).
    ``mask_not_read``: why the case's own mask was left unread (:func:`~napari_sevnet.assignments.load_to_segment`), kept
    in the report so a list of results can say so.

    All or nothing: when one write fails (a full disk), the files this call
    wrote are removed again. With ``overwrite`` the case's maps (and a mask in
    the other label convention) of an earlier run that this run does not write
    go too, so nothing stale sits beside the new report.
    """
    paths = output_paths(case.case_id, out_dir, convention)
    check_outputs_free(case.case_id, out_dir, convention, overwrite=overwrite)
    maps = {}
    if probabilities:
        maps.update({f"prob_{r}": result.probabilities[i] for i, r in enumerate(REGIONS)})
    if result.uncertainty is not None:
        maps.update({f"uncertainty_{r}": result.uncertainty[i] for i, r in enumerate(REGIONS)})
    map_paths = {name: out_dir / f"{case.case_id}_{name}.nii.gz" for name in maps}
    on_native, native_note = _native_target(case, paths["seg"]) if native else (None, None)
    written: list[Path] = []
    try:
        written.append(write_mask(result.regions, case.grid, paths["seg"], convention, overwrite=overwrite))
        for name, volume in maps.items():
            written.append(write_volume(volume, case.grid, map_paths[name], overwrite=overwrite, eight_bit=eight_bit_maps))
        if on_native is not None:
            from napari_sevnet.prepare import write_native_mask

            written.append(write_native_mask(result.regions, case.grid, on_native[0], on_native[1], convention, overwrite=overwrite)[0])
        report = _report(case, result, predictor, paths, convention, {n: str(p) for n, p in map_paths.items()})
        if on_native is not None:
            report["segmentation_native"] = str(Path(on_native[1]).absolute())
        if native_note:
            report["notes"] = [*report["notes"], native_note]
        if mask_not_read:
            report["mask_not_read"] = mask_not_read
        write_text_atomic(paths["report"], json.dumps(report, indent=2))
    except BaseException:
        for path in written:
            Path(path).unlink(missing_ok=True)
        raise
    if overwrite:
        other_mask = output_paths(case.case_id, out_dir, "brats2021" if convention == "brats2023" else "brats2023")["seg"]
        for stale in [*out_dir.glob(f"{case.case_id}_prob_*.nii.gz"), *out_dir.glob(f"{case.case_id}_uncertainty_*.nii.gz"), other_mask]:
            if stale not in map_paths.values():
                stale.unlink(missing_ok=True)  # an earlier run's mask in the other convention would be a second result of the case
    return report


def _native_target(case: Case, seg: Path) -> tuple[tuple[Path, Path] | None, str | None]:
    """((prepared folder, where its native-grid mask goes), None) for a case sevnet-prepare made; (None, why not) when
    its native series is gone; (None, None) for any other case."""
    from napari_sevnet.io import nifti_stem
    from napari_sevnet.prepare import native_reference_of, prepared_folder_of

    prepared = prepared_folder_of(case.paths)
    if prepared is None:
        return None, None
    series = native_reference_of(prepared)
    if not series.is_file():
        return None, f"no mask on the native grid: the series the case was prepared from is no longer at {series}"
    return (prepared, seg.with_name(f"{nifti_stem(seg.name)}_native.nii.gz")), None


def _report(case: Case, result, predictor, paths: dict, convention: str, maps: dict) -> dict:
    return {
        "notice": f"Automatic segmentation for {RESEARCH_USE}: check and correct it before any use.",
        "case": case.case_id,
        "inputs": {k: str(Path(v).absolute()) for k, v in case.paths.items()},  # napari opens the result with its scans from anywhere
        "segmentation": str(Path(paths["seg"]).absolute()),
        "maps": {name: str(Path(p).absolute()) for name, p in maps.items()},
        "label_convention": convention,
        "volumes_ml": volumes_ml(result.regions, case.spacing),
        "spacing_mm": list(case.spacing),
        "timings_s": result.timings,
        "device": result.device,
        "tta": result.tta,
        "checkpoint": result.checkpoint or predictor.checkpoint,
        "sequences": list(result.sequences),
        "postprocessing": result.postprocessing,
        "uncertainty": uncertainty_summary(result, case.spacing) if result.uncertainty is not None else None,
        "warnings": [*case.warnings, *result.warnings],  # reading the scans' (voxels without a value), then the model's
        "notes": result.notes,
        "readout": measure(result.regions, case.spacing, case.grid).to_json(),
    }
