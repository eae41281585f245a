"""Does fine-tuning on corrected cases help those cases, and what does it do to the next patients?

    python -m benchmarks.finetune_heldout [--variants 'lr 1e-3' 'lr 1e-4' 'replay, lr 1e-3' dock ...] [--case FOLDER ...] [--others FOLDER ...]
                                          [--replay FOLDER ...] [--val-cases N]
                                          [--epochs N] [--steps N] [--checkpoint CKPT] [--work DIR] [-o OUT.json]

The Fine-tune dock's loop on real scans no model here trained on. One held-out case (default the low-grade
Brats18_TCIA10_637_1, the one the model gets most wrong), or each case given to ``--case``, is exported with its expert
mask as the clinician's correction (``sevnet-export``), and ``HELD_OUT_MODEL`` (never trained on the split's held-out
cases) is fine-tuned on them as the dock runs it (``training/configs/finetune.yaml``, the dock's epochs and steps; from
five cases on, the trainer keeps a fifth of them out to validate on, as the dock does, unless ``--val-cases`` says
how many: 0 trains on all), once per variant. A variant is the dock's settings changed by its comma-separated parts:
``lr X`` (the learning rate; 1e-3 was the dock's until 2026-12-07, 1e-4 is now), ``replay`` (the split's training
cases, which the model learnt from, mixed in: the dock's *Replay data*), ``frozen-encoder`` (only the decoder learns)
and ``l2-sp X`` (the weights pulled back to the starting model's with weight X, ``l2sp``: no replay data needed, which a
clinic rarely has; 0.01 was set before any run, 0.1 run after it was scored); ``dock`` alone is the dock's settings as
they are. The default list is the variants measured in the README. With replay, the dock keeps two replay cases out of it and scores them before and during
the fine-tune (``data.replay_check_cases``); what that check saw is set beside what the next patients saw.
Each model (the best checkpoint, the one the dock's *Use this model* takes) is scored on the corrected cases themselves (what the dock's validation shows) and on the split's other
held-out cases, which it never saw (the next patients), with paired per-case Dice differences against the starting
model. Fine-tuning runs are kept under ``--work`` and not run again when they finished there (``done`` beside them)
with the same command; a work folder holds the runs of one set of corrected cases.
"""

from __future__ import annotations

import argparse
import json
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from benchmarks.real_heldout import DATA, HELD_OUT_MODEL, REGIONS, ROOT, SPLIT, evaluate, find_cases, labelled_cases, paired, write_results
from napari_sevnet.files import write_text_atomic

CONFIG = ROOT / "training" / "configs" / "finetune.yaml"
DEFAULT_CASE = "Brats18_TCIA10_637_1"


def variant_overrides(name: str, replay: list[Path] | None = None) -> list[str]:
    """The trainer settings a variant names, on top of the dock's (``replay``: the original cases to replay, default the
    split's training cases); a part it does not know is refused before anything runs."""
    overrides, seen = [], set()
    for part in (text.strip() for text in name.split(",")):
        word, _, value = part.partition(" ")
        if word in seen:
            raise SystemExit(f"variant {name!r}: names {word!r} twice")
        seen.add(word)
        if part == "replay":
            replay = replay or list(find_cases(json.loads(SPLIT.read_text(encoding="utf-8"))["train"], DATA).values())
            overrides.append(f"data.replay_roots={json.dumps([str(case) for case in replay])}")
        elif part == "frozen-encoder":
            overrides.append("freeze_encoder=true")
        elif word in ("lr", "l2-sp") and _is_positive_number(value):
            overrides.append(f"{'lr' if word == 'lr' else 'l2sp'}={float(value):g}")
        elif part != "dock":
            raise SystemExit(f"variant {name!r}: {part!r} is not one of 'lr X', 'replay', 'frozen-encoder', 'l2-sp X' or 'dock' (the dock's settings)")
    return overrides


def _is_positive_number(text: str) -> bool:
    try:
        return float(text) > 0
    except ValueError:
        return False


#: the variants the README reports; l2-sp's 0.01 was set before any run: the penalty's gradient, 2 x 0.01 x 0.025,
#: matches the start's rms loss gradient (5e-4) at a drift of 0.025 per weight, so weights the case barely pulls on stay put
VARIANTS = ("lr 1e-3", "lr 1e-4", "replay, lr 1e-3", "replay, lr 1e-4", "frozen-encoder, lr 1e-3", "l2-sp 0.01, lr 1e-3", "l2-sp 0.1, lr 1e-3")


def fine_tune(cases: dict[str, Path], base: str, variant: str, overrides: list[str], epochs: int, steps: int, work: Path) -> tuple[Path, list[str]]:
    """The cases (id -> folder) exported with their own masks as the corrections, then ``base`` fine-tuned on them; (best checkpoint, command)."""
    dataset = export_corrections(cases, work / "dataset")
    run_dir = work / variant.replace(", ", "-").replace(" ", "-")
    command = [sys.executable, "-m", "training.cli", "--config", str(CONFIG), "--init", str(base), "-o", str(run_dir),
               f"data.roots={json.dumps([str(dataset)])}", f"epochs={epochs}", f"steps_per_epoch={steps}", *overrides]
    record = run_dir / "benchmark-command.json"
    if record.is_file() and json.loads(record.read_text(encoding="utf-8")) != command[1:]:
        raise SystemExit(f"{run_dir}: holds a fine-tune run with other settings ({record.name} there); give another --work, or remove that folder")
    if not (run_dir / "done").is_file():
        stopped = (run_dir / "last.json").is_file()  # a run cut short: continued from its last finished epoch
        print(f"fine-tuning, {variant}: {epochs} x {steps} steps" + (" (resumed)" if stopped else ""), flush=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(record, json.dumps(command[1:]))  # what the run is, so a benchmark with other settings is not handed it
        _run_trainer([sys.executable, "-m", "training.cli", "--resume", str(run_dir)] if stopped else command)
        (run_dir / "done").write_text(time.strftime("%Y-%m-%d %H:%M") + "\n")
    return run_dir / "best.json", command


def export_corrections(cases: dict[str, Path], dataset: Path) -> Path:
    """Each case (id -> folder) exported into ``dataset`` with its own mask as the correction; a dataset of other cases
    is refused (the runs beside it were fine-tuned on those)."""
    from napari_sevnet.cli import export_main
    from napari_sevnet.io import load_case

    held = sorted(p.name for p in dataset.iterdir() if p.is_dir()) if dataset.is_dir() else []
    wanted = sorted(cases)
    if held and held != wanted:
        raise SystemExit(f"{dataset}: holds the corrected cases {', '.join(held)}, not {', '.join(wanted)}; give another --work for another set of cases")
    for case_id, case in cases.items():
        if (dataset / case_id).is_dir():
            continue
        mask = load_case(case).paths.get("seg")
        if mask is None:
            raise SystemExit(f"{case}: has no mask to fine-tune on")
        if export_main([str(case), str(mask), "-d", str(dataset), "--annotator", "expert mask (benchmark)"]) != 0:
            raise SystemExit(f"{case}: the export failed (see above)")
    return dataset


def _run_trainer(command: list[str]) -> None:
    """The trainer in a child process, stopped with this one (Ctrl-C, or SIGTERM as a job's time limit sends it): it keeps
    its last finished epoch, which the next run resumes, and never goes on alone to hold the run folder's lock."""
    child = subprocess.Popen(command, cwd=ROOT)
    try:
        code = child.wait()
    except BaseException:
        child.terminate()  # the trainer stops as on Ctrl-C, its checkpoints intact
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            child.kill()
        raise
    if code:
        raise SystemExit(f"the trainer failed (exit code {code}): {' '.join(command)}")


def _stop_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def replay_check(checkpoint: Path) -> dict | None:
    """What the fine-tune's own check saw on the replay cases it kept out: their Dice before and at this checkpoint."""
    seen = json.loads(checkpoint.read_text(encoding="utf-8")).get("metrics", {}).get("other_patients")
    if not seen:
        return None
    return {**seen, "change": {r: seen["dice"][r] - seen["start"][r] for r in REGIONS}}


def kept_out_to_validate(checkpoint: Path) -> set[str]:
    """The corrected cases the run validated on and never trained on (the trainer's split, as the dock's)."""
    provenance = json.loads(checkpoint.read_text(encoding="utf-8")).get("provenance", {})
    trained = {Path(p).name for p in provenance.get("train_cases") or []}
    return {Path(p).name for p in provenance.get("val_cases") or []} - trained


def table(out: dict) -> str:
    models, tuned_on, validated_on = out["models"], out["cases"], out["validated_on"]
    kept_out = f", {', '.join(validated_on)} kept out to validate on, not trained on" if validated_on else ", every one trained on" if len(tuned_on) > 1 else ""
    lines = [f"Fine-tuned on {', '.join(tuned_on)} (the expert masks as the corrections{kept_out}; {out['epochs']} x {out['steps_per_epoch']} steps), "
             f"scored on {'it' if len(tuned_on) == 1 else 'them'} and on {len(out['others'])} other held-out cases it never saw.", "",
             f"| model | on the corrected case{'s (mean)' if len(tuned_on) > 1 else ''}: WT / TC / ET Dice | on the others (mean): WT / TC / ET Dice "
             "| others, change against the start (mean, 95 % CI) | the run's own check: change on the replay cases kept out, WT / TC / ET |",
             "|---|---|---|---|---|"]
    for label, m in models.items():
        own = " / ".join(f"{m['own']['mean'][r]['dice']:.3f}" for r in REGIONS)
        others = " / ".join(f"{m['others']['mean'][r]['dice']:.3f}" for r in REGIONS)
        change = "; ".join(f"{r} {d['mean']:+.3f} ({d['ci95'][0]:+.3f} to {d['ci95'][1]:+.3f})" for r, d in m["others_vs_start"].items()) if "others_vs_start" in m else "-"
        check = m.get("replay_check")
        checked = " / ".join(f"{check['change'][r]:+.3f}" for r in REGIONS) + f" ({', '.join(check['cases'])})" if check else "-"
        lines.append(f"| {label} | {own} | {others} | {change} | {checked} |")
    lines += ["", "| case | " + " | ".join(f"{label} WT / TC / ET" for label in models) + " |", "|---|" + "---|" * len(models)]
    for case_id in [*tuned_on, *out["others"]]:
        cells = []
        for m in models.values():
            scored = m["own"] if case_id in tuned_on else m["others"]
            cells.append(" / ".join(f"{scored['cases'][case_id][r]['dice']:.3f}" for r in REGIONS))
        role = " (kept out to validate on)" if case_id in validated_on else " (fine-tuned on)" if case_id in tuned_on else ""
        lines.append(f"| {case_id}{role} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    defaults = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    parser = argparse.ArgumentParser(prog="python -m benchmarks.finetune_heldout", description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", nargs="+", type=Path, metavar="FOLDER", help=f"the corrected case(s) to fine-tune on (default: {DEFAULT_CASE} of the real data)")
    parser.add_argument("--others", nargs="+", type=Path, metavar="PATH", help="the next patients to score (default: the split's other held-out cases)")
    parser.add_argument("--replay", nargs="+", type=Path, metavar="PATH", help="original labelled cases for the replay variants (default: the split's training cases)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), metavar="VARIANT",
                        help="how to fine-tune: the dock's settings changed by 'lr X', 'replay', 'frozen-encoder', 'l2-sp X' (comma-separated), "
                             "or 'dock' (default: those the README reports)")
    parser.add_argument("--val-cases", type=int, metavar="N",
                        help="corrected cases kept out to validate on (default: the dock's, from five cases on a fifth; 0: train on all)")
    parser.add_argument("--epochs", type=int, default=defaults["epochs"], help="default: the dock's")
    parser.add_argument("--steps", type=int, default=defaults["steps_per_epoch"], help="steps per epoch (default: the dock's)")
    parser.add_argument("--checkpoint", default=str(HELD_OUT_MODEL), help="the starting model (default: HELD_OUT_MODEL, never trained on the held-out cases)")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "finetune_heldout", help="where the fine-tuning runs go (kept: a finished one is not run again)")
    parser.add_argument("-o", "--output", type=Path, help="JSON to write, with its table beside it (default: print only)")
    args = parser.parse_args(argv)

    overrides = {variant: variant_overrides(variant, args.replay) for variant in args.variants}
    held_out = json.loads(SPLIT.read_text(encoding="utf-8"))["held_out"]
    others = labelled_cases(args.others) if args.others else find_cases(held_out, DATA)
    if args.case is None:
        cases = {DEFAULT_CASE: find_cases([DEFAULT_CASE], DATA)[DEFAULT_CASE]}
    else:
        cases = labelled_cases(args.case)
        if len(cases) != len(args.case):
            raise SystemExit(f"{', '.join(map(str, args.case))}: give each labelled case to fine-tune on as its own folder (found {len(cases)} case(s) in {len(args.case)} folder(s))")
    for name in cases:
        others.pop(name, None)
    if not others:
        raise SystemExit("no other case to score: give --others")
    if args.val_cases is not None and not 0 <= args.val_cases < len(cases):
        raise SystemExit(f"--val-cases {args.val_cases}: keep between 0 and {len(cases) - 1} of the {len(cases)} corrected case(s) out to validate on")
    split = [] if args.val_cases is None else [f"data.val_cases={args.val_cases}"]
    models = {"start": {"checkpoint": args.checkpoint, "own": evaluate(args.checkpoint, cases), "others": evaluate(args.checkpoint, others)}}
    validated_on: set[str] = set()
    for variant in args.variants:
        checkpoint, command = fine_tune(cases, args.checkpoint, variant, [*split, *overrides[variant]], args.epochs, args.steps, args.work)
        label = f"fine-tuned, {variant}"
        print(label, flush=True)
        models[label] = {"checkpoint": str(checkpoint), "command": command, "own": evaluate(str(checkpoint), cases), "others": evaluate(str(checkpoint), others)}
        models[label]["others_vs_start"] = paired(models["start"]["others"], models[label]["others"])
        validated_on |= kept_out_to_validate(checkpoint)
        check = replay_check(checkpoint)
        if check:
            models[label]["replay_check"] = check
    for m in models.values():
        for part in ("own", "others"):
            m[part].pop("attention"), m[part].pop("se_spread")
    out = {"date": time.strftime("%Y-%m-%d %H:%M"), "host": platform.node(), "cases": list(cases), "validated_on": sorted(validated_on), "others": list(others),
           "epochs": args.epochs, "steps_per_epoch": args.steps, "models": models}
    text = table(out)
    print(text)
    if args.output:
        write_results(args.output, out, text)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    raise SystemExit(main())
