"""Command lines: ``sevnet-predict`` (segment cases to NIfTI + report), ``sevnet-evaluate`` (BraTS metrics),
``sevnet-export`` (a corrected case into a fine-tuning dataset), ``sevnet-recovery`` (the recovery copies of
corrections), ``sevnet-measure`` (lesion table, RANO, change since a visit) and ``sevnet-prepare`` (raw series to a
case). ``sevnet-train`` is :mod:`training.cli`.

A bad case gets one line on stderr naming the file and the problem; a batch
goes on, and the exit code is 1 if any case failed.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np

from napari_sevnet.errors import InputError
from napari_sevnet.regions import NECROSIS_ALONE, necrosis_alone

log = logging.getLogger("napari_sevnet")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("nibabel").setLevel(logging.ERROR)  # its header repairs are ours to report, as one error line


class _Once(argparse.Action):
    """An option that may be given once: a second -o would silently win (a case folder named '-oX' reads as '-o X')."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, self.dest, None) is not None:
            parser.error(f"{option_string} given twice ({getattr(namespace, self.dest)} and {values}); a case folder whose name starts with '-' goes after --")
        setattr(namespace, self.dest, values)


def predict_main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="sevnet-predict",
        description="Segment brain-tumour cases with SEV-Net; writes <case>_seg.nii.gz and <case>_report.json. "
        "Under torchrun (torchrun --nproc_per_node N -m napari_sevnet.cli ...) each process takes its share of the cases.",
    )
    parser.add_argument("inputs", nargs="+", help="case folders, files of cases, or folders of case folders (names starting with '-' after --)")
    parser.add_argument("-o", "--output", required=True, type=Path, action=_Once, help="output folder (never an input case's own folder)")
    parser.add_argument("--checkpoint", help="checkpoint (.json or .safetensors); default: the bundled default model")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--tta", action="store_true", help="average the 8 mirror flips (about 6x slower; what it gained on the held-out real cases: README, benchmarks/results/real-heldout-tta.md)")
    parser.add_argument("--labels", choices=["2021", "2023"], help="label convention of the written masks (2021: <case>_seg, labels 1/2/4; 2023: <case>-seg, labels 1/2/3); default: the case's own (a case named as in BraTS 2023 gets 2023, any other 2021)")
    again = parser.add_mutually_exclusive_group()
    again.add_argument("--overwrite", action="store_true", help="replace existing outputs of the same cases (their old maps go too)")
    again.add_argument("--skip-existing", action="store_true", help="pass over a case whose result a finished run with the same model, inputs and TTA left (a batch run again after a crash or a stop); a result of other settings is still an error")
    parser.add_argument("--allow-missing", action="store_true", help="segment cases that lack one to three sequences (with a model trained for it, as the default is)")
    parser.add_argument("--prepare", action="store_true", help="raw clinical series (own grids, with the skull): co-register, 1 mm, skull-strip first; the mask is written on the reference series' own grid")
    parser.add_argument("--reference", default="t1ce", choices=["t1", "t1ce", "t2", "flair"], help="with --prepare: the series the others are registered to (default t1ce)")
    parser.add_argument("--no-bias-field", action="store_true", help="with --prepare: skip N4 bias-field correction")
    parser.add_argument("--probabilities", action="store_true", help="also write <case>_prob_{WT,TC,ET}.nii.gz")
    parser.add_argument("--float32-maps", action="store_true", help="write the probability and uncertainty maps as float32 (default: 8 bits, steps of 1/255 that the NIfTI scale factor turns back into values: about 1 MB a map instead of 12 MB)")
    parser.add_argument("--uncertainty", action="store_true", help="also write <case>_uncertainty_{WT,TC,ET}.nii.gz (entropy, bits) and a case score in the report; implies --tta")
    parser.add_argument("--mc-samples", type=int, default=0, metavar="N", help="MC-dropout samples per flip (models trained with dropout only)")
    parser.add_argument("--min-et-voxels", type=int, metavar="N", help="BraTS post-processing: an ET of fewer voxels is relabelled necrosis (the BraTS 2021 winner used 200); off by default")
    parser.add_argument("--min-component-ml", type=float, metavar="ML", help="remove whole-tumour pieces under ML millilitres and no core or enhancing piece (default: what the model declares per region, README \"Post-processing\"); 0 keeps every piece")
    parser.add_argument("--threshold", type=float, metavar="P", help="one probability threshold for all three regions (default: the model's own per region, README \"Post-processing\")")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.skip_existing and args.prepare:
        parser.error("--skip-existing is for cases segmented as they are; with --prepare each run prepares the raw series again")
    _setup_logging(args.verbose)

    from filelock import FileLock
    from tqdm import tqdm

    from napari_sevnet.assignments import load_to_segment
    from napari_sevnet.inference import Predictor, enable_huge_pages
    from napari_sevnet.io import find_cases
    from napari_sevnet.regions import REGIONS, convention_name
    from napari_sevnet.report import check_outputs_free, finished_before, write_case_outputs

    enable_huge_pages()
    cases = [Path(p) for p in args.inputs] if args.prepare else find_cases(args.inputs)
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    device = args.device
    try:
        cases = _check_output_folder(args.output, cases, allow_missing=args.allow_missing)
        if world > 1:  # under torchrun: this rank's share of the cases, on its own GPU when there are GPUs
            cases = cases[rank::world]
            if device != "cpu" and torch_cuda_available():
                device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
        predictor = Predictor(
            args.checkpoint, device, tta=args.tta or args.uncertainty, uncertainty=args.uncertainty,
            mc_samples=args.mc_samples, min_et_voxels=args.min_et_voxels, min_component_ml=args.min_component_ml, threshold=args.threshold,
        )
    except (InputError, RuntimeError, ValueError) as exc:
        print(f"sevnet-predict: error: {exc}", file=sys.stderr)
        return 2
    args.output.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(args.output / ".sevnet-predict.lock"))  # two runs into one folder claim each case's outputs in turn
    failed = skipped = 0
    for path in tqdm(cases, desc="cases", unit="case", disable=None):
        try:
            if args.prepare:
                with lock:
                    _predict_prepared(path, args, predictor, convention_name(args.labels or "2021"))
                continue
            case, left_out = load_to_segment(path, allow_missing=args.allow_missing)
            if left_out:
                tqdm.write(f"sevnet-predict: warning: {case.case_id}: {left_out}", file=sys.stderr)
            convention = convention_name(args.labels) if args.labels else "brats2023" if case.layout == "brats2023" else "brats2021"
            if args.skip_existing and finished_before(case, args.output, convention, checkpoint=predictor.checkpoint, tta=args.tta or args.uncertainty,
                                                      maps=[f"{kind}_{r}" for kind, asked in (("prob", args.probabilities), ("uncertainty", args.uncertainty)) if asked for r in REGIONS]):
                skipped += 1
                continue
            check_outputs_free(case.case_id, args.output, convention, overwrite=args.overwrite)
            result = predictor.predict(case.image, spacing=case.spacing, sequences=case.sequences)
            _say(case.case_id, result.notes, [*case.warnings, *result.warnings])
            with lock:
                report = write_case_outputs(case, result, predictor, args.output, convention=convention, overwrite=args.overwrite, probabilities=args.probabilities,
                                            eight_bit_maps=not args.float32_maps, native=True, mask_not_read=left_out)
            if report.get("segmentation_native"):
                tqdm.write(f"sevnet-predict: note: {case.case_id}: a prepared case: its mask also on the native grid, {report['segmentation_native']}", file=sys.stderr)
            log.debug("%s: %s", case.case_id, report["volumes_ml"])
        except InputError as exc:
            failed += 1
            tqdm.write(f"sevnet-predict: error: {exc}", file=sys.stderr)
    if skipped:
        print(f"sevnet-predict: {skipped} of {len(cases)} cases were done already (--skip-existing) and kept", file=sys.stderr)
    if failed:
        print(f"sevnet-predict: {failed} of {len(cases)} cases failed", file=sys.stderr)
    return 1 if failed else 0


def _say(case_id: str, notes: list[str], warnings: list[str]) -> None:
    """A case's notes and warnings on stderr, one line each, between the progress bar's updates."""
    from tqdm import tqdm

    for kind, lines in (("note", notes), ("warning", warnings)):
        for line in lines:
            tqdm.write(f"sevnet-predict: {kind}: {case_id}: {line}", file=sys.stderr)


def _predict_prepared(path: Path, args, predictor, convention: str) -> None:
    """Prepare a raw case, segment it, write the mask on the reference's native grid and in the prepared space."""
    import nibabel as nib

    from napari_sevnet.io import load_case, write_mask
    from napari_sevnet.prepare import prepare_case, write_native_mask
    from napari_sevnet.regions import volumes_ml

    prepared = prepare_case(path, args.output / "prepared", reference=args.reference, bias_field=not args.no_bias_field)
    case = load_case(prepared.folder, allow_missing=True)
    result = predictor.predict(case.image, spacing=case.spacing, sequences=case.sequences)
    warnings = [*prepared.warnings, *result.warnings]  # reading the raw series', then the model's
    _say(case.case_id, result.notes, warnings)
    seg = args.output / (f"{case.case_id}-seg.nii.gz" if convention == "brats2023" else f"{case.case_id}_seg.nii.gz")
    if seg.exists() and not args.overwrite:
        raise InputError(seg, "already exists; pass --overwrite to replace it")
    _, regions = write_native_mask(result.regions, case.grid, prepared.folder, seg, convention, overwrite=args.overwrite)  # the mask as cleaned
    in_prepared = write_mask(result.regions, case.grid, args.output / f"{case.case_id}_prepared_seg.nii.gz", convention, overwrite=args.overwrite)
    dicom_seg = None
    if json.loads((prepared.folder / "prepare.json").read_text(encoding="utf-8")).get("dicom"):  # DICOM in: a DICOM SEG of the reference series out
        from napari_sevnet import dicom

        reference_series = dicom.choose(dicom.find_series(path))[prepared.reference]
        dicom_seg = str(dicom.write_seg(regions, reference_series, args.output / f"{case.case_id}_seg.dcm"))
    native_spacing = tuple(float(v) for v in nib.load(str(seg)).header.get_zooms()[:3])
    report = {"case": case.case_id, "segmentation": str(seg), "segmentation_prepared": str(in_prepared), "reference": prepared.reference,
              "native_reference": str(prepared.native_reference), "prepared_case": str(prepared.folder), "prepare_timings_s": prepared.timings_s,
              "brain_ml": prepared.brain_ml, "volumes_ml_prepared": volumes_ml(result.regions, case.spacing),
              "volumes_ml_native": {r: float(regions[i].sum()) * float(np.prod(native_spacing)) / 1000 for i, r in enumerate(("WT", "TC", "ET"))},
              "sequences": list(result.sequences), "checkpoint": result.checkpoint, "warnings": warnings, "notes": result.notes, "dicom_seg": dicom_seg}
    _write_json(args.output / f"{case.case_id}_report.json", report)


def torch_cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _check_output_folder(output: Path, cases: list[Path], *, allow_missing: bool = False) -> list[Path]:
    """Refuse an output that is a file or an input case's own folder, and two inputs with one case id (as they will be
    read); returns the cases, each once (a case named twice, as its folder and one of its files say, is segmented once)."""
    from napari_sevnet.assignments import case_files

    if output.exists() and not output.is_dir():
        raise InputError(output, "is a file: -o is the folder the outputs go into")
    seen: dict[str, Path] = {}
    once: list[Path] = []
    for path in cases:
        try:
            case_id, files = case_files(path, allow_missing=allow_missing)  # as the case will be read (an Assign dock choice too)
        except InputError:
            once.append(path)
            continue  # reported, naming its file, when the case is read
        folder = next(iter(files.values())).parent.resolve()
        if output.resolve() == folder:
            raise InputError(output, f"is the folder of the input case {case_id}: outputs never go into an input case's folder (a <case>_seg written there replaces or later passes for its reference mask); choose another -o")
        if case_id in seen and seen[case_id] != folder:
            raise InputError(path, f"has the case id {case_id!r} of another input, {seen[case_id]}: their outputs would collide; segment them into separate -o folders")
        if case_id not in seen:
            once.append(path)
        seen[case_id] = folder
    return once


def _write_json(path: Path, data) -> None:
    from napari_sevnet.files import write_text_atomic

    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


WHOLE_TUMOUR_HINT = "if the references are whole-tumour masks painted with one label, sevnet-evaluate --whole-tumour-references scores the whole tumour alone"


def evaluate_main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="sevnet-evaluate", description="BraTS metrics of predicted masks against reference masks.")
    parser.add_argument("pred_dir", type=Path, help="folder of <case>_seg.nii.gz predictions")
    parser.add_argument("gt_dir", type=Path, help="folder of reference masks or of case folders holding <case>_seg.nii.gz")
    parser.add_argument("-o", "--output", type=Path, help="where to write metrics.csv and metrics.json (default: pred_dir)")
    parser.add_argument("--lesion-wise", action="store_true", help="add the BraTS 2023 lesion-wise Dice and HD95 (gliomas: dilation 3, lesions over 50 mm^3)")
    parser.add_argument("--labels", choices=["2021", "2023", "msd"], help="label convention of the predictions (default: what each file says; a <case>.nii.gz submission file takes its reference's)")
    parser.add_argument("--whole-tumour-references", action="store_true",
                        help="the references are whole-tumour masks (every non-zero voxel is tumour: a FLAIR-abnormality mask painted with one label, "
                             "as many clinics and public sets have): only WT is scored")
    args = parser.parse_args(argv)
    _setup_logging(False)

    from napari_sevnet.io import find_segmentations, find_submissions, read_labels, read_whole_tumour, role_of
    from napari_sevnet.metrics import case_lesion_metrics, case_metrics, mean_metrics
    from napari_sevnet.regions import REGIONS

    for folder, what in ((args.pred_dir, "the predictions' folder"), (args.gt_dir, "the references' folder")):
        if not folder.is_dir():
            print(f"sevnet-evaluate: error: {folder}: {'is a file, not ' + what if folder.exists() else 'no such folder (' + what + ')'}", file=sys.stderr)
            return 2
    if args.output is not None and args.output.exists() and not args.output.is_dir():  # said before minutes of scoring, not after
        print(f"sevnet-evaluate: error: {args.output}: is a file: -o is the folder metrics.csv and metrics.json go into", file=sys.stderr)
        return 2

    found = find_segmentations(args.pred_dir)
    refs = find_segmentations(args.gt_dir, exclude=frozenset(p.resolve() for paths in found.values() for p in paths))
    for case_id, path in find_submissions(args.pred_dir, set(refs)).items():  # the BraTS challenges' layout: <case>.nii.gz
        found.setdefault(case_id, []).append(path)
    twice = {case_id: paths for case_id, paths in found.items() if len(paths) > 1}
    if not found or twice:
        problem = ("; ".join(f"case {c} has {len(p)} predictions: {', '.join(map(str, p))}" for c, p in twice.items())
                   or "no <case>_seg.nii.gz predictions found, nor <case>.nii.gz files named by a reference case's id")
        print(f"sevnet-evaluate: error: {args.pred_dir}: {problem}", file=sys.stderr)
        return 2
    preds = {case_id: paths[0] for case_id, paths in found.items()}
    unscored = sorted(set(refs) - set(preds))
    if unscored:
        print(f"sevnet-evaluate: note: {len(unscored)} reference case(s) under {args.gt_dir} have no prediction and are not in the mean: {', '.join(unscored)}", file=sys.stderr)
    rows, per_case, failed = [], [], 0
    scored = ("WT",) if args.whole_tumour_references else REGIONS
    for case_id, pred_path in preds.items():
        candidates = refs.get(case_id, [])
        try:
            if not candidates:
                raise InputError(args.gt_dir, f"no reference mask for case {case_id}")
            if len(candidates) > 1:
                raise InputError(args.gt_dir, f"case {case_id} has {len(candidates)} reference masks: {', '.join(map(str, candidates))}; keep one, or name a folder that holds one")
            ref = candidates[0]
            pred, pgrid = read_labels(pred_path, args.labels, default=(role_of(ref.name) or (None, None, None))[2])  # a bare seg.nii.gz: as its values say
            if args.whole_tumour_references:  # TC and ET are not drawn in such a reference: scored as empty they would read as misses
                whole, tgrid = read_whole_tumour(ref)
                pred, truth = pred[:1], whole[None]
            else:
                try:
                    truth, tgrid = read_labels(ref)
                except InputError as exc:
                    if "label" in exc.problem:  # one label (0/1, 0/255): most likely a whole-tumour mask
                        raise InputError(ref, f"{exc.problem}; {WHOLE_TUMOUR_HINT}") from None
                    raise
                if necrosis_alone(truth):
                    print(f"sevnet-evaluate: warning: {ref}: {NECROSIS_ALONE}; {WHOLE_TUMOUR_HINT}", file=sys.stderr)
            if pred.shape != truth.shape or not np.allclose(pgrid.affine, tgrid.affine, atol=1e-3):
                raise InputError(pred_path, f"grid differs from the reference {ref}")
            m = case_metrics(pred, truth, tgrid.spacing)
            if args.lesion_wise:
                for r, extra in case_lesion_metrics(pred, truth, tgrid.spacing).items():
                    m[r].update(extra)
        except InputError as exc:
            failed += 1
            print(f"sevnet-evaluate: error: {exc}", file=sys.stderr)
            continue
        per_case.append(m)
        rows.append({"case": case_id, **{f"{r}_{k}": v for r in scored for k, v in m[r].items()}})
    if not rows:
        return 1
    mean = mean_metrics(per_case)
    rows.append({"case": "mean", **{f"{r}_{k}": v for r in scored for k, v in mean[r].items()}})
    out = args.output or args.pred_dir
    try:
        out.mkdir(parents=True, exist_ok=True)
        earlier = (out / "metrics.json").exists()
        with open(out / "metrics.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        # which predictions were scored against which references: two evaluations of one folder are told apart
        _write_json(out / "metrics.json", {"predictions": str(args.pred_dir.resolve()), "references": str(args.gt_dir.resolve()), "labels": args.labels,
                                           "regions_scored": list(scored),
                                           "cases": rows[:-1], "mean": mean, "references_without_prediction": unscored})
    except OSError as exc:  # a read-only or full disk: the table below is still printed
        print(f"sevnet-evaluate: error: {out}: cannot write metrics.csv and metrics.json ({exc.strerror or exc}); choose another -o", file=sys.stderr)
        failed += 1
    else:
        print(f"sevnet-evaluate: wrote {out / 'metrics.csv'} and metrics.json" + (" (replacing an earlier evaluation's)" if earlier else ""), file=sys.stderr)
    columns = [("dice", "Dice", ".3f"), ("hd95", "HD95", ".2f")] + ([("lesion_dice", "LwDice", ".3f"), ("lesion_hd95", "LwHD95", ".2f")] if args.lesion_wise else [])
    print(f"{'case':<24}" + "".join(f"{r + ' ' + title:>12}" for r in scored for _, title, _ in columns))
    for row in rows:
        print(f"{row['case']:<24}" + "".join(f"{row[f'{r}_{key}']:>12{fmt}}" for r in scored for key, _, fmt in columns))
    return 1 if failed else 0


def export_main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="sevnet-export",
        description="Add a case and its corrected mask (from napari, ITK-SNAP, 3D Slicer, ...) to a fine-tuning dataset that sevnet-train reads.",
    )
    parser.add_argument("case", type=Path, nargs="?", help="the case: its folder or any one of its files")
    parser.add_argument("mask", type=Path, nargs="?", help="the corrected label NIfTI on the case's grid (BraTS 2021, 2023 or Decathlon labels)")
    parser.add_argument("-d", "--dataset", required=True, type=Path, help="dataset folder (created when new)")
    marks = parser.add_mutually_exclusive_group()
    marks.add_argument("--withdraw", metavar="CASE_ID", help="take an exported case out of training instead (a wrong patient, a mask found wrong): its files and record stay")
    marks.add_argument("--restore", metavar="CASE_ID", help="undo --withdraw for a case")
    parser.add_argument("--version", type=int, help="with --withdraw or --restore: only this version of the case (default: every version)")
    parser.add_argument("--case-id", help="id in the dataset (default: the case's own id)")
    parser.add_argument("--model-mask", type=Path, help="the model's mask before correction, for the edit statistics")
    parser.add_argument("--checkpoint", type=Path, help="the checkpoint that produced the model's mask (default: the one its sevnet-predict report names)")
    parser.add_argument("--mask-labels", choices=["2021", "2023", "msd"], help="label convention of the masks (default: what the file says: our own masks and BraTS names do; a Decathlon case's masks are msd; else 0/1/2/4 is read as 2021, and 1/2/3 must be named)")
    parser.add_argument("--labels", choices=["2021", "2023"], help="label convention of a new dataset (default 2021)")
    parser.add_argument("--annotator", help="who corrected the mask")
    parser.add_argument("--note", help="free text kept in the manifest (with --withdraw: why)")
    parser.add_argument("--replace", action="store_true", help="replace the case's earlier versions instead of adding a version")
    args = parser.parse_args(argv)
    if args.withdraw or args.restore:
        if args.case or args.mask:
            parser.error("--withdraw and --restore take a case id and the dataset, not a case and a mask")
        return _mark_main(args)
    if args.case is None or args.mask is None:
        parser.error("give the case and its corrected mask (or --withdraw / --restore a case id)")
    if args.version is not None:
        parser.error("--version goes with --withdraw or --restore")

    from napari_sevnet.assignments import load_assigned_or_named
    from napari_sevnet.export import export_case
    from napari_sevnet.io import read_segmentation
    from napari_sevnet.report import checkpoint_of

    try:
        case = load_assigned_or_named(args.case, allow_missing=False)
        default = "msd" if case.layout == "msd" else None  # a Decathlon case's masks use its labels unless they say otherwise
        corrected, _ = read_segmentation(args.mask, case.grid, case.reference, args.mask_labels, default=default)
        if necrosis_alone(corrected) and args.mask_labels is None:  # exported, a whole-tumour mask would teach necrosis everywhere
            raise InputError(args.mask, f"{NECROSIS_ALONE}; exported so, it would teach the model necrosis wherever the mask means tumour: "
                                        "label its regions (necrosis 1, oedema 2, enhancing 4), or, if it is necrosis alone, say so with --mask-labels 2021")
        model = read_segmentation(args.model_mask, case.grid, case.reference, args.mask_labels, default=default)[0] if args.model_mask else None
        result = export_case(
            case, corrected, args.dataset, case_id=args.case_id, model_regions=model, checkpoint=args.checkpoint or (checkpoint_of(args.model_mask) if args.model_mask else None),
            annotator=args.annotator, note=args.note, replace=args.replace, label_convention=args.labels,
        )
    except InputError as exc:
        print(f"sevnet-export: error: {exc}", file=sys.stderr)
        return 2
    edits = result.record["edits"]
    summary = "   ".join(f"{r} Dice(model, corrected) {e['dice_model_vs_corrected']:.3f}" for r, e in edits.items()) if edits else ""
    print(f"exported {result.case_id} version {result.version} to {result.folder}" + (f"\n{summary}" if summary else ""))
    return 0


def _mark_main(args) -> int:
    """sevnet-export --withdraw / --restore: mark a case's versions in the dataset's manifest."""
    from napari_sevnet.export import restore, training_record, withdraw

    case_id = args.withdraw or args.restore
    try:
        if args.withdraw:
            changed = withdraw(args.dataset, case_id, version=args.version, note=args.note)
        else:
            changed = restore(args.dataset, case_id, version=args.version)
        training = training_record(args.dataset, case_id)
    except InputError as exc:
        print(f"sevnet-export: error: {exc}", file=sys.stderr)
        return 2
    done = "withdrew" if args.withdraw else "restored"
    versions = ", ".join(str(r["version"]) for r in changed)
    print(f"{done} {case_id} version {versions}" if changed else f"nothing to do: {case_id} was {'already withdrawn' if args.withdraw else 'not withdrawn'}")
    print(f"training uses {case_id} version {training['version']} ({training['folder']})" if training else f"training leaves {case_id} out")
    return 0


def recovery_main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="sevnet-recovery",
        description="The recovery copies of corrections neither exported nor saved (kept while napari runs, and after a crash): list them, "
                    "write one as a mask without napari, or discard them (a copy names the scans' paths, which often name the patient).",
    )
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--save", metavar="KEY", help="write this copy (its key as listed, six characters or more) as a label NIfTI on its scans' grid (needs -o)")
    action.add_argument("--discard", nargs="+", metavar="KEY", help="delete these copies")
    action.add_argument("--discard-all", action="store_true", help="delete every copy in the folder")
    parser.add_argument("-o", "--output", type=Path, help="with --save: the mask to write (.nii.gz)")
    parser.add_argument("--labels", choices=["2021", "2023"], default="2021", help="with --save: the label convention written (default 2021: 1/2/4)")
    parser.add_argument("--overwrite", action="store_true", help="with --save: replace an existing -o file")
    parser.add_argument("--folder", type=Path, help="the recovery folder (default: $SEVNET_RECOVERY_DIR, else recovery/ in the user's cache)")
    args = parser.parse_args(argv)
    if (args.save is None) != (args.output is None):
        parser.error("--save KEY and -o MASK go together")

    from napari_sevnet import recovery

    folder = args.folder or recovery.recovery_dir()
    try:
        if args.save:
            scans, copy = recovery.find(args.save, folder)
            changed = recovery.scans_now(scans)
            written = recovery.write_as_mask(copy, scans, args.output, args.labels, overwrite=args.overwrite)
            print(f"wrote {copy.name} of {copy.when} ({copy.case_id}) to {written}; the copy stays until discarded (--discard {copy.key[:8]})")
            if changed:
                print(f"sevnet-recovery: warning: {changed}: check that the mask lies on the scans as you expect", file=sys.stderr)
            return 0
        if args.discard or args.discard_all:
            chosen = [copy for _, copy in recovery.records(folder)] if args.discard_all else [recovery.find(key, folder)[1] for key in args.discard]
            for copy in chosen:
                recovery.remove(copy)
                print(f"discarded {copy.key[:8]}: {copy.name} of {copy.when} ({copy.case_id})")
            if not chosen:
                print(f"no recovery copies in {folder}")
            return 0
    except InputError as exc:
        print(f"sevnet-recovery: error: {exc}", file=sys.stderr)
        return 2
    kept = sorted(recovery.records(folder), key=lambda found: found[1].saved_at)
    if not kept:
        print(f"no recovery copies in {folder}")
        return 0
    print(f"{len(kept)} recovery cop{'y' if len(kept) == 1 else 'ies'} in {folder} (each dropped {recovery.KEEP_DAYS} days after its last edit):")
    for scans, copy in kept:
        edits = {source: int(tally.get("edits", 0)) for source, tally in (copy.interactions or {}).items() if isinstance(tally, dict)}
        tallied = f"{sum(edits.values())} edit(s) ({', '.join(f'{source} {n}' for source, n in sorted(edits.items()))})" if edits else "edits not tallied"
        made_by = f"model {Path(copy.model['checkpoint']).name}" if copy.model and copy.model.get("checkpoint") else "a mask from files"
        print(f"  {copy.key[:8]}  {copy.when}  {copy.name}  [{copy.case_id}]  {tallied}; {made_by}; scans: {recovery.scans_now(scans) or 'as they were'}")
    return 0


def assign_main(argv=None) -> int:
    from napari_sevnet.assignments import ROLES

    parser = argparse.ArgumentParser(
        prog="sevnet-assign",
        description="Which file is which sequence in case folders whose file names say nothing BraTS-like (a clinic's export), as napari's "
                    "Assign dock does: list each file's proposed sequence, then remember the proposal (--accept) or your own choice "
                    "(--t1 FILE ...) for sevnet-predict, -export, -measure, the Worklist and napari to read the folder by. "
                    "The choice is kept in the user's configuration, never in the data folder.",
    )
    parser.add_argument("folders", nargs="+", type=Path, help="case folders, or folders of case folders")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--accept", action="store_true", help="remember each folder's proposal (not for a folder where it lacks a sequence: name that one)")
    action.add_argument("--forget", action="store_true", help="forget the choice remembered for each folder (a wrong one; a folder path that names a patient)")
    for role in ROLES:
        parser.add_argument(f"--{role}", metavar="FILE", help=f"the {'mask' if role == 'seg' else role.upper()} file of the one folder given (its name), or none")
    args = parser.parse_args(argv)
    given = {role: getattr(args, role) for role in ROLES if getattr(args, role)}

    from napari_sevnet.assignments import also_named, check_choice, config_file, guess_roles, nifti_files, remember, remembered
    from napari_sevnet.io import MODALITY_LABELS, find_cases

    label = {**MODALITY_LABELS, "seg": "mask"}
    try:
        folders = find_cases(args.folders)
    except OSError as exc:
        print(f"sevnet-assign: error: {exc}", file=sys.stderr)
        return 2
    if given and len(folders) != 1:
        parser.error(f"--t1, --t1ce, ... name the files of one case folder; {len(folders)} were given")
    if given and args.forget:
        parser.error("--forget takes no --t1, --t1ce, ...")
    if args.forget:
        from napari_sevnet.assignments import forget

        for folder in folders:
            print(f"{folder}: {'forgotten' if forget(folder) else 'nothing was remembered'}")
        return 0
    failed = 0
    for folder in folders:
        try:
            files = nifti_files(folder) if folder.is_dir() else []
            if not files:
                raise InputError(folder, "holds no NIfTI files" if folder.is_dir() else "is not a folder")
            before = remembered(folder)
            chosen, said_none = dict(before or guess_roles(files)), set()
            for role, name in given.items():
                if name.lower() == "none":
                    chosen.pop(role, None)
                    said_none.add(role)
                elif not (folder / name).is_file():
                    raise InputError(folder / name, "is not a file in this folder")
                else:
                    chosen[role] = folder / name
            print(f"{folder}: {'as remembered' if before else 'proposed'}{', with your choices' if given else ''}")
            others = also_named(files, chosen.values())  # a repeat, another plane: the user may want it instead
            for path in files:
                roles = [label[r] for r, p in chosen.items() if p == path]
                named = others.get(path)
                print(f"  {path.name}  -> {', '.join(roles) or ('not used (named like ' + label[named] + ' too)' if named else 'not used')}")
            if not (args.accept or given):
                continue
            unsaid = [label[m] for m in MODALITY_LABELS if m not in chosen and m not in said_none]
            if unsaid:
                raise InputError(folder, f"no file is chosen for {', '.join(unsaid)}: name it (--{unsaid[0].lower()} FILE) or say there is none (--{unsaid[0].lower()} none)")
            remember(folder, check_choice(folder, chosen))
            print(f"  remembered (in {config_file()})")
        except InputError as exc:
            print(f"sevnet-assign: error: {exc}", file=sys.stderr)
            failed += 1
    if not (args.accept or given):
        print("nothing remembered yet: --accept keeps the proposals, --t1 FILE ... a choice of your own")
    return 1 if failed else 0


def _say_if_necrosis_alone(path, regions, convention) -> None:
    """sevnet-measure's warning for a mask its labels read as necrosis alone, unless --labels said the convention."""
    if convention is None and necrosis_alone(regions):
        print(f"sevnet-measure: warning: {path}: {NECROSIS_ALONE}: its necrosis volume is then the whole tumour's; "
              "label its regions, or say --labels 2021 if it is necrosis alone", file=sys.stderr)


def measure_main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="sevnet-measure", description="Lesion table and RANO measurements of a mask; optionally the change since an earlier visit and a case report.")
    parser.add_argument("case", type=Path, help="the case (folder or any of its files)")
    parser.add_argument("mask", type=Path, help="its mask (a prediction or a correction), on the case's grid")
    parser.add_argument("--baseline", nargs=2, type=Path, metavar=("CASE", "MASK"), help="an earlier visit of the same patient: report the change and the RANO category")
    parser.add_argument("--dates", nargs=2, metavar=("BASELINE", "FOLLOW_UP"),
                        help="with --baseline: the two visits' study dates (YYYY-MM-DD), which NIfTI files do not carry: the report gives the days "
                             "between them and says when the visits are the wrong way round (cases prepared from DICOM know theirs)")
    parser.add_argument("--labels", choices=["2021", "2023", "msd"], help="label convention of the masks (default: what the files say)")
    parser.add_argument("--report", type=Path, help="also write the case report (self-contained HTML) here")
    parser.add_argument("--checkpoint", help="the model that made the mask, named in the report (default: the one its sevnet-predict report names)")
    parser.add_argument("-o", "--output", type=Path, help="write the read-out as JSON here")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing -o file, or a --report that is not this scan's own earlier report")
    args = parser.parse_args(argv)
    if args.dates and not args.baseline:
        parser.error("--dates goes with --baseline: they are the baseline's and the follow-up's study dates")
    _setup_logging(False)
    inputs = {p.resolve() for p in (args.case, args.mask, *(args.baseline or ()))}
    if args.report and args.output and args.report.resolve() == args.output.resolve():
        parser.error("--report and -o name the same file")
    for flag, target in (("--report", args.report), ("-o", args.output)):
        if target is not None and target.resolve() in inputs:
            parser.error(f"{flag} {target} is one of the inputs: it would be overwritten")
    if args.output is not None and args.output.exists() and not args.overwrite:
        print(f"sevnet-measure: error: {args.output}: already exists; pass --overwrite to replace it", file=sys.stderr)
        return 2

    from napari_sevnet import case_report
    from napari_sevnet.assignments import load_assigned_or_named
    from napari_sevnet.io import read_segmentation
    from napari_sevnet.prepare import visit_of
    from napari_sevnet.readout import TARGET_LESIONS, baseline_on_follow_up, compare_visits, format_ml, measure, new_lesions, on_one_grid, with_study_date
    from napari_sevnet.report import checkpoint_of

    try:
        case = load_assigned_or_named(args.case)
        regions, _ = read_segmentation(args.mask, case.grid, case.reference, args.labels)
        _say_if_necrosis_alone(args.mask, regions, args.labels)
        readout = measure(regions, case.spacing, case.grid)
        comparison = None
        if args.baseline:
            base_case = load_assigned_or_named(args.baseline[0])
            if base_case.reference.resolve() == case.reference.resolve() or args.baseline[1].resolve() == args.mask.resolve():
                raise InputError(args.baseline[0], f"the baseline is the follow-up itself ({args.case}, {args.mask}): give the earlier visit's case and mask")
            base_regions, _ = read_segmentation(args.baseline[1], base_case.grid, base_case.reference, args.labels)
            _say_if_necrosis_alone(args.baseline[1], base_regions, args.labels)
            # volumes and products are measured on each visit's own grid and need no registration; new lesions are looked for
            # on the baseline where the follow-up lies: as it is on one grid (BraTS' longitudinal cases), else registered there
            on_follow_up, how = (base_regions, None) if on_one_grid(base_regions, base_case.grid, regions, case.grid) else baseline_on_follow_up(base_case, base_regions, case)
            if how:
                print(f"sevnet-measure: the visits lie on two grids: the baseline was {how} onto the follow-up to look for new lesions" if on_follow_up is not None
                      else f"sevnet-measure: warning: new lesions not assessed: the visits lie on two grids and {how}", file=sys.stderr)
            comparison = compare_visits(measure(base_regions, base_case.spacing, base_case.grid), readout, baseline_id=base_case.case_id, follow_up_id=case.case_id,
                                        new=new_lesions(on_follow_up, regions, readout, case.spacing) if on_follow_up is not None else None,
                                        unassessed=None if on_follow_up is not None else how,
                                        baseline_visit=with_study_date(visit_of(base_case.paths), args.dates and args.dates[0], args.baseline[0]),
                                        follow_up_visit=with_study_date(visit_of(case.paths), args.dates and args.dates[1], args.case))
            if comparison["caveat"]:
                print(f"sevnet-measure: warning: {comparison['caveat']}", file=sys.stderr)
        if args.report:
            case_report.write(args.report, case, regions, readout, checkpoint=args.checkpoint or checkpoint_of(args.mask), comparison=comparison, overwrite=args.overwrite)
    except InputError as exc:
        print(f"sevnet-measure: error: {exc}", file=sys.stderr)
        return 2
    data = {"case": case.case_id, **readout.to_json(), **({"change": comparison} if comparison else {})}
    if args.output:
        _write_json(args.output, data)
    print(f"{'#':>2} {'NCR mL':>7} {'ED mL':>7} {'ET mL':>7} {'longest':>8} {'perp.':>7} {'product':>8}  measurable")
    for lesion in readout.lesions:
        d = lesion.diameters
        print(f"{lesion.index:>2} {format_ml(lesion.ncr_ml):>7} {format_ml(lesion.ed_ml):>7} {format_ml(lesion.et_ml):>7} " + (f"{d.longest_mm:8.1f} {d.perpendicular_mm:7.1f} {d.product_mm2:8.0f}" if d else f"{'-':>8} {'-':>7} {'-':>8}") + f"  {lesion.measurable_words}")
    print(f"sum of products {readout.sum_of_products_mm2:.0f} mm^2 over {readout.measurable} measurable lesion(s)" + (f", the {TARGET_LESIONS} largest summed" if readout.measurable > TARGET_LESIONS else "") + (f"; since the baseline: {comparison['category']}" if comparison else "")
          + (f" (new lesion {', '.join(f'#{n}' for n in comparison['new_lesions'])})" if comparison and comparison["new_lesions"] else ""))
    return 0


def _list_series(folders) -> int:
    """Each folder's series and the sequence proposed for each (DICOM with the UIDs --series takes), as the Prepare dock lists them."""
    from napari_sevnet import dicom
    from napari_sevnet.prepare import is_dicom_folder, series_options

    for folder in folders:
        try:
            if not folder.is_dir():
                raise InputError(folder, "is a file: give the folder that holds this patient's raw series" if folder.exists() else "cannot access: no such folder")
            if is_dicom_folder(folder):
                for s in dicom.find_series(folder):
                    print(f"{folder}: {s.uid}  {s.label}  patient {s.patient_id or '?'}  -> {s.role or 'not recognised'}")
                continue
            found = series_options(folder)
            proposed = {name: m for m, name in found.proposal.items()}
            for name in found.options:
                print(f"{folder}: {name}  -> {proposed.get(name, 'not recognised (rename it to say T1, T1ce/post-Gd, T2 or FLAIR)')}")
        except InputError as exc:
            print(f"sevnet-prepare: error: {exc}", file=sys.stderr)
            return 1
    return 0


def prepare_main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="sevnet-prepare", description="Raw clinical series (own grids, with the skull) -> a BraTS-style case: co-registered, 1 mm, skull-stripped, transforms kept.")
    parser.add_argument("inputs", nargs="+", type=Path, help="folders of one patient's series (names saying T1, T1ce/post-Gd, T2, FLAIR)")
    parser.add_argument("-o", "--output", type=Path, help="where the prepared cases go (never replaced); required but with --list")
    parser.add_argument("--reference", default="t1ce", choices=["t1", "t1ce", "t2", "flair"], help="the series the others are registered to and whose grid results go back to")
    parser.add_argument("--no-skull-strip", action="store_true", help="the series are skull-stripped already")
    parser.add_argument("--no-bias-field", action="store_true", help="skip N4 bias-field correction (e.g. the series were corrected already)")
    parser.add_argument("--series", action="append", default=[], metavar="SEQUENCE=UID", help="DICOM: the series for a sequence when its description does not say it (t1ce=1.2.3...), or none for no series (flair=none)")
    parser.add_argument("--list", action="store_true", help="list the series found (DICOM: with their UIDs) and the sequence proposed for each, and stop")
    args = parser.parse_args(argv)
    if args.output is None and not args.list:
        parser.error("the following arguments are required: -o/--output")
    _setup_logging(False)

    from napari_sevnet.prepare import prepare_case

    try:
        series = dict(item.split("=", 1) for item in args.series)
    except ValueError:
        parser.error("--series takes SEQUENCE=UID, e.g. --series t1ce=1.2.840.113619...")
    if args.list:
        return _list_series(args.inputs)
    failed = 0
    for folder in args.inputs:
        try:
            prepared = prepare_case(folder, args.output, reference=args.reference, strip=not args.no_skull_strip, bias_field=not args.no_bias_field,
                                    series=series or None)
        except (InputError, OSError) as exc:
            failed += 1
            print(f"sevnet-prepare: error: {exc}", file=sys.stderr)
            continue
        print(f"{prepared.folder}: {prepared.summary}")
    return 1 if failed else 0


if __name__ == "__main__":  # torchrun -m napari_sevnet.cli INPUTS -o OUT: sevnet-predict sharded over the ranks
    raise SystemExit(predict_main())
