"""The benchmark suite itself keeps working: ``python -m benchmarks.run --quick`` (tiny sizes, figures meaningless)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_benchmark_run_writes_json_and_table(tmp_path):
    result = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = tmp_path.glob("*-quick.json")
    data = json.loads(path.read_text(encoding="utf-8"))["results"]
    errors = {f"{section}/{key}": value["error"] for section, entries in data.items() if isinstance(entries, dict) for key, value in entries.items() if isinstance(value, dict) and "error" in value}
    errors.update({section: entries["error"] for section, entries in data.items() if isinstance(entries, dict) and "error" in entries})
    assert not errors, errors
    runs = data["inference"]["phantom"]
    assert {"sevnet-lite (default)", "segresnet-monai-tutorial", "sevnet-faithful", "sevnet-lite + TTA"} <= set(runs)
    assert all(r["median_s"] > 0 and r["peak_rss_mb"] > 0 for r in runs.values())
    assert 0 < data["throughput"]["fraction_of_peak"]
    assert data["gui"]["max_stall_ms"] > 0 and data["finetune_round"]["total_s"] > 0
    table = (tmp_path / "latest-quick.md").read_text(encoding="utf-8")
    assert "vs MONAI SegResNet" in table and "GUI: longest event-loop stall" in table


def test_backends_benchmark_measures_against_eager_and_names_what_it_skipped(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.backends", "--size", "32", "--backends", "channels_last_3d,onnxruntime", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = tmp_path.glob("*-backends.json")
    data = json.loads(path.read_text(encoding="utf-8"))["results"]
    assert data["eager"]["median_s"] > 0 and "torch.compile" not in data
    cl = data["channels_last_3d"]
    assert cl["speedup"] > 0 and cl["max_abs_diff"] < 1e-3  # the same network, another memory layout
    assert "skipped" in data["onnxruntime"] or data["onnxruntime"]["max_abs_diff"] < 1e-2
    bad = subprocess.run([sys.executable, "-m", "benchmarks.backends", "--backends", "tensorrt"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown backend(s) ['tensorrt']" in bad.stderr


def test_gpu_only_run_refuses_clearly_without_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the GPU-only run would start")
    result = subprocess.run([sys.executable, "-m", "benchmarks.run", "--gpu-only", "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--gpu-only needs a CUDA device" in result.stderr
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_se_statistics_tell_a_case_blind_squeeze_from_one_that_sees_the_case(phantom_dir, random_checkpoint):
    """The probe that chose ``mean_max``: the same scan twice gives no spread across cases, two scans do."""
    from benchmarks.se_statistics import measure, table

    first, second = sorted(p for p in phantom_dir.iterdir() if p.is_dir())[:2]
    same = measure(str(random_checkpoint), {"a": first, "a again": first})
    different = measure(str(random_checkpoint), {"a": first, "b": second})
    assert set(same["stages"]) == set(different["stages"]) and "output max" in same["stages"]["enc1"]
    assert all(s["across_cases"] == 0 for row in same["stages"].values() for s in row.values())
    assert all(row["output max"]["across_cases"] > 0 for row in different["stages"].values())
    assert "| **mean** |" in table(different)


def test_real_heldout_scores_with_test_time_augmentation_when_asked(phantom_dir, random_checkpoint, monkeypatch):
    """``--tta`` asks the Predictor for the 8 mirror flips, as the Segment dock's checkbox does."""
    from benchmarks.real_heldout import evaluate
    from napari_sevnet.inference import Predictor

    asked = []
    predict = Predictor.predict
    monkeypatch.setattr(Predictor, "predict", lambda self, image, **kw: asked.append(kw.get("tta")) or predict(self, image, **kw))
    case = sorted(p for p in phantom_dir.iterdir() if p.is_dir())[0]
    plain, flipped = evaluate(str(random_checkpoint), {"a": case}), evaluate(str(random_checkpoint), {"a": case}, tta=True)
    assert asked == [False, True]
    assert set(plain["cases"]["a"]) == set(flipped["cases"]["a"]) and 0 <= flipped["mean"]["WT"]["dice"] <= 1


def test_real_heldout_refuses_a_checkpoint_trained_on_the_cases_it_would_score(random_checkpoint, tmp_path):
    """Figures on cases a model trained on are not held-out: the benchmark names the checkpoint and the cases."""
    from benchmarks.real_heldout import unseen_checkpoint

    meta = json.loads(random_checkpoint.with_suffix(".json").read_text(encoding="utf-8"))
    meta["provenance"] = {"train_cases": ["case_a", "case_b"]}
    seen = tmp_path / "seen"
    seen.with_suffix(".json").write_text(json.dumps(meta), encoding="utf-8")
    seen.with_suffix(".safetensors").write_bytes(random_checkpoint.with_suffix(".safetensors").read_bytes())
    assert unseen_checkpoint(str(seen) + ".json", ["case_c"]) == str(seen) + ".json"
    with pytest.raises(SystemExit, match=r"seen\.json trained on \['case_b'\]"):
        unseen_checkpoint(str(seen) + ".json", ["case_b", "case_c"])


def test_real_heldout_scores_labelled_cases_given_on_the_command_line(phantom_dir, random_checkpoint, tmp_path):
    """``--cases``: the figures on cases of one's own (every labelled case below the folder), not the split's."""
    from benchmarks.real_heldout import main

    out = tmp_path / "own.json"
    assert main(["--cases", str(phantom_dir), "--checkpoint", str(random_checkpoint), "-o", str(out)]) == 0
    result = json.loads(out.read_text(encoding="utf-8"))
    ids = sorted(p.name for p in phantom_dir.iterdir() if p.is_dir())
    assert result["held_out"] == ids and set(result["results"][0]["cases"]) == set(ids)
    assert result["split"].startswith("cases given: ")
    empty = tmp_path / "no_cases"
    empty.mkdir()
    with pytest.raises(SystemExit, match="no_cases.*no labelled BraTS cases"):
        main(["--cases", str(empty), "--checkpoint", str(random_checkpoint)])


@pytest.mark.parametrize("module", ["real_heldout", "rano_agreement", "se_statistics", "raw_scans", "correction", "postprocessing", "finetune_heldout"])
def test_a_benchmark_without_the_real_data_says_where_it_looked_not_a_traceback(module, tmp_path):
    result = subprocess.run([sys.executable, "-m", f"benchmarks.{module}"], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "SEVNET_REAL_DATA": str(tmp_path / "nowhere")}, cwd=Path(__file__).resolve().parents[1])
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-1500:]
    assert "nowhere" in result.stderr and "SEVNET_REAL_DATA" in result.stderr


def test_finetune_heldout_variants_are_the_docks_settings_changed_by_their_parts_and_a_wrong_part_is_refused_first(tmp_path):
    """'replay, lr 1e-4' is the dock's settings with replay at 1e-4; a typo is named before the starting model is scored."""
    from benchmarks.finetune_heldout import VARIANTS, main, variant_overrides

    originals = [tmp_path / "a", tmp_path / "b"]
    assert variant_overrides("replay, lr 1e-4", originals) == [f'data.replay_roots=["{originals[0]}", "{originals[1]}"]', "lr=0.0001"]
    assert variant_overrides("dock") == [] and variant_overrides("frozen-encoder, l2-sp 0.1") == ["freeze_encoder=true", "l2sp=0.1"]
    assert all(any(o.startswith("lr=") for o in variant_overrides(v, originals)) for v in VARIANTS), "each reported variant names its rate"
    for wrong in ("lr fast", "lr -1e-4", "replay; lr 1e-4", "default"):
        with pytest.raises(SystemExit, match="is not one of 'lr X', 'replay'"):
            main(["--case", str(tmp_path), "--variants", "lr 1e-4", wrong, "--work", str(tmp_path / "work")])
    with pytest.raises(SystemExit, match="'lr 1e-3, lr 1e-4': names 'lr' twice"):
        variant_overrides("lr 1e-3, lr 1e-4")
    assert not (tmp_path / "work").exists()


def test_finetune_heldout_fine_tunes_on_one_case_and_scores_it_and_the_others_against_the_start(phantom_dir, random_checkpoint, tmp_path):
    """The Fine-tune dock's loop as a benchmark (plumbing on phantoms and a random model; the figures are the real data's):
    one case exported with its mask, the model fine-tuned on it per variant, a finished run not run again."""
    from benchmarks.finetune_heldout import main

    case, *others = sorted(p for p in phantom_dir.iterdir() if p.is_dir())
    out, work = tmp_path / "ft.json", tmp_path / "work"
    argv = ["--case", str(case), "--others", *map(str, others), "--checkpoint", str(random_checkpoint), "--variants", "dock", "frozen-encoder, lr 1e-3",
            "--epochs", "1", "--steps", "1", "--work", str(work), "-o", str(out)]
    assert main(argv) == 0
    result = json.loads(out.read_text(encoding="utf-8"))
    assert list(result["models"]) == ["start", "fine-tuned, dock", "fine-tuned, frozen-encoder, lr 1e-3"] and result["others"] == [p.name for p in others]
    tuned = result["models"]["fine-tuned, dock"]
    assert set(tuned["own"]["cases"]) == {case.name} and set(tuned["others_vs_start"]["WT"]["per_case"]) == {p.name for p in others}
    assert {"freeze_encoder=true", "lr=0.001"} <= set(result["models"]["fine-tuned, frozen-encoder, lr 1e-3"]["command"])
    assert not any(arg.startswith("lr=") for arg in tuned["command"]), "the dock's own learning rate, from finetune.yaml"
    assert (work / "dataset" / case.name).is_dir() and (work / "dock" / "done").is_file()
    finished = (work / "dock" / "last.json").stat().st_mtime_ns
    assert main(argv) == 0 and (work / "dock" / "last.json").stat().st_mtime_ns == finished, "a finished run is reused"
    assert "| fine-tuned, dock |" in out.with_suffix(".md").read_text(encoding="utf-8")


def test_finetune_heldout_fine_tunes_on_several_cases_as_the_dock_does_and_never_reuses_another_sets_runs(phantom_dir, random_checkpoint, tmp_path):
    """Two corrected cases instead of one (session 42's question, from the project): trained on both, as the dock does
    below five cases, or one kept out to validate on (--val-cases 1), which the table names; a work folder fine-tuned on
    other cases or settings is refused, not reused."""
    from benchmarks.finetune_heldout import main

    first, second, *others = sorted(p for p in phantom_dir.iterdir() if p.is_dir())
    out, work = tmp_path / "ft.json", tmp_path / "work"
    common = ["--others", *map(str, others), "--checkpoint", str(random_checkpoint), "--variants", "dock", "--epochs", "1", "--steps", "1", "--work", str(work)]
    assert main(["--case", str(first), str(second), *common, "-o", str(out)]) == 0
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["cases"] == [first.name, second.name] and result["validated_on"] == []
    assert set(result["models"]["fine-tuned, dock"]["own"]["cases"]) == {first.name, second.name}
    table = out.with_suffix(".md").read_text(encoding="utf-8")
    assert "every one trained on" in table and "on the corrected cases (mean)" in table
    with pytest.raises(SystemExit, match=f"holds the corrected cases {first.name}, {second.name}, not {first.name}; give another --work"):
        main(["--case", str(first), *common])
    with pytest.raises(SystemExit, match="dock: holds a fine-tune run with other settings"):
        main(["--case", str(first), str(second), *common, "--val-cases", "1"])
    with pytest.raises(SystemExit, match="--val-cases 2: keep between 0 and 1 of the 2 corrected case"):
        main(["--case", str(first), str(second), *common, "--val-cases", "2"])
    assert main(["--case", str(first), str(second), *common[:-1], str(tmp_path / "kept"), "--val-cases", "1", "-o", str(out)]) == 0
    (kept,) = json.loads(out.read_text(encoding="utf-8"))["validated_on"]
    assert f"| {kept} (kept out to validate on) |" in out.with_suffix(".md").read_text(encoding="utf-8")


def test_finetune_heldout_sets_the_runs_own_check_on_kept_out_replay_cases_beside_the_next_patients(phantom_dir, random_checkpoint, tmp_path):
    """With replay, the dock's fine-tune scores two replay cases it kept out; the benchmark says whether that check saw the harm."""
    from benchmarks.finetune_heldout import main
    from napari_sevnet.phantom import write_phantom

    case, *others = sorted(p for p in phantom_dir.iterdir() if p.is_dir())
    replay = [write_phantom(tmp_path / "originals", seed, (32, 40, 32)) for seed in (5, 6, 7, 8)]
    out = tmp_path / "ft.json"
    assert main(["--case", str(case), "--others", *map(str, others), "--checkpoint", str(random_checkpoint), "--variants", "replay",
                 "--replay", *map(str, replay), "--epochs", "1", "--steps", "1", "--work", str(tmp_path / "work"), "-o", str(out)]) == 0
    tuned = json.loads(out.read_text(encoding="utf-8"))["models"]["fine-tuned, replay"]
    assert tuned["checkpoint"].endswith("best.json"), "scored as the dock hands it over"
    check = tuned["replay_check"]
    assert len(check["cases"]) == 2 and set(check["cases"]) <= {p.name for p in replay}
    assert check["change"]["WT"] == pytest.approx(check["dice"]["WT"] - check["start"]["WT"])
    assert f"({', '.join(check['cases'])})" in out.with_suffix(".md").read_text(encoding="utf-8")


def test_finetune_heldout_stopped_stops_its_trainer_too(phantom_dir, random_checkpoint, tmp_path):
    """A benchmark killed by a job's time limit (SIGTERM) left its trainer running on, holding the run folder's lock."""
    import signal
    import time

    from filelock import FileLock

    case, *others = sorted(p for p in phantom_dir.iterdir() if p.is_dir())
    work = tmp_path / "work"
    benchmark = subprocess.Popen([sys.executable, "-m", "benchmarks.finetune_heldout", "--case", str(case), "--others", *map(str, others),
                                  "--checkpoint", str(random_checkpoint), "--variants", "dock", "--epochs", "1", "--steps", "100000",
                                  "--work", str(work)], cwd=Path(__file__).resolve().parents[1], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not (work / "dock" / "data.json").is_file():  # the trainer has claimed its folder and started training
        assert benchmark.poll() is None and time.monotonic() < deadline, "the trainer never started"
        time.sleep(0.5)
    benchmark.send_signal(signal.SIGTERM)
    assert benchmark.wait(timeout=120) != 0
    FileLock(str(work / "dock" / ".training.lock")).acquire(timeout=30)  # raises if a trainer still holds it


def _markdown_tables(text: str) -> list[list[str]]:
    """The tables of a markdown text, each as its lines (header, rule, rows)."""
    tables, current = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            current.append(line.rstrip())
        elif current:
            tables.append(current)
            current = []
    return tables


def test_the_readmes_benchmark_tables_are_the_committed_results_own():
    """A README table with the header of a table in benchmarks/results/*.md is a copy of one of those, row for row:
    a benchmark rerun whose figures the README did not take up, or a figure edited by hand, fails here."""
    results: dict[str, list[tuple[str, list[str]]]] = {}
    for path in sorted((ROOT / "benchmarks" / "results").glob("*.md")):
        for table in _markdown_tables(path.read_text(encoding="utf-8")):
            results.setdefault(table[0], []).append((path.name, table))
    copied = set()
    for table in _markdown_tables((ROOT / "README.md").read_text(encoding="utf-8")):
        sources = results.get(table[0], [])
        same = [name for name, theirs in sources if theirs == table]
        assert same or not sources, (f"README table '{table[0][:80]}...' differs from its source "
                                     f"{sorted({name for name, _ in sources})}; copy the benchmark's table again")
        copied.update(same)
    # the tables the README copies today; a renamed column would otherwise leave a table unchecked without a word
    assert {"correction.md", "latest.md", "rano-agreement.md", "raw-scans.md"} <= copied, copied


def test_the_readmes_held_out_figures_are_the_default_models_committed_ones():
    """The README's per-case held-out table of the default model (its headline accuracy) agrees with
    benchmarks/results/real-heldout-default.md on every case and the mean: Dice, HD95 and WT sensitivity / precision."""
    def cells(line: str) -> list[str]:
        return [c.strip().strip("*").replace(" (low-grade)", "") for c in line.strip("|").split("|")]

    source = next(t for t in _markdown_tables((ROOT / "benchmarks" / "results" / "real-heldout-default.md").read_text(encoding="utf-8"))
                  if t[0].startswith("| case | WT Dice"))
    theirs = {cells(row)[0]: cells(row)[1:8] for row in source[2:]}
    readme = next(t for t in _markdown_tables((ROOT / "README.md").read_text(encoding="utf-8")) if t[0].startswith("| case | Dice WT | Dice TC"))
    ours = {cells(row)[0]: cells(row)[1:8] for row in readme[2:] if cells(row)[0] in theirs}
    assert set(ours) == set(theirs), sorted(set(theirs) - set(ours))
    assert ours == theirs
