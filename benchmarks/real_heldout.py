"""Held-out accuracy on real expert-labelled scans, and how much the SE excitations respond to the case.

    python -m benchmarks.real_heldout [--checkpoint CKPT ...] [--compare] [--cases PATH ...] [-o OUT.json]

For each checkpoint (default: ``HELD_OUT_MODEL``, the shipped default's recipe
without the held-out cases; the shipped weights also trained on them) every
held-out case of ``training/configs/splits/real_brats_heldout.json`` is
segmented by the Predictor as a user runs it, and scored against its expert
mask: Dice, HD95, sensitivity, precision per region, and the BraTS 2023
lesion-wise Dice and HD95. A checkpoint whose provenance lists one of the
scored cases among its training cases is refused. Cases with a consensus mask
instead of an expert one (``--consensus``) are scored in a separate table;
``--consensus-only`` scores only them (no model here trained on them), which
is how the shipped weights are compared with ``HELD_OUT_MODEL``. ``--cases``
scores expert-labelled cases of one's own instead (BraTS-named folders with a
segmentation, or folders holding them): the figures checked on cases this
project never had, still refusing a checkpoint that trained on one of them.

SE spread: per stage, the standard deviation of each channel's excitation
across the held-out cases, averaged over channels ("how much the attention
changes with the case"), beside the standard deviation across channels of the
case-averaged excitation ("how different the channels are"). An excitation
that ignores the case has a spread of 0.

``--compare`` adds, for every checkpoint after the first, the paired per-case
Dice difference against the first: mean, sd over cases and a bootstrap 95 %
interval. ``--tta`` also scores each checkpoint with test-time augmentation
(the Segment dock's checkbox, ``sevnet-predict --tta``: the 8 mirror flips
averaged), so a user can see what its extra time buys on real scans. ``--patterns`` scores each checkpoint with sequences left out (all
four; no T1; no T2; no FLAIR; FLAIR + T1ce; T1ce only; FLAIR only): a model
trained for missing sequences is told which are present, any other model is
given zero-filled channels, which is what a user would otherwise get. Writes
JSON (``-o``) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from napari_sevnet.assumptions import SEQUENCE_SETS

ROOT = Path(__file__).resolve().parents[1]
SPLIT = ROOT / "training" / "configs" / "splits" / "real_brats_heldout.json"
#: stage 3 of the shipped recipe, trained on the split's training cases only: the model whose held-out figures the
#: README and the shipped model card report (the shipped weights are the same recipe on every case, held-out ones included)
HELD_OUT_MODEL = ROOT / "benchmarks" / "checkpoints" / "sevnet_lite_brats_heldout.json"
DATA = Path(os.environ.get("SEVNET_REAL_DATA", ROOT.parent / "shared" / "data"))
#: cases with a five-algorithm consensus mask (not expert): reported apart
CONSENSUS_CASES = {"TCGA-DU-7294": "TCGA-DU-7294", "TCGA-FG-6692": "TCIA-RAW-FG-6692/brats_space"}
REGIONS = ("WT", "TC", "ET")
METRICS = ("dice", "hd95", "sensitivity", "precision", "lesion_dice", "lesion_hd95")


def find_cases(ids: list[str], data: Path) -> dict[str, Path]:
    """Case id -> folder, among ``data``'s case folders and those of ``data/brats18``."""
    from training.data import discover_cases

    roots = [p for p in (data / "brats18", data) if p.is_dir()]
    if not roots:
        raise SystemExit(f"the real cases are not here: {data} is not a folder (set SEVNET_REAL_DATA to the folder holding brats18/)")
    found = {ref.case_id: ref.folder for ref in discover_cases(roots)}
    missing = [i for i in ids if i not in found]
    if missing:
        raise SystemExit(f"held-out cases not found under {data}: {missing} (set SEVNET_REAL_DATA)")
    return {i: found[i] for i in ids}


def labelled_cases(paths) -> dict[str, Path]:
    """Case id -> folder of the expert-labelled BraTS cases in ``paths`` (case folders, or folders holding them): to score
    the figures on cases of one's own instead of the split's held-out ones."""
    from napari_sevnet.errors import InputError
    from training.data import discover_cases

    try:
        return {ref.case_id: ref.folder for ref in discover_cases([Path(p) for p in paths])}
    except InputError as exc:
        raise SystemExit(str(exc)) from None


def unseen_checkpoint(checkpoint: str | os.PathLike | None, case_ids) -> str:
    """``checkpoint`` (default ``HELD_OUT_MODEL``), after checking that it never trained on any of ``case_ids``."""
    from napari_sevnet.checkpoint import read_info

    checkpoint = str(checkpoint or HELD_OUT_MODEL)
    seen = sorted(set(read_info(checkpoint).provenance.get("train_cases") or []) & set(case_ids))
    if seen:
        instead = "other cases" if Path(checkpoint).resolve() == HELD_OUT_MODEL.resolve() else \
            f"{HELD_OUT_MODEL.relative_to(ROOT)}, the same recipe without the split's held-out cases, or other cases"
        raise SystemExit(f"{checkpoint} trained on {seen}: its figures on them would not be held-out (score {instead})")
    return checkpoint


def checkpoint_for(part: str, checkpoint: str | os.PathLike | None, case_ids) -> str:
    """The checkpoint a benchmark runs on ``part`` of the split (default ``HELD_OUT_MODEL``): on held-out cases only one
    that never trained on them (``unseen_checkpoint``); on training cases any."""
    return unseen_checkpoint(checkpoint, case_ids) if part == "held_out" else str(checkpoint or HELD_OUT_MODEL)


def evaluate(checkpoint: str | None, cases: dict[str, Path], tta: bool = False) -> dict:
    """Per-case metrics, SE excitations and seconds per case of one checkpoint (``tta``: the 8 mirror flips averaged)."""
    from napari_sevnet.inference import Predictor
    from napari_sevnet.io import load_case
    from napari_sevnet.metrics import case_lesion_metrics, case_metrics

    predictor = Predictor(checkpoint, "cpu")
    per_case, attention = {}, {}
    for case_id, folder in cases.items():
        case = load_case(folder)
        t0 = time.perf_counter()
        result = predictor.predict(case.image, tta=tta)
        seconds = time.perf_counter() - t0
        m = case_metrics(result.regions, case.regions, case.spacing)
        for r, extra in case_lesion_metrics(result.regions, case.regions, case.spacing).items():
            m[r].update(extra)
        per_case[case_id] = {r: {k: float(m[r][k]) for k in METRICS} for r in REGIONS} | {"seconds": round(seconds, 2)}
        attention[case_id] = {stage: exc.tolist() for stage, exc in result.attention.items()}
        print(f"  {case_id:<24} " + "  ".join(f"{r} {m[r]['dice']:.3f}" for r in REGIONS) + f"  ({seconds:.1f} s)", flush=True)
    mean = {r: {k: float(np.mean([c[r][k] for c in per_case.values()])) for k in METRICS} for r in REGIONS}
    return {"checkpoint": predictor.checkpoint, "cases": per_case, "mean": mean, "se_spread": se_spread(attention), "attention": attention}


def evaluate_patterns(checkpoint: str | None, cases: dict[str, Path]) -> dict:
    """Mean and per-case Dice per region for each availability pattern."""
    from napari_sevnet.inference import Predictor
    from napari_sevnet.io import MODALITIES, load_case
    from napari_sevnet.metrics import dice

    predictor = Predictor(checkpoint, "cpu")
    handles = predictor.handles_missing_sequences
    scores: dict[str, dict] = {name: {} for name in SEQUENCE_SETS}
    for case_id, folder in cases.items():
        case = load_case(folder)
        for name, present in SEQUENCE_SETS.items():
            image = case.image.copy()
            for i, m in enumerate(MODALITIES):
                if m not in present:
                    image[i] = 0
            result = predictor.predict(image, spacing=case.spacing, sequences=present if handles else None)
            scores[name][case_id] = {r: dice(result.regions[i], case.regions[i]) for i, r in enumerate(REGIONS)}
        print(f"  {case_id}: " + "  ".join(f"{n} WT {scores[n][case_id]['WT']:.2f}" for n in SEQUENCE_SETS), flush=True)
    return {"told_which_are_present": handles, "patterns": {n: {"mean": {r: float(np.mean([c[r] for c in per.values()])) for r in REGIONS}, "cases": per} for n, per in scores.items()}}


def se_spread(attention: dict[str, dict[str, list[float]]]) -> dict:
    """Per stage: mean over channels of the sd across cases, and the sd across channels of the case mean."""
    if len(attention) < 2 or not next(iter(attention.values())):
        return {}
    stages = next(iter(attention.values())).keys()
    out = {}
    for stage in stages:
        a = np.array([attention[c][stage] for c in attention])  # (cases, channels)
        across_cases = float(a.std(axis=0).mean())
        across_channels = float(a.mean(axis=0).std())
        out[stage] = {"across_cases": across_cases, "across_channels": across_channels, "ratio": across_cases / across_channels if across_channels else None}
    overall = {k: float(np.mean([v[k] for v in out.values()])) for k in ("across_cases", "across_channels")}
    return {"stages": out, "mean": overall}


def paired(a: dict, b: dict, seed: int = 0, resamples: int = 10000) -> dict:
    """Dice of b minus Dice of a per region over the cases both scored: mean, sd, bootstrap 95 % interval."""
    rng = np.random.default_rng(seed)
    ids = [c for c in a["cases"] if c in b["cases"]]
    out = {}
    for r in REGIONS:
        d = np.array([b["cases"][c][r]["dice"] - a["cases"][c][r]["dice"] for c in ids])
        boot = d[rng.integers(0, len(d), size=(resamples, len(d)))].mean(axis=1)
        out[r] = {"mean": float(d.mean()), "sd": float(d.std(ddof=1)) if len(d) > 1 else 0.0,
                  "ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))], "per_case": dict(zip(ids, d.round(4).tolist()))}
    return out


def markdown(results: list[dict], label_of, kind: str = "held-out, expert labels") -> str:
    lines = []
    for res in results:
        lines += [f"**{label_of(res)}** ({kind})", "",
                  "| case | " + " | ".join(f"{r} Dice" for r in REGIONS) + " | " + " | ".join(f"{r} HD95" for r in REGIONS) + " | WT sens / prec | s |",
                  "|---|" + "---|" * 8]
        for case_id, c in [*res["cases"].items(), ("**mean**", {**res["mean"], "seconds": np.mean([v["seconds"] for v in res["cases"].values()])})]:
            lines.append(f"| {case_id} | " + " | ".join(f"{c[r]['dice']:.3f}" for r in REGIONS) + " | " + " | ".join(f"{c[r]['hd95']:.1f}" for r in REGIONS)
                         + f" | {c['WT']['sensitivity']:.2f} / {c['WT']['precision']:.2f} | {c['seconds']:.1f} |")
        lines.append("")
    return "\n".join(lines)


def write_results(output: Path, record: dict, table: str) -> None:
    """The JSON record at ``output`` and its markdown table beside it (``.md``), each written atomically; the folder is made."""
    from napari_sevnet.files import write_text_atomic

    output.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(output, json.dumps(record, indent=1) + "\n")
    write_text_atomic(output.with_suffix(".md"), table)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.real_heldout", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", action="append", help="checkpoint to score (repeatable; default: HELD_OUT_MODEL, the shipped recipe without the held-out cases)")
    parser.add_argument("--label", action="append", help="a name per checkpoint for the tables")
    parser.add_argument("--compare", action="store_true", help="paired Dice differences of every checkpoint against the first")
    parser.add_argument("--consensus", action="store_true", help="also score the consensus-labelled cases (not expert)")
    parser.add_argument("--consensus-only", action="store_true", help="score only the consensus-labelled cases, which no model here trained on (e.g. the shipped weights)")
    parser.add_argument("--tta", action="store_true", help="also score each checkpoint with test-time augmentation (the 8 mirror flips), labelled '+ TTA'")
    parser.add_argument("--patterns", action="store_true", help="only the missing-sequence figures: each checkpoint with sequences left out")
    parser.add_argument("--split", type=Path, default=SPLIT)
    parser.add_argument("--cases", nargs="+", type=Path, metavar="PATH",
                        help="score these labelled cases (case folders, or folders holding them) instead of the split's held-out ones")
    parser.add_argument("-o", "--output", type=Path, help="JSON to write (default: print only)")
    args = parser.parse_args(argv)

    consensus = {}
    if args.consensus or args.consensus_only:
        consensus = {i: DATA / rel for i, rel in CONSENSUS_CASES.items() if (DATA / rel).is_dir()}
    if args.cases and args.consensus_only:
        raise SystemExit("--cases and --consensus-only each say which cases to score: give one of them")
    if args.consensus_only:
        if not consensus:
            raise SystemExit(f"no consensus-labelled case under {DATA} (set SEVNET_REAL_DATA)")
        ids, cases, consensus = list(consensus), consensus, {}
    elif args.cases:
        cases = labelled_cases(args.cases)
        ids = list(cases)
    else:
        ids = json.loads(args.split.read_text(encoding="utf-8"))["held_out"]
        cases = find_cases(ids, DATA)
    checkpoints = [unseen_checkpoint(c, [*cases, *consensus]) for c in (args.checkpoint or [None])]
    labels = args.label or checkpoints
    if args.patterns:
        return _patterns_main(args, checkpoints, labels, ids, cases)
    results = []
    for checkpoint, label in zip(checkpoints, labels):
        print(f"{label}: {len(cases)} {'consensus-labelled' if args.consensus_only else 'held-out'} cases", flush=True)
        res = evaluate(checkpoint, cases)
        res["label"] = label
        if consensus:
            print(f"{label}: consensus-labelled cases (not expert)", flush=True)
            res["consensus"] = evaluate(checkpoint, consensus)
            res["consensus"].pop("attention")
        results.append(res)
        if args.tta:
            print(f"{label} + TTA: {len(cases)} held-out cases", flush=True)
            results.append(evaluate(checkpoint, cases, tta=True) | {"label": f"{label} + TTA"})
    out = {"date": time.strftime("%Y-%m-%d %H:%M"), "host": platform.node(), "split": "consensus-labelled cases" if args.consensus_only else
           "cases given: " + " ".join(map(str, args.cases)) if args.cases else str(args.split.relative_to(ROOT) if args.split.is_relative_to(ROOT) else args.split), "held_out": ids, "results": results}
    if args.compare and len(results) > 1:
        out["paired_vs_first"] = {res["label"]: paired(results[0], res) for res in results[1:]}
    table = markdown(results, lambda r: r["label"], "consensus labels, not expert; trained on by no model here" if args.consensus_only else "held-out, expert labels")
    for res in results:
        spread = res["se_spread"].get("mean")
        if spread:
            table += f"\nSE spread of {res['label']}: across cases {spread['across_cases']:.4f}, across channels {spread['across_channels']:.4f}"
    for label, diff in out.get("paired_vs_first", {}).items():
        table += f"\n{label} minus {results[0]['label']}: " + "; ".join(
            f"{r} {d['mean']:+.3f} +/- {d['sd']:.3f} (95% CI {d['ci95'][0]:+.3f} to {d['ci95'][1]:+.3f})" for r, d in diff.items())
    print(table)
    if args.output:
        write_results(args.output, out, table + "\n")
    return 0


def _patterns_main(args, checkpoints, labels, ids, cases) -> int:
    results = {}
    for checkpoint, label in zip(checkpoints, labels):
        print(f"{label}: {len(cases)} held-out cases x {len(SEQUENCE_SETS)} availability patterns", flush=True)
        results[label] = evaluate_patterns(checkpoint, cases)
    lines = ["| sequences present | " + " | ".join(f"{label} WT / TC / ET" for label in results) + " |", "|---|" + "---|" * len(results)]
    for name in SEQUENCE_SETS:
        lines.append(f"| {name} | " + " | ".join("{:.3f} / {:.3f} / {:.3f}".format(*(r["patterns"][name]["mean"][k] for k in REGIONS)) for r in results.values()) + " |")
    table = "\n".join(lines)
    print(table)
    if args.output:
        out = {"date": time.strftime("%Y-%m-%d %H:%M"), "host": platform.node(), "held_out": ids, "results": results}
        write_results(args.output, out, table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
