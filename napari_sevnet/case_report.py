"""One self-contained HTML page per case: what a neuro-oncologist reads off a segmentation.

Patient/case id, the sequences used, axial, coronal and sagittal slices
through the largest lesion with the regions' outlines and the RANO diameters,
the lesion table, the volumes, the uncertainty score when there is one, the
model and its version, the date, the change since an earlier visit when
given, and a "for research, not diagnosis" line; a mask the model made
from some sequences only carries the held-out figures of that set. Images are embedded, so the
file can be mailed or archived as it is.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io as _io
import json
import re
from pathlib import Path

import numpy as np

from napari_sevnet.checkpoint import sequence_caveats, training_caveats
from napari_sevnet.errors import InputError
from napari_sevnet.files import write_text_atomic
from napari_sevnet.io import MODALITIES, MODALITY_LABELS, Case
from napari_sevnet.readout import Readout, format_ml
from napari_sevnet.regions import REGIONS
from napari_sevnet.report import RESEARCH_USE

SCAN_META = "napari-sevnet-scan"  # the report's scan, so a later report of another case never replaces it unasked
REGION_COLOURS = {"WT": "#2ecc40", "TC": "#ff4136", "ET": "#ffdc00"}


def _slices_png(case: Case, regions: np.ndarray, readout: Readout) -> str:
    """Axial, coronal and sagittal slices through the largest lesion (or the tumour's centre), as a base64 PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    background = next(case.image[MODALITIES.index(m)] for m in ("flair", "t1ce", "t2", "t1") if m in case.sequences)
    if readout.lesions:
        z, y, x = readout.lesions[0].voxel
        if readout.lesions[0].diameters is not None:
            z = readout.lesions[0].diameters.slice
    else:
        z, y, x = (np.array(np.nonzero(regions[0])).mean(axis=1).astype(int) if regions[0].any() else np.array(regions.shape[1:]) // 2)
    views = [("axial", background[z], regions[:, z]), ("coronal", background[:, y], regions[:, :, y]), ("sagittal", background[:, :, x], regions[:, :, :, x])]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    lo, hi = np.percentile(background[background != 0], [0.5, 99.5]) if np.any(background) else (0, 1)
    for ax, (name, image, masks) in zip(axes, views):
        # radiological display: anterior / superior up, the patient's right on the left
        ax.imshow(image[::-1, ::-1], cmap="gray", vmin=lo, vmax=hi)
        for i, r in enumerate(REGIONS):
            if masks[i].any():
                ax.contour(masks[i][::-1, ::-1], levels=[0.5], colors=[REGION_COLOURS[r]], linewidths=1.2)
        ax.set_title(name)
        ax.axis("off")
    d = readout.lesions[0].diameters if readout.lesions else None
    if d is not None:
        ny, nx = background.shape[1:]
        for segment, colour in ((d.longest, "cyan"), (d.perpendicular, "magenta")):
            (_, y0, x0), (_, y1, x1) = segment
            axes[0].plot([nx - 1 - x0, nx - 1 - x1], [ny - 1 - y0, ny - 1 - y1], color=colour, lw=1.5)
    fig.tight_layout()
    buffer = _io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _model_line(checkpoint: str | None) -> str:
    if not checkpoint:
        return "not recorded"
    try:
        data = json.loads(Path(checkpoint).with_suffix(".json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return html.escape(str(checkpoint))
    card = data.get("model_card") or {}
    provenance = data.get("provenance") or {}
    version = provenance.get("git_revision") or provenance.get("date") or "?"
    return f"{html.escape(card.get('name') or Path(checkpoint).stem)} (trained {html.escape(str(provenance.get('date', '?'))[:10])}, version {html.escape(str(version)[:12])})"


def render(case: Case, regions: np.ndarray, readout: Readout, *, checkpoint: str | None = None, uncertainty: dict | None = None,
           comparison: dict | None = None, date: str | None = None) -> str:
    """The report as one HTML string."""
    date = date or _dt.date.today().isoformat()
    missing = [MODALITY_LABELS[m] for m in MODALITIES if m not in case.sequences]
    rows = "".join(
        f"<tr><td>{les.index}</td><td>{format_ml(les.ncr_ml)}</td><td>{format_ml(les.ed_ml)}</td><td>{format_ml(les.et_ml)}</td>"
        f"<td>{', '.join(f'{v:.1f}' for v in les.centroid_ras_mm)}</td>"
        + (f"<td>{les.diameters.slice}</td><td>{les.diameters.longest_mm:.1f}</td><td>{les.diameters.perpendicular_mm:.1f}</td><td>{les.diameters.product_mm2:.0f}</td>"
           if les.diameters else "<td>-</td><td>-</td><td>-</td><td>-</td>")
        + f"<td>{les.measurable_words}</td></tr>"
        for les in readout.lesions
    )
    volumes = "".join(f"<tr><td>{r}</td><td>{format_ml(readout.volumes_ml[r])}</td></tr>" for r in REGIONS)
    # a mask the model made from some sequences only: what its card measured for that set (without T1ce, ET is not seen)
    # and a model that never saw a patient's scan says so
    lines = (training_caveats(checkpoint) + (sequence_caveats(checkpoint, case.sequences) if missing else [])) if checkpoint else []
    caveats = "".join(f"<p class='notice'>{html.escape(line)}.</p>" for line in lines)
    sections = [
        f"<section id='case'><h1>Tumour segmentation report: {html.escape(case.case_id)}</h1>"
        f"<p class='notice'><b>For {RESEARCH_USE}.</b> An automatic segmentation, checked by nobody unless stated: verify before any use.</p>"
        f"<p>Date {html.escape(date)}. Sequences used: {', '.join(MODALITY_LABELS[m] for m in case.sequences)}"
        + (f" (missing: {', '.join(missing)})" if missing else "") + f"</p>{caveats}</section>",
        f"<section id='images'><h2>Through the largest lesion</h2><img alt='axial, coronal and sagittal slices' src='data:image/png;base64,{_slices_png(case, regions, readout)}'>"
        "<p>Outlines: WT green, TC red, ET yellow; on the axial slice the RANO diameters (cyan, magenta). Radiological view: the patient's right on the left.</p></section>",
        "<section id='lesions'><h2>Lesions (RANO)</h2><table><tr><th>#</th><th>NCR mL</th><th>ED mL</th><th>ET mL</th><th>centroid RAS mm</th><th>slice</th>"
        f"<th>longest mm</th><th>perpendicular mm</th><th>product mm²</th><th>measurable</th></tr>{rows}</table>"
        f"<p>Sum of products of the target lesions: <b>{readout.sum_of_products_mm2:.0f} mm²</b> ({readout.measurable} measurable: both diameters at least 10 mm, "
        "or twice the slice thickness where slices are thicker than 5 mm, seen on at least two axial slices; the five largest are the targets, RANO 2010).</p></section>",
        f"<section id='volumes'><h2>Volumes</h2><table><tr><th>region</th><th>mL</th></tr>{volumes}</table></section>",
        "<section id='uncertainty'><h2>Uncertainty</h2>"
        + (f"<p>Score {uncertainty['score']:.3f} (0: the model is sure; higher: check this case first).</p>" if uncertainty else "<p>Not computed for this run.</p>")
        + "</section>",
        f"<section id='model'><h2>Model</h2><p>{_model_line(checkpoint)}</p></section>",
    ]
    if comparison:
        spd = comparison["sum_of_products_mm2"]
        pct = f"{spd['percent']:+.1f} %" if spd["percent"] is not None else "n/a"
        dates = comparison.get("study_dates") or {}
        changes = "".join(f"<tr><td>{r}</td><td>{c['baseline']:.1f}</td><td>{c['follow_up']:.1f}</td><td>{c['absolute']:+.1f}</td><td>"
                          + (f"{c['percent']:+.1f} %" if c["percent"] is not None else "n/a") + "</td></tr>" for r, c in comparison["volumes_ml"].items())
        sections.append(
            "<section id='visits'><h2>Change since the baseline</h2>"
            + (f"<p class='notice'><b>Check the visits:</b> {html.escape(comparison['caveat'])}.</p>" if comparison.get("caveat") else "")
            + (f"<p>Baseline scanned {_on(dates.get('baseline'))}, follow-up {_on(dates.get('follow_up'))}"
               + (f" ({comparison['days']} days later)" if comparison.get("days") is not None else "") + ".</p>" if any(dates.values()) else "")
            + f"<p>Sum of products {spd['baseline']:.0f} → {spd['follow_up']:.0f} mm² ({pct}): <b>{html.escape(comparison['category'])}</b>"
            + (f" (new lesion {', '.join(f'#{n}' for n in comparison['new_lesions'])})" if comparison.get("new_lesions") else "") + ".</p>"
            f"<table><tr><th>region</th><th>baseline mL</th><th>follow-up mL</th><th>change</th><th>%</th></tr>{changes}</table><p>{html.escape(comparison['criteria'])}.</p></section>"
        )
    style = "body{font-family:sans-serif;max-width:1100px;margin:1em auto}table{border-collapse:collapse}td,th{border:1px solid #999;padding:2px 6px}.notice{background:#fff3cd;padding:6px}img{width:100%}"
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><meta name='{SCAN_META}' content='{html.escape(scan_of(case), quote=True)}'>"
            f"<title>{html.escape(case.case_id)} report</title><style>{style}</style></head><body>{''.join(sections)}</body></html>")


def scan_of(case: Case) -> str:
    """What a report is the report of: the case's reference scan (its id for a case held in memory only)."""
    return str(Path(case.reference).resolve()) if case.paths else f"in-memory case {case.case_id}"


def reported_scan(path: Path) -> str | None:
    """The scan an existing report names (None: not a report of ours)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            head = fh.read(4096)
    except OSError:
        return None
    found = re.search(rf"<meta name='{SCAN_META}' content='([^']*)'>", head)
    return html.unescape(found.group(1)) if found else None


def write(path: str | Path, case: Case, regions: np.ndarray, readout: Readout, *, overwrite: bool = False, **kwargs) -> Path:
    """Write the report (atomically); returns its path.

    An existing file is replaced when it is this scan's own earlier report (written again after edits) or
    ``overwrite`` is given; another case's report, or any other file, is refused by name: a report path left
    in the dock from the last patient must not silently replace that patient's report.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(path, "is a folder: give the report a file name (.html)")
    if path.exists() and not overwrite:
        scan = reported_scan(path)
        if scan is None:
            raise InputError(path, "already exists and is not a napari-sevnet case report; choose another name (nothing was written)")
        if scan != scan_of(case):
            raise InputError(path, f"already holds the report of another scan ({scan}); choose another name for the report of {case.case_id} (nothing was written)")
    return write_text_atomic(path, render(case, regions, readout, **kwargs))


def _on(date: str | None) -> str:
    return f"on {html.escape(date)}" if date else "on a date the files do not say"
