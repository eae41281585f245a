"""Worklist: segment a folder of cases with uncertainty and say which one to correct first.

Results are cached next to the cases in ``FOLDER/.sevnet-worklist/<model>/<case folder>/``,
or in the user's cache folder when FOLDER is read-only: the usual
``<case>_seg.nii.gz``, ``<case>_report.json``, uncertainty and probability maps
in 8 bits, keyed by the checkpoint's weights, so a second visit costs nothing.
A case whose files are newer than its cached report, or are not the files (or
roles) it was made from, is segmented again. Cases already exported to a
fine-tuning dataset are marked done (the dataset manifest keeps their source
paths and checksums); a case with corrections kept as recovery copies, not yet
exported, says so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from napari_sevnet.errors import Cancelled, InputError
from napari_sevnet.files import private_dir, user_cache_dir
from napari_sevnet.regions import REGIONS

log = logging.getLogger(__name__)

CACHE_DIR = ".sevnet-worklist"
FAST_PASSES = 2  # the scan and its left-right mirror: enough disagreement to rank cases, at a quarter of the 8 flips' cost


@dataclass
class WorkItem:
    case_id: str
    folder: Path
    report: dict | None = None
    error: str | None = None
    cached: bool = False
    done: bool = False
    kept: int = 0  # corrections kept as recovery copies, neither exported nor saved (:mod:`napari_sevnet.recovery`)

    @property
    def score(self) -> float:
        """Uncertainty score (higher: correct first); cases that failed sort last."""
        return self.report["uncertainty"]["score"] if self.report and self.report.get("uncertainty") else -1.0

    @property
    def status(self) -> str:
        """The Status column: error, done, cached or new, a mask of the case's own left unread, and how many warnings the
        result carries (the input was not what the model was trained on: sequences missing, the skull there, ...;
        :attr:`warnings` lists them)."""
        if self.error:
            return "error: " + self.error
        status = "done (exported)" if self.done else ("cached" if self.cached else "new")
        if self.kept:  # work in progress on this case, which opening it brings back
            status += f"; {self.kept} correction(s) not exported"
        if self.mask_not_read:  # a user who counts on their mask opening with the case learns it is not there
            status += "; its mask not read"
        return status + (f"; {len(self.warnings)} warning(s)" if self.warnings else "")

    @property
    def mask_not_read(self) -> str | None:
        return (self.report or {}).get("mask_not_read")

    @property
    def warnings(self) -> list[str]:
        return list((self.report or {}).get("warnings") or [])


def model_cache(folder: Path, checkpoint: str) -> Path:
    """Where the worklist keeps the model's results for ``folder``: beside the cases, or, where the folder cannot be
    written (a read-only hospital share), in the user's cache folder ($SEVNET_CACHE_DIR, else
    $XDG_CACHE_HOME/napari-sevnet), under a key of the folder's path."""
    from napari_sevnet.checkpoint import checkpoint_files
    from napari_sevnet.export import sha256_of

    weights, _ = checkpoint_files(checkpoint)
    model = sha256_of(weights)[:16]
    beside = Path(folder) / CACHE_DIR / model
    try:
        beside.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=beside):
            return beside
    except OSError as exc:
        elsewhere = user_cache_dir() / "worklist" / hashlib.sha256(str(Path(folder).resolve()).encode()).hexdigest()[:16] / model
        log.info("%s: cannot write there (%s); the worklist keeps its results in %s", folder, exc.strerror or exc, elsewhere)
        return private_dir(elsewhere)


def _cached_report(case_id: str, files: dict[str, Path], case_folder: Path, cache: Path, passes: int) -> dict | None:
    """The case's cached report, or None when it must be segmented again: its files changed, or are other files or
    other roles than the result was made from (sequences assigned anew), or the cache lacks what the worklist now keeps."""
    report_path = cache / f"{case_id}_report.json"
    try:
        stamp = report_path.stat().st_mtime
        report = json.loads(report_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    newest_input = max((p.stat().st_mtime for p in case_folder.iterdir() if p.is_file()), default=0)
    # the scans, role by role (a mask is no input of the model, and one that cannot be read is not recorded)
    same_inputs = ({role: p for role, p in (report.get("inputs") or {}).items() if role != "seg"}
                   == {role: str(Path(p).absolute()) for role, p in files.items() if role != "seg"})
    members = (report.get("uncertainty") or {}).get("members")
    kept_probabilities = all(f"prob_{r}" in (report.get("maps") or {}) for r in REGIONS)  # a cache from before they were kept is redone
    return report if newest_input <= stamp and same_inputs and members == passes and kept_probabilities else None


@dataclass
class Exported:
    """What a dataset's manifest says was exported: the source files' paths, and their SHA-256 by source case id."""

    paths: set[str]
    sha256_by_case: dict[str, set[str]]

    def holds(self, case_id: str, files: dict[str, Path]) -> bool:
        """Whether this case was exported: its very files, or (copied elsewhere since) files of that id with the same
        content; never the id alone, which a second visit may share."""
        if any(str(Path(p).resolve()) in self.paths for p in files.values()):
            return True
        from napari_sevnet.export import sha256_of

        known = self.sha256_by_case.get(case_id)
        return bool(known) and any(Path(p).is_file() and sha256_of(p) in known for role, p in files.items() if role != "seg")


def exported_cases(dataset: str | Path | None) -> Exported:
    """The cases of a dataset's manifest (nothing without a dataset)."""
    from napari_sevnet.export import read_manifest

    exported = Exported(set(), {})
    if not dataset:
        return exported
    manifest = read_manifest(dataset) or {"cases": []}
    for record in manifest["cases"]:
        if record.get("withdrawn"):
            continue  # taken out of training: the case is to be done again
        source = record.get("source") or {}
        files = [f for f in (source.get("files") or {}).values() if isinstance(f, dict)]
        exported.paths.update(f["path"] for f in files if f.get("path"))
        exported.sha256_by_case.setdefault(source.get("case_id"), set()).update(f["sha256"] for f in files if f.get("sha256"))
    return exported


def run_worklist(
    folder: str | Path,
    predictor,
    *,
    dataset: str | Path | None = None,
    passes: int = FAST_PASSES,
    cancel: Callable[[], bool] = lambda: False,
    progress: Callable[[str, float, str], None] | None = None,
) -> Iterator[WorkItem]:
    """Yield one WorkItem per case below ``folder`` (cached or freshly predicted with uncertainty).

    ``passes``: mirror passes behind the uncertainty (2 by default: the scan and its
    left-right mirror, a quarter of the 8 flips' time). ``progress(case_id, fraction, message)``
    reports the work inside a case.
    """
    from napari_sevnet import recovery
    from napari_sevnet.assignments import case_files, load_to_segment
    from napari_sevnet.io import find_cases
    from napari_sevnet.report import write_case_outputs

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "worklist folder not found")
    cache = model_cache(folder, predictor.checkpoint)
    exported = exported_cases(dataset)
    kept = recovery.records()  # read once, not once per case
    for case_folder in find_cases([folder]):
        if cancel():
            raise Cancelled("worklist cancelled")
        item = WorkItem(case_id=case_folder.name, folder=case_folder)
        try:
            case_id, files = case_files(case_folder)
            item.case_id = case_id
            item.done = exported.holds(case_id, files)
            item.kept = len(recovery.pending(files, kept=kept))
            case_cache = cache / case_folder.relative_to(folder)  # one folder per case: two visits may share a case id
            item.report = _cached_report(case_id, files, case_folder, case_cache, passes)
            item.cached = item.report is not None
            if item.report is None:
                case, mask_not_read = load_to_segment(case_folder)  # a mask it cannot read does not keep the case off the list: said
                report = (lambda f, m, case_id=case_id: progress(case_id, f, m)) if progress else None
                result = predictor.predict(case.image, spacing=case.spacing, sequences=case.sequences, tta=passes, uncertainty=True, cancel=cancel, progress=report)
                # the probabilities too, so an opened case is corrected with the Correct dock's clicks as a Segment run is
                item.report = write_case_outputs(case, result, predictor, case_cache, convention="brats2021", overwrite=True, probabilities=True, eight_bit_maps=True,
                                                 mask_not_read=mask_not_read)
        except InputError as exc:
            item.error = str(exc)
        yield item
