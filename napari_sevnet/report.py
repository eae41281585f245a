"""What a prediction writes per case, for ``sevnet-predict`` and the worklist alike.

``<case>_seg.nii.gz`` (nested regions in the chosen label convention, on the
source grid), ``<case>_report.json`` (volumes, timings, device, checkpoint,
post-processing, uncertainty summary) and, when asked,
``<case>_prob_{WT,TC,ET}.nii.gz`` and ``<case>_uncertainty_{WT,TC,ET}.nii.gz``.
"""

from __future__ import annotations

import json
from pathlib import Path

from napari_sevnet.errors import InputError
from napari_sevnet.files import write_text_atomic
from napari_sevnet.io import Case, write_mask, write_volume
from napari_sevnet.regions import REGIONS, volumes_ml
from napari_sevnet.uncertainty import uncertainty_summary

#: shown wherever a result is shown (dock status lines, reports): what the model may be used for
RESEARCH_USE = "research use, not for diagnosis"


def output_paths(case_id: str, out_dir: Path) -> dict[str, Path]:
    return {"seg": out_dir / f"{case_id}_seg.nii.gz", "report": out_dir / f"{case_id}_report.json"}


def write_case_outputs(case: Case, result, predictor, out_dir: Path, *, convention: str, overwrite: bool = False, probabilities: bool = False) -> dict:
    """Write the mask, the optional maps and the report (last, so a report means a complete set); returns the report."""
    paths = output_paths(case.case_id, out_dir)
    for out in paths.values():
        if out.exists() and not overwrite:
            raise InputError(out, "already exists; pass --overwrite to replace it")
    write_mask(result.regions, case.grid, paths["seg"], convention, overwrite=overwrite)
    maps = {}
    if probabilities:
        maps.update({f"prob_{r}": result.probabilities[i] for i, r in enumerate(REGIONS)})
    if result.uncertainty is not None:
        maps.update({f"uncertainty_{r}": result.uncertainty[i] for i, r in enumerate(REGIONS)})
    written = {}
    for name, volume in maps.items():
        written[name] = str(write_volume(volume, case.grid, out_dir / f"{case.case_id}_{name}.nii.gz", overwrite=overwrite))
    report = {
        "notice": f"Automatic segmentation for {RESEARCH_USE}: check and correct it before any use.",
        "case": case.case_id,
        "inputs": {k: str(v) for k, v in case.paths.items()},
        "segmentation": str(paths["seg"]),
        "maps": written,
        "label_convention": convention,
        "volumes_ml": volumes_ml(result.regions, case.spacing),
        "spacing_mm": list(case.spacing),
        "timings_s": result.timings,
        "device": result.device,
        "tta": result.tta,
        "checkpoint": predictor.checkpoint,
        "postprocessing": result.postprocessing or None,
        "uncertainty": uncertainty_summary(result, case.spacing) if result.uncertainty is not None else None,
    }
    write_text_atomic(paths["report"], json.dumps(report, indent=2))
    return report
