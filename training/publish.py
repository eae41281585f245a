"""``python -m training.publish RUN/last.json DEST --card CARD.yaml [--held-out EVAL.json] [--patterns EVAL.json]``: ship a checkpoint.

Copies the safetensors unchanged and writes the JSON with its model card: the
card's text (intended use, training data, citations, licence notes,
preprocessing, assumptions, known failures), the training command and time
from the run, and the held-out figures from ``python -m benchmarks.real_heldout``
output (``--patterns``: its held-out Dice per set of available sequences, for a
model trained for missing sequences), with the model they were measured on
(the shipped default's are those of its recipe without the held-out cases).
A card may start from another (``extends: other.yaml``, beside it) and replace
some of its entries. Case paths of this machine become case ids, so the
shipped JSON names no local folder.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import yaml

from napari_sevnet.checkpoint import checkpoint_files, read_info
from napari_sevnet.errors import InputError
from napari_sevnet.files import atomic_output, write_text_atomic
from napari_sevnet.inference import POSTPROCESSING_KEYS
from napari_sevnet.regions import REGIONS

ROOT = Path(__file__).resolve().parents[1]

CARD_REQUIRED = ("name", "intended_use", "training_data")


def held_out_summary(evaluation: dict) -> dict:
    """Per-region means and per-case Dice of the first result of a benchmarks.real_heldout JSON."""
    result = evaluation["results"][0]
    keys = ("dice", "hd95", "sensitivity", "precision", "lesion_dice", "lesion_hd95")
    summary = {
        "cases": evaluation["held_out"],
        "mean": {r: {k: round(result["mean"][r][k], 4) for k in keys} for r in REGIONS},
        "dice_per_case": {case: {r: round(m[r]["dice"], 4) for r in REGIONS} for case, m in result["cases"].items()},
        "command": "python -m benchmarks.real_heldout (make eval-real)",
        "date": evaluation["date"],
        "model": _repo_path(result["checkpoint"]),
    }
    spread = (result.get("se_spread") or {}).get("mean")
    if spread:  # how much the SE excitations move between cases: the Attention dock says when they hardly do
        summary["se_spread"] = {k: round(spread[k], 4) for k in ("across_cases", "across_channels")}
    return summary


def _repo_path(path: str) -> str:
    """``path`` relative to the repository when it is inside it, else its file name (no folder of this machine)."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else resolved.name


def load_card(path: Path) -> dict:
    """The model card at ``path``; with ``extends: BASE.yaml`` (beside it), BASE's card with this one's entries on top
    (a mapping entry, e.g. training_data, replaces only the keys it names)."""
    card = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    base_name = card.pop("extends", None)
    if base_name is None:
        return card
    base = load_card(path.parent / base_name)
    return base | {k: (base[k] | v if isinstance(v, dict) and isinstance(base.get(k), dict) else v) for k, v in card.items()}


def patterns_summary(evaluation: dict) -> dict:
    """Mean held-out Dice per set of available sequences of the first model of a ``real_heldout --patterns`` JSON."""
    label, result = next(iter(evaluation["results"].items()))
    return {
        "cases": evaluation["held_out"],
        "model": label,
        "mean_dice": {name: {r: round(v, 4) for r, v in pattern["mean"].items()} for name, pattern in result["patterns"].items()},
        "command": "python -m benchmarks.real_heldout --patterns (make eval-missing)",
        "date": evaluation["date"],
    }


def _read_json(path: Path, what: str, read):
    """``read(the JSON at path)``, or an InputError naming the file when it is missing, unreadable or not ``what``."""
    try:
        return read(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"cannot read it: {getattr(exc, 'strerror', None) or exc}") from None
    except (KeyError, IndexError, TypeError, AttributeError, StopIteration):
        raise InputError(path, f"not {what}") from None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.publish", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("dest", type=Path, help="destination stem, e.g. napari_sevnet/weights/sevnet_lite_brats")
    parser.add_argument("--card", type=Path, required=True, help="model card YAML (training/model_cards/)")
    parser.add_argument("--held-out", type=Path, help="JSON written by python -m benchmarks.real_heldout for this checkpoint")
    parser.add_argument("--postprocessing", type=Path, help="JSON written by python -m benchmarks.postprocessing for this checkpoint: its chosen thresholds and clean-up")
    parser.add_argument("--patterns", type=Path, help="JSON written by python -m benchmarks.real_heldout --patterns with this checkpoint first")
    parser.add_argument("--replace", action="store_true", help="publish over an existing checkpoint at DEST (a new default, new figures)")
    args = parser.parse_args(argv)
    existing = [p for p in checkpoint_files(args.dest) if p.exists()]
    if existing and not args.replace:
        parser.error(f"{existing[0]} already exists; give --replace to publish over it, or another DEST")
    try:
        data = publish(args)
    except (InputError, yaml.YAMLError) as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    print(f"{'replaced' if existing else 'published'} {args.dest} ({data['model_card']['name']})")
    return 0


def publish(args: argparse.Namespace) -> dict:
    """Write DEST's safetensors and JSON (the checkpoint's with its model card); returns the JSON written."""
    info = read_info(args.checkpoint)
    try:
        card = load_card(args.card)
    except OSError as exc:
        raise InputError(args.card, f"cannot read the model card: {exc.strerror or exc}") from None
    missing = [k for k in CARD_REQUIRED if k not in card]
    if missing:
        raise InputError(args.card, f"the model card lacks {missing}")
    src = args.checkpoint.with_suffix("")
    data = json.loads(src.with_suffix(".json").read_text(encoding="utf-8"))
    provenance = data["provenance"]
    for key in ("train_cases", "val_cases", "replay_cases"):
        provenance[key] = [Path(p).name for p in provenance.get(key, [])]
    if provenance.get("init"):
        provenance["init"] = Path(provenance["init"]).name  # the file it started from, not a folder of this machine
    if "model_card" not in data:  # published again (a new card or new figures): it still comes from the run's file
        provenance["published_from"] = args.checkpoint.name
    # the card may name the reproducible command (a run finished with --resume records that) and add a note
    # (published again, the run's own figures are in the earlier card: its metrics may lack them)
    earlier = {k: v for k, v in ((data.get("model_card") or {}).get("training") or {}).items() if v is not None}
    card["training"] = {"command": provenance.get("command"), "seconds": info.metrics.get("elapsed_s"), "epochs": info.metrics.get("epoch"), "torch": provenance.get("torch"),
                        **earlier, **(card.get("training") or {})}
    if args.held_out:
        card["held_out_figures"] = _read_json(args.held_out, "a python -m benchmarks.real_heldout result", held_out_summary)
    if args.patterns:
        card["held_out_figures_by_sequences"] = _read_json(args.patterns, "a python -m benchmarks.real_heldout --patterns result", patterns_summary)
    if args.postprocessing:
        chosen = _read_json(args.postprocessing, "a python -m benchmarks.postprocessing result", lambda d: d["results"]["chosen"]["declared"])
        card["postprocessing"] = (card.get("postprocessing") or {}) | chosen
    # the Predictor reads these from the checkpoint: the shipped model's masks are what the card measured
    data["preprocessing"].update({k: v for k, v in (card.get("postprocessing") or {}).items() if k in POSTPROCESSING_KEYS})
    data["intended_use"] = card["intended_use"]
    data["model_card"] = card
    with atomic_output(args.dest.with_suffix(".safetensors")) as tmp:
        shutil.copyfile(src.with_suffix(".safetensors"), tmp)
    write_text_atomic(args.dest.with_suffix(".json"), json.dumps(data, indent=2) + "\n")
    return data


if __name__ == "__main__":
    raise SystemExit(main())
