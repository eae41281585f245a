"""DICOM in and out: a folder of series as the scanner exported it, and the corrected regions as a DICOM SEG.

Reading (:func:`find_series`, :func:`convert`): every series of a folder tree
is found with GDCM (through SimpleITK), its description, patient and number
of slices read, and the sequence proposed from the description's words
(:func:`napari_sevnet.assignments.role_from_name`); the caller confirms or
changes the proposal. Series of different patients, or series that are not
volumes (a localizer), are refused by name. The chosen series are converted
to NIfTI for :func:`napari_sevnet.prepare.prepare_case`.

Writing (:func:`write_seg`): WT, TC and ET as three binary segments of one
DICOM Segmentation aligned to the frames of the reference series (highdicom),
the form 3D Slicer and OHIF read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_sevnet.errors import InputError
from napari_sevnet.io import MODALITIES as SEQUENCES
from napari_sevnet.io import MODALITY_LABELS as SEQUENCE_LABELS
from napari_sevnet.regions import REGIONS

SEGMENT_NAMES = {"WT": "Whole tumour", "TC": "Tumour core", "ET": "Enhancing tumour"}


@dataclass
class Series:
    uid: str
    description: str
    patient_id: str
    files: list[str]
    role: str | None  # the sequence its description suggests
    study_date: str = ""  # the study's date as YYYY-MM-DD (0008,0020), "" where the files do not say it
    study_uid: str = ""  # the study (visit) it belongs to: a case is the series of one study

    @property
    def visit(self) -> dict:
        """Who and when, as the files say (what tells two visits of a patient apart, and their order)."""
        return {k: v for k, v in (("patient_id", self.patient_id), ("study_date", self.study_date)) if v}

    @property
    def label(self) -> str:
        return f"{self.description or self.uid}" + (f", {self.study_date}" if self.study_date else "") + f" ({len(self.files)} images)"


def _tag(reader, key: str) -> str:
    """A DICOM tag of the file ``reader`` read, stripped; empty where the file lacks it."""
    return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""


def _iso_date(value: str) -> str:
    """A DICOM date (YYYYMMDD) as YYYY-MM-DD; "" for one that is not a date."""
    import datetime as dt

    try:
        return dt.datetime.strptime(value, "%Y%m%d").date().isoformat()
    except ValueError:
        return ""


def find_series(folder: str | Path) -> list[Series]:
    """Every DICOM series below ``folder`` in series-number order, with its description, patient and the sequence its
    description suggests."""
    import SimpleITK as sitk

    from napari_sevnet.assignments import role_from_name

    folder = Path(folder)
    found = []
    for directory in [folder, *sorted(p for p in folder.rglob("*") if p.is_dir())]:
        for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(directory)) or ():
            files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(directory), uid)
            reader = sitk.ImageFileReader()
            reader.SetFileName(files[0])
            reader.LoadPrivateTagsOn()
            reader.ReadImageInformation()
            description = _tag(reader, "0008|103e")  # Series Description
            patient = _tag(reader, "0010|0020")  # Patient ID
            date = _tag(reader, "0008|0020") or _tag(reader, "0008|0022")  # Study Date, else Acquisition Date
            number = _tag(reader, "0020|0011")  # Series Number: the order the scanner acquired them in
            found.append((int(number) if number.isdigit() else float("inf"), len(found),
                          Series(uid, description, patient, list(files), role_from_name(description), _iso_date(date), _tag(reader, "0020|000d"))))
    if not found:
        raise InputError(folder, "holds no DICOM series")
    # in the scanner's order, not the folders' names' ('series10' before 'series5'): where two series fit one sequence the
    # first acquired is proposed, as for a NIfTI export named by series number
    return [series for _, _, series in sorted(found, key=lambda entry: entry[:2])]


def choose(series: list[Series], roles: dict[str, str | None] | None = None) -> dict[str, Series]:
    """{sequence: series}: the proposal from the descriptions, changed by ``roles`` ({sequence: series uid, or None /
    "none" for no series: a sequence too damaged to use})."""
    by_uid = {s.uid: s for s in series}
    chosen = {s.role: s for s in reversed(series) if s.role in SEQUENCES}  # the first of a role wins
    by_hand, left_out = {}, set()
    for role, uid in (roles or {}).items():
        if role not in SEQUENCES:
            raise InputError(None, f"{role!r} is not a sequence: choose series for {', '.join(SEQUENCES)}")
        if uid is None or uid.lower() == "none":
            left_out.add(role)
            continue
        if uid not in by_uid:
            raise InputError(None, f"no series {uid!r} for {role}")
        twice = [r for r, s in by_hand.items() if s.uid == uid]
        if twice:
            raise InputError(None, f"series {uid} is chosen for {twice[0]} and {role}: one series is one sequence")
        by_hand[role] = by_uid[uid]
    # a series chosen by hand leaves the role its description proposed
    chosen = {r: s for r, s in chosen.items() if r not in left_out and all(s.uid != h.uid for h in by_hand.values())} | by_hand
    patients = {s.patient_id for s in chosen.values() if s.patient_id}
    if len(patients) > 1:
        raise InputError(None, "the chosen series belong to different patients: " + ", ".join(f"{r} {s.patient_id}" for r, s in chosen.items()))
    studies = {s.study_uid for s in series if s.study_uid}
    if len(studies) > 1 and not roles:  # which visit is meant is the user's to say, not the first series found
        raise InputError(None, f"the series are of {len(studies)} studies (visits): {_studies(series)}; a case is one visit: "
                               "give the folder of one visit, or choose its series by hand")
    if len({s.study_uid for s in chosen.values() if s.study_uid}) > 1:
        raise InputError(None, "the chosen series come from different studies (visits): "
                               + ", ".join(f"{SEQUENCE_LABELS[r]} of {chosen[r].study_date or chosen[r].study_uid}" for r in SEQUENCES if r in chosen)
                               + "; a case is one visit: choose the series of one study")
    if not chosen:
        raise InputError(None, "no series description says T1, T1ce (post-Gd), T2 or FLAIR: choose the series by hand")
    return chosen


def _studies(series: list[Series]) -> str:
    """Each study of ``series`` with its date and number of series, oldest first."""
    by_study: dict[str, list[Series]] = {}
    for s in series:
        by_study.setdefault(s.study_uid, []).append(s)
    return ", ".join(f"{group[0].study_date or 'undated'} ({len(group)} series)" for group in sorted(by_study.values(), key=lambda g: g[0].study_date))


def convert(chosen: dict[str, Series], out_dir: Path) -> dict[str, Path]:
    """Write the chosen series as NIfTI files named by sequence; returns {sequence: file}."""
    import SimpleITK as sitk

    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for role, series in chosen.items():
        _check_slices(series)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(series.files)
        try:
            image = reader.Execute()
        except RuntimeError as exc:
            raise InputError(series.files[0], f"series {series.label} cannot be read as one volume ({str(exc).strip().splitlines()[-1]})") from None
        if min(image.GetSize()) < 3:
            raise InputError(series.files[0], f"series {series.label} holds {min(image.GetSize())} slice(s): a localizer, not a volume")
        written[role] = out_dir / f"{role}.nii.gz"
        sitk.WriteImage(image, str(written[role]))
    return written


def _check_slices(series: Series) -> None:
    """Refuse a series that is not one volume of evenly spaced slices: ITK would read it as one, only warning.

    Several images at one slice position are several volumes in one series (a dual-echo PD/T2, diffusion b-values,
    perfusion times), read interleaved as one; a gap is a missing slice, read as evenly spaced, the anatomy shifted."""
    import SimpleITK as sitk

    positions = []
    for name in series.files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(name)
        reader.ReadImageInformation()
        position, orientation = _tag(reader, "0020|0032"), _tag(reader, "0020|0037")  # "" where absent: not a number either
        try:
            row, column = np.array(orientation.split("\\"), float).reshape(2, 3)
            positions.append(float(np.dot(np.cross(row, column), np.array(position.split("\\"), float))))
        except ValueError:
            return  # the files do not say where their slices lie: ITK's order is all there is
    distinct = np.unique(np.round(positions, 2))
    if len(distinct) < len(positions):
        raise InputError(series.files[0], f"series {series.label} holds {len(positions)} images at {len(distinct)} slice positions: several volumes in one series "
                                          "(echoes of a dual-echo PD/T2, diffusion b-values or perfusion times); export the volume meant as a series of its own, or choose another")
    gaps = np.diff(distinct)
    if len(gaps) > 1 and gaps.max() > 1.5 * gaps.min():
        raise InputError(series.files[0], f"series {series.label} has slices missing: the gaps between slices run from {gaps.min():.2f} to {gaps.max():.2f} mm; "
                                          "export the series again whole, or choose another")


def write_seg(regions_native: np.ndarray, reference: Series, path: str | Path) -> Path:
    """WT/TC/ET (3, i, j, k on the reference series' own grid, as the NIfTI converted from it) as a DICOM SEG of that series."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    datasets = [pydicom.dcmread(f) for f in reference.files]
    # the frames in the order GDCM sorted them (along the slice normal), as the volume was read
    frames = np.transpose(np.asarray(regions_native, bool), (0, 3, 2, 1))  # (region, k, j, i): slices of rows x columns
    if frames.shape[1] != len(datasets) or frames.shape[2:] != (datasets[0].Rows, datasets[0].Columns):
        raise InputError(path, f"the mask ({frames.shape[1:]}) does not fit the reference series ({len(datasets)} x {datasets[0].Rows} x {datasets[0].Columns})")
    pixels = np.moveaxis(frames, 0, -1).astype(np.uint8)  # (frames, rows, columns, segments)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=i + 1, segment_label=SEGMENT_NAMES[r], segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Neoplasm, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
            algorithm_identification=hd.AlgorithmIdentificationSequence(name="napari-sevnet", version="0.1", family=codes.DCM.ArtificialIntelligence),
        )
        for i, r in enumerate(REGIONS)
    ]
    seg = hd.seg.Segmentation(
        source_images=datasets, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=hd.UID(), series_number=900, sop_instance_uid=hd.UID(), instance_number=1, manufacturer="napari-sevnet",
        manufacturer_model_name="SEV-Net", software_versions="0.1", device_serial_number="none",
        series_description="napari-sevnet WT/TC/ET (research use, not for diagnosis)",
    )
    path = Path(path)
    from napari_sevnet.files import atomic_output

    with atomic_output(path, overwrite=False, suffix=".dcm") as tmp:
        seg.save_as(str(tmp))
    return path
