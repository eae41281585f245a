"""Raw clinical scans to a mask on the clinician's own grid: the real raw patient, and BraTS cases made raw.

    python -m benchmarks.raw_scans [--cases N] [-o OUT.json]

1. ``TCIA-RAW-FG-6692/native`` (four clinical series, 0.9 x 0.9 x 5.5 mm, with the
   skull): ``sevnet-predict --prepare`` as a user runs it; the five-algorithm
   consensus of its BraTS-space version is brought onto the native T1ce grid
   (the prepared T1ce registered rigidly to the BraTS-space T1ce, both
   skull-stripped) and compared with the native-grid result: Dice per region,
   WT volume on both grids, the time of each step; once as a user runs it
   (N4 bias-field correction on) and once with ``--no-bias-field``. The shipped
   default segments it (no model here trained on this patient).
2. Robustness: held-out BraTS cases made "raw" (every series but T1ce moved by
   a random rigid motion of up to 6 degrees and 5 mm, each on its own
   anisotropic grid), prepared without skull stripping (they have none),
   segmented, mapped back to the reference's grid and then to the original one:
   Dice against the expert mask, beside the model's Dice on the original case;
   segmented by the held-out model (the shipped weights trained on these cases).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

REGIONS = ("WT", "TC", "ET")


def _sitk():
    import SimpleITK as sitk

    return sitk


def make_raw(folder: Path, out: Path, seed: int) -> Path:
    """As tests/test_prepare.make_raw: each series but T1ce moved rigidly and on an anisotropic grid."""
    sitk = _sitk()
    out.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    names = {"t1": "T1_AX_SE", "t1ce": "T1_AX_POST_GAD", "t2": "AX_T2_TSE", "flair": "FLAIR_AX"}
    for i, (m, name) in enumerate(names.items()):
        image = sitk.ReadImage(str(next(folder.glob(f"*_{m}.nii.gz"))), sitk.sitkFloat32)
        thick = [0.9, 0.9, 3.0] if i % 2 else [0.8, 0.8, 4.0]
        grid = sitk.Image([int(n * s / t) for n, s, t in zip(image.GetSize(), image.GetSpacing(), thick)], sitk.sitkFloat32)
        grid.SetSpacing(thick)
        grid.SetDirection(image.GetDirection())
        grid.SetOrigin(image.GetOrigin())
        motion = sitk.Euler3DTransform()
        if m != "t1ce":
            motion.SetRotation(*np.deg2rad(rng.uniform(-6, 6, 3)))
            motion.SetTranslation(tuple(float(v) for v in rng.uniform(-5, 5, 3)))
        motion.SetCenter(image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()]))
        sitk.WriteImage(sitk.Resample(image, grid, motion, sitk.sitkLinear, 0.0), str(out / f"{name}.nii.gz"))
    return out


def real_raw(data: Path, work: Path, bias_field: bool = True) -> dict:
    import subprocess
    import sys

    import nibabel as nib

    from napari_sevnet.metrics import dice
    from napari_sevnet.prepare import register_rigid

    sitk = _sitk()
    source = data / "TCIA-RAW-FG-6692"
    t = time.perf_counter()
    out = work / ("raw_out" if bias_field else "raw_out_no_n4")
    command = [str(Path(sys.executable).with_name("sevnet-predict")), "--prepare", str(source / "native"), "-o", str(out)] + ([] if bias_field else ["--no-bias-field"])
    subprocess.run(command, check=True, capture_output=True)
    total = time.perf_counter() - t
    report = json.loads((out / "native_report.json").read_text(encoding="utf-8"))
    prepared_t1ce = sitk.ReadImage(str(Path(report["prepared_case"]) / "native_t1ce.nii.gz"), sitk.sitkFloat32)
    brats_t1ce = sitk.ReadImage(str(source / "brats_space" / "TCGA-FG-6692_t1ce.nii.gz"), sitk.sitkFloat32)
    to_brats = register_rigid(prepared_t1ce, brats_t1ce)  # prepared point -> BraTS-space point
    native = sitk.ReadImage(report["native_reference"])
    seg = sitk.ReadImage(str(source / "brats_space" / "TCGA-FG-6692_seg.nii.gz"))
    result = np.asarray(nib.load(report["segmentation"]).dataobj)
    scores = {}
    for r, labels in (("WT", (1, 2, 4)), ("TC", (1, 4)), ("ET", (4,))):
        region = sitk.Cast(sum((seg == v for v in labels[1:]), seg == labels[0]), sitk.sitkFloat32)
        on_prepared = sitk.Resample(region, prepared_t1ce, to_brats, sitk.sitkLinear, 0.0)
        on_native = sitk.GetArrayFromImage(sitk.Resample(on_prepared, native, sitk.Euler3DTransform(), sitk.sitkLinear, 0.0)) > 0.5
        mine = np.isin(result, labels)  # the native mask is written with BraTS 2021 labels
        scores[r] = dice(mine, np.transpose(on_native, (2, 1, 0)))
    return {"dice_vs_consensus_on_native_grid": scores, "wt_ml_native": report["volumes_ml_native"]["WT"], "wt_ml_prepared": report["volumes_ml_prepared"]["WT"],
            "prepare_timings_s": report["prepare_timings_s"], "total_s": total, "brain_ml": report["brain_ml"]}


def robustness(data: Path, work: Path, n_cases: int) -> dict:
    from benchmarks.real_heldout import SPLIT, find_cases, unseen_checkpoint
    from napari_sevnet.inference import Predictor
    from napari_sevnet.io import load_case
    from napari_sevnet.metrics import dice
    from napari_sevnet.prepare import prepare_case, to_native

    sitk = _sitk()
    cases = find_cases(json.loads(SPLIT.read_text(encoding="utf-8"))["held_out"], data)
    predictor = Predictor(unseen_checkpoint(None, cases), "cpu")
    rows = {}
    for seed, (case_id, folder) in enumerate(list(cases.items())[:n_cases]):
        original = load_case(folder)
        direct = predictor.predict(original.image, spacing=original.spacing)
        raw = make_raw(folder, work / "raw" / case_id, seed)
        prepared = prepare_case(raw, work / "prepared", strip=False, bias_field=False)
        case = load_case(prepared.folder)
        result = predictor.predict(case.image, spacing=case.spacing)
        t1ce = sitk.ReadImage(str(next(folder.glob("*_t1ce.nii.gz"))))
        row = {}
        for i, r in enumerate(REGIONS):
            on_native = to_native(result.regions[i].astype(np.float32), case.grid, prepared.folder, threshold=None)  # the mask the user gets
            on_original = sitk.GetArrayFromImage(sitk.Resample(on_native, t1ce, sitk.Euler3DTransform(), sitk.sitkLinear, 0.0)) > 0.5
            back = original.grid.to_canonical(np.transpose(on_original, (2, 1, 0)))
            row[r] = {"round_trip": dice(back, original.regions[i]), "direct": dice(direct.regions[i], original.regions[i])}
        rows[case_id] = row
        print(f"  {case_id}: " + "  ".join(f"{r} {row[r]['round_trip']:.3f} (direct {row[r]['direct']:.3f})" for r in REGIONS), flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.raw_scans", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=6, help="held-out cases made raw for the robustness table")
    parser.add_argument("-o", "--output", type=Path)
    args = parser.parse_args(argv)
    from benchmarks.real_heldout import DATA

    if not (DATA / "TCIA-RAW-FG-6692" / "native").is_dir():
        raise SystemExit(f"the raw clinical series are not here: no {DATA / 'TCIA-RAW-FG-6692' / 'native'} (set SEVNET_REAL_DATA to the folder holding TCIA-RAW-FG-6692/)")
    work = Path(tempfile.mkdtemp(prefix="sevnet-raw-"))
    out = {"date": time.strftime("%Y-%m-%d %H:%M"), "host": platform.node(), "real_raw": real_raw(DATA, work), "real_raw_without_n4": real_raw(DATA, work, bias_field=False),
           "robustness": robustness(DATA, work, args.cases)}
    raw, plain = out["real_raw"], out["real_raw_without_n4"]
    lines = ["| TCIA-RAW-FG-6692 (native grid) | WT | TC | ET |", "|---|---|---|---|",
             "| Dice vs consensus (sevnet-predict --prepare) | " + " | ".join(f"{raw['dice_vs_consensus_on_native_grid'][r]:.3f}" for r in REGIONS) + " |",
             "| same with --no-bias-field | " + " | ".join(f"{plain['dice_vs_consensus_on_native_grid'][r]:.3f}" for r in REGIONS) + " |", "",
             f"WT {raw['wt_ml_native']:.1f} mL on the native grid, {raw['wt_ml_prepared']:.1f} mL prepared; brain {raw['brain_ml']:.0f} mL; "
             + ", ".join(f"{k[:-2].replace('_', ' ')} {v:.1f} s" for k, v in raw["prepare_timings_s"].items()) + f"; whole command {raw['total_s']:.0f} s", "",
             "| case made raw | " + " | ".join(f"{r} round trip (direct)" for r in REGIONS) + " |", "|---|---|---|---|"]
    for case_id, row in out["robustness"].items():
        lines.append(f"| {case_id} | " + " | ".join(f"{row[r]['round_trip']:.3f} ({row[r]['direct']:.3f})" for r in REGIONS) + " |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.output:
        from napari_sevnet.files import write_text_atomic

        write_text_atomic(args.output, json.dumps(out, indent=1) + "\n")
        write_text_atomic(args.output.with_suffix(".md"), table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
