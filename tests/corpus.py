"""A generated corpus of broken inputs: each kind damages a good case (or checkpoint) in one way.

``make_bad_case(root, kind)`` writes a small valid phantom case into ``root/kind``,
breaks it and returns ``(folder, culprit)``: the culprit is the file (or folder)
the error message must name. ``make_bad_checkpoint(root, kind)`` does the same
for checkpoints. The reliability tests feed every kind to the library, the CLI
and the plugin.
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np

from napari_sevnet.phantom import write_phantom

SHAPE = (24, 28, 24)

#: kind -> regex the message must match
CASE_KINDS = {
    "missing_modality": "missing modalities",
    "duplicate_modality": "duplicate t1",
    "zero_bytes": "empty file",
    "truncated_gzip": "truncated or corrupt|not a readable NIfTI",
    "not_nifti": "not a readable NIfTI",
    "text_file": "not a readable NIfTI",
    "two_d": "2 dimensions",
    "four_d": "4 dimensions",
    "five_d": "5 dimensions",
    "absurd_dimensions": "GiB as float32",
    "complex_dtype": "unsupported voxel type",
    "rgb_dtype": "unsupported voxel type",
    "inf_voxels": "voxels are infinite",
    "all_nan_modality": "every voxel is NaN",
    "all_zero_modality": "every voxel is zero",
    "shape_differs": "shape .* differs",
    "spacing_differs": "spacing .* differs",
    "affine_differs": "affine .* differs",
    "singular_affine": "no valid voxel-to-world affine",
    "seg_unknown_labels": r"unknown label values \[7\]",
    "seg_fractional_labels": "non-integer values",
    "seg_shape_differs": "shape .* differs",
    "two_cases_mixed": "several cases",
    "symlink_loop": "symbolic link loop",
    "dangling_symlink": "cannot access",
    "unreadable_permissions": "permission denied",
    "folder_instead_of_file": "is a folder",
    "zero_voxel_size": r"voxel size \(pixdim\)",
    "negative_intensity_scale": "scl_slope is -1",
    "label_3_in_a_2021_named_mask": r"unknown label values \[3\].*--labels",
    "case_over_the_memory_budget": "limit per case",
}

#: accepted, but never silently: kind -> regex of the warning or note the Predictor gives (CLI, report, GUI)
WARNED_KINDS = {
    "intensity_offset": "no zero background",
    "half_mm_voxels": "resampled from 0.50x0.50x0.50 mm",
    "mostly_negative_intensities": "mostly negative",
    "nan_outside_the_field_of_view": r"_t1\.nii\.gz: [\d,]+ voxels \([\d.]+%\) have no value \(NaN",
    "t2_and_flair_swapped": r"T2 and FLAIR look swapped \(CSF",
    "t1_and_t1ce_swapped": r"T1ce and T1 look swapped \(contrast-enhancing",
    "t1_and_t2_swapped": r"T2 and T1 look swapped \(CSF is the brightest on T2 and dark on T1;",
    "t1ce_and_t2_swapped": r"T2 and T1ce look swapped \(CSF is the brightest on T2 and dark on T1ce;",
}

CHECKPOINT_KINDS = {
    "wrong_tensor_shapes": "do not fit the architecture",
    "other_input_channels": "input channels",
    "json_missing_fields": "lacks fields",
    "json_not_json": "unreadable checkpoint description",
    "weights_missing": "not found",
    "weights_truncated": "not a readable safetensors file",
    "pickle_payload": "pickle",
    "unknown_architecture": "unknown architecture",
    "nan_weights": "NaN or infinite values",
    "patch_size_1": "patch_size",
    "patch_size_4096": "patch_size",
    "patch_size_not_a_multiple": "multiples of 8",
    "header_claims_8_gib": "declares .* MiB of tensors",
    "huge_network": "M parameters",
}


def _resave(path: Path, data, affine=None, dtype=None):
    img = nib.load(path)
    out = nib.Nifti1Image(data, img.affine if affine is None else affine)
    if dtype is not None:
        out.set_data_dtype(dtype)
    nib.save(out, path)


def _write_raw(path: Path, header, data) -> Path:
    """Write ``header`` as it is (nibabel would rewrite the fields a test wants broken) and the data, as .nii."""
    path.unlink()
    raw = path.with_name(path.name.replace(".nii.gz", ".nii"))
    header["vox_offset"] = 352
    raw.write_bytes(header.binaryblock + b"\0" * 4 + np.asarray(data).astype(header.get_data_dtype()).tobytes(order="F"))
    return raw


def make_bad_case(root: Path, kind: str) -> tuple[Path, Path]:
    """A phantom case at ``root/kind`` broken as ``kind``; returns (case folder, file the error must name)."""
    folder = write_phantom(root, seed=1, shape=SHAPE, case_id=kind)
    t1, seg = folder / f"{kind}_t1.nii.gz", folder / f"{kind}_seg.nii.gz"
    data = np.asanyarray(nib.load(t1).dataobj)
    affine = nib.load(t1).affine
    if kind == "missing_modality":
        (folder / f"{kind}_flair.nii.gz").unlink()
        return folder, folder
    if kind == "duplicate_modality":
        shutil.copyfile(t1, folder / f"{kind}_t1.nii")
        return folder, folder
    if kind == "two_cases_mixed":
        shutil.copyfile(t1, folder / "another_t1.nii.gz")
        return folder, folder
    if kind == "zero_bytes":
        t1.write_bytes(b"")
    elif kind == "truncated_gzip":
        t1.write_bytes(t1.read_bytes()[:600])
    elif kind == "not_nifti":
        t1.write_bytes(gzip.compress(os.urandom(4000)))
    elif kind == "text_file":
        t1.write_bytes(b"patient notes, not an image\n" * 40)
    elif kind == "two_d":
        _resave(t1, data[:, :, 0])
    elif kind == "four_d":
        _resave(t1, np.stack([data, data], -1))
    elif kind == "five_d":
        _resave(t1, np.stack([data, data], -1)[..., None, :].repeat(2, axis=3))
    elif kind == "absurd_dimensions":
        header = nib.Nifti1Header()
        header.set_data_shape((30000, 30000, 30000))
        header.set_data_dtype(np.int16)
        header.set_qform(affine, 1)
        header.set_sform(affine, 1)
        t1.unlink()
        t1 = folder / f"{kind}_t1.nii"
        t1.write_bytes(header.binaryblock + b"\0" * 4 + b"\0" * 1000)
    elif kind == "complex_dtype":
        _resave(t1, data.astype(np.complex64))
    elif kind == "rgb_dtype":
        rgb = np.zeros(data.shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
        _resave(t1, rgb)
    elif kind == "inf_voxels":
        bad = data.astype(np.float32)
        bad[3, 4, 5] = np.inf
        _resave(t1, bad)
    elif kind == "all_nan_modality":
        _resave(t1, np.full(data.shape, np.nan, np.float32))
    elif kind == "all_zero_modality":
        _resave(t1, np.zeros_like(data))
    elif kind == "shape_differs":
        _resave(t1, data[:-1])
    elif kind == "spacing_differs":
        scaled = affine.copy()
        scaled[:3, 0] *= 1.5
        _resave(t1, data, scaled)
    elif kind == "affine_differs":
        moved = affine.copy()
        moved[:3, 3] += 7.0
        _resave(t1, data, moved)
    elif kind == "singular_affine":  # nibabel refuses to save one, so write the header fields directly
        header = nib.load(t1).header.copy()
        header.set_qform(None, code=0)
        flat = affine.copy()
        flat[:3, 2] = 0
        header["srow_x"], header["srow_y"], header["srow_z"] = flat[0], flat[1], flat[2]
        header["sform_code"], header["vox_offset"] = 1, 352
        t1.unlink()
        t1 = folder / f"{kind}_t1.nii"
        t1.write_bytes(header.binaryblock + b"\0" * 4 + data.astype(header.get_data_dtype()).tobytes(order="F"))
    elif kind == "seg_unknown_labels":
        labels = np.asanyarray(nib.load(seg).dataobj).copy()
        labels[0, 0, 0] = 7
        _resave(seg, labels)
        return folder, seg
    elif kind == "seg_fractional_labels":
        labels = np.asanyarray(nib.load(seg).dataobj).astype(np.float32)
        labels[labels == 2] = 1.5
        _resave(seg, labels, dtype=np.float32)
        return folder, seg
    elif kind == "seg_shape_differs":
        _resave(seg, np.asanyarray(nib.load(seg).dataobj)[1:])
        return folder, seg
    elif kind == "symlink_loop":
        t1.unlink()
        t1.symlink_to(t1)
    elif kind == "dangling_symlink":
        t1.unlink()
        t1.symlink_to(folder / "gone.nii.gz")
    elif kind == "unreadable_permissions":
        t1.chmod(0)
    elif kind == "folder_instead_of_file":
        t1.unlink()
        t1.mkdir()
    elif kind == "zero_voxel_size":  # a qform-only header with pixdim 0: nibabel would read 1 mm
        header = nib.load(t1).header.copy()
        header.set_sform(None, code=0)
        header["pixdim"][1] = 0.0
        t1 = _write_raw(t1, header, data)
    elif kind == "negative_intensity_scale":
        header = nib.load(t1).header.copy()
        header["scl_slope"], header["scl_inter"] = -1.0, 0.0
        t1 = _write_raw(t1, header, data)
    elif kind == "label_3_in_a_2021_named_mask":  # a BraTS 2023 mask saved under a 2021 name
        labels = np.asanyarray(nib.load(seg).dataobj).copy()
        labels[labels == 4] = 3
        _resave(seg, labels)
        return folder, seg
    elif kind == "case_over_the_memory_budget":  # four headers within the per-volume limit, 8.9 GiB together
        for name in ("t1", "t1ce", "t2", "flair"):
            (folder / f"{kind}_{name}.nii.gz").unlink()
            header = nib.Nifti1Header()
            header.set_data_shape((1000, 1000, 600))
            header.set_data_dtype(np.uint8)
            header.set_qform(affine, 1)
            header.set_sform(affine, 1)
            (folder / f"{kind}_{name}.nii").write_bytes(header.binaryblock + b"\0" * 4 + b"\0" * 1000)
        return folder, folder
    else:
        raise KeyError(kind)
    return folder, t1


def make_warned_case(root: Path, kind: str) -> Path:
    """A phantom case at ``root/kind`` that loads but is not what the model was trained on."""
    folder = write_phantom(root, seed=1, shape=SHAPE, case_id=kind)
    t1 = folder / f"{kind}_t1.nii.gz"
    if kind == "intensity_offset":  # scl_inter = 100: the background is no longer zero
        img = nib.load(t1)
        header = img.header.copy()
        header["scl_slope"], header["scl_inter"] = 1.0, 100.0
        _write_raw(t1, header, np.asanyarray(img.dataobj))
    elif kind == "mostly_negative_intensities":
        img = nib.load(t1)
        _resave(t1, -np.asanyarray(img.dataobj).astype(np.float32))
    elif kind == "nan_outside_the_field_of_view":  # as SPM reslices: no value where the original field of view did not reach
        data = np.asanyarray(nib.load(t1).dataobj).astype(np.float32)
        data[:3] = np.nan
        _resave(t1, data)
    elif kind == "half_mm_voxels":
        for path in folder.glob("*.nii.gz"):
            img = nib.load(path)
            nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), np.diag([0.5, 0.5, 0.5, 1.0]) @ img.affine), path)
    elif kind.endswith("_swapped"):  # two files each under the other's name: what a hand assignment or a clinic's export mixes up
        x, y = kind.removesuffix("_swapped").split("_and_")
        (folder / f"{kind}_{x}.nii.gz").rename(folder / "swapping")
        (folder / f"{kind}_{y}.nii.gz").rename(folder / f"{kind}_{x}.nii.gz")
        (folder / "swapping").rename(folder / f"{kind}_{y}.nii.gz")
    else:
        raise KeyError(kind)
    return folder


class _CreatesAFile:
    """Unpickling this runs ``open(path, 'w')``: the payload a checkpoint loader must never execute."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def make_bad_checkpoint(root: Path, kind: str, good: Path) -> tuple[Path, Path]:
    """A copy of checkpoint ``good`` (its .json) broken as ``kind``; returns (path to give, file the error must name)."""
    from safetensors.torch import load_file, save_file

    root.mkdir(parents=True, exist_ok=True)
    meta, weights = root / f"{kind}.json", root / f"{kind}.safetensors"
    shutil.copyfile(good.with_suffix(".json"), meta)
    shutil.copyfile(good.with_suffix(".safetensors"), weights)
    info = json.loads(meta.read_text(encoding="utf-8"))
    if kind == "wrong_tensor_shapes":
        state = load_file(str(weights))
        name = next(k for k, v in state.items() if v.ndim == 5)
        state[name] = state[name][:, :-1].contiguous()
        save_file(state, str(weights))
        return meta, weights
    if kind == "other_input_channels":
        info["modalities"] = ["t1", "t1ce", "flair"]
    elif kind == "json_missing_fields":
        del info["architecture"], info["regions"]
    elif kind == "json_not_json":
        meta.write_text("{architecture: sevnet", encoding="utf-8")
        return meta, meta
    elif kind == "weights_missing":
        weights.unlink()
        return meta, weights
    elif kind == "weights_truncated":
        weights.write_bytes(weights.read_bytes()[:100])
        return meta, weights
    elif kind == "pickle_payload":
        target = root / "pwned.txt"
        path = root / f"{kind}.pt"
        path.write_bytes(pickle.dumps({"state_dict": _CreatesAFile(str(target))}))
        return path, path
    elif kind == "unknown_architecture":
        info["architecture"] = {"name": "transformer9000"}
    elif kind == "nan_weights":
        state = load_file(str(weights))
        name = next(k for k, v in state.items() if v.ndim == 5)
        state[name][0, 0, 0, 0, 0] = float("nan")
        save_file(state, str(weights))
        return meta, weights
    elif kind in ("patch_size_1", "patch_size_4096", "patch_size_not_a_multiple"):
        info["preprocessing"]["patch_size"] = {"patch_size_1": [1, 1, 1], "patch_size_4096": [4096, 4096, 4096], "patch_size_not_a_multiple": [36, 36, 36]}[kind]
    elif kind == "header_claims_8_gib":  # a valid safetensors header that promises far more data than the file has
        header = json.dumps({"w": {"dtype": "F32", "shape": [2**31], "data_offsets": [0, 2**33]}}).encode()
        weights.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 64)
        return meta, weights
    elif kind == "huge_network":  # 2.5 KB of JSON asking for billions of parameters
        info["architecture"] = {"name": "sevnet", "config": {"channels": [512, 1024, 2048, 4096, 8192], "encoder_convs": [3, 3, 3, 3, 3], "kernel_size": 5}}
    else:
        raise KeyError(kind)
    meta.write_text(json.dumps(info), encoding="utf-8")
    return meta, meta
