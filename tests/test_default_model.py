"""The shipped default model: what its card says, that it is small, and that its SE blocks respond to the case."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from napari_sevnet.checkpoint import BUNDLED, PHANTOM, bundled_checkpoint, describe, phantom_checkpoint, read_info
from napari_sevnet.inference import Predictor
from napari_sevnet.io import load_case
from napari_sevnet.phantom import phantom_case
from napari_sevnet.regions import REGIONS

from .conftest import real_case

ROOT = Path(__file__).resolve().parents[1]

# How far one channel's excitation moves between two cases, at the stage where it moves most. Measured with the
# shipped weights (the two-hour recipe, mean + max squeeze from its first step): 0.276 between two phantoms, 0.197
# between BraTS2021_00006 and TCGA-DU-7294; stage 5 of the five-stage recipe: 0.048 and 0.122; stage 3 on all cases:
# 0.029 and 0.124; stage 3 on 15 cases: 0.043 and 0.147; stage 2 (pre-norm squeeze): 0.054 and 0.032, so the real-case
# bound fails for it (docs/default-model-experiments.md, "How the SE squeeze was chosen"); a squeeze blind to the case
# moves 0. Its deepest stages barely move: the test guards the ones that respond.
PHANTOM_MOVE, REAL_MOVE = 0.02, 0.1


def _card() -> dict:
    return json.loads(bundled_checkpoint().read_text(encoding="utf-8"))["model_card"]


def test_default_is_the_real_model_not_the_phantom_one():
    assert BUNDLED != PHANTOM
    info = read_info(bundled_checkpoint())
    assert info.architecture["name"] == "sevnet"
    assert info.architecture["config"].get("se_squeeze") == "mean_max"
    assert "BraTS" in " ".join(_card()["training_data"]["sources"])


def test_default_checkpoint_carries_its_model_card():
    card = _card()
    for key in ("name", "intended_use", "training_data", "preprocessing", "assumptions", "training", "held_out_figures", "known_failures"):
        assert card.get(key), f"the model card lacks {key}"
    assert "not" in card["intended_use"].lower() and "diagnos" in card["intended_use"].lower()
    data = card["training_data"]
    for key in ("sources", "held_out", "citations", "licence_notes"):
        assert data.get(key), f"training_data lacks {key}"
    assert card["training"]["command"] and card["training"]["seconds"] > 0
    figures = card["held_out_figures"]
    assert len(figures["cases"]) >= 5 and set(figures["dice_per_case"]) == set(figures["cases"])
    assert set(figures["mean"]) == set(REGIONS) and figures["se_spread"]["across_channels"] > 0
    text = describe(bundled_checkpoint())  # its own figures: these weights never saw the held-out cases
    assert "Trained on" in text and f"Held-out Dice WT {figures['mean']['WT']['dice']:.2f}" in text


def _held_out_model(figures: dict) -> Path:
    """The model a card's held-out figures were measured on, after checking it never trained on their cases."""
    model = ROOT / figures["model"]
    assert not set(figures["cases"]) & set(read_info(model).provenance["train_cases"]), f"{model.name} trained on a held-out case"
    return model


def test_the_default_reports_its_own_figures_on_cases_it_never_trained_on():
    """The shipped weights are the held-out model's (the rerun on all cases did not pass its check, README): the card's
    held-out figures were measured on these very weights, which ship again beside the benchmarks that score them."""
    card, shipped = _card(), read_info(bundled_checkpoint())
    figures = card["held_out_figures"]
    model = _held_out_model(figures)
    assert set(shipped.provenance["train_cases"]) == set(read_info(model).provenance["train_cases"])
    assert not set(shipped.provenance["train_cases"]) & set(figures["cases"])
    assert model.with_suffix(".safetensors").read_bytes() == bundled_checkpoint().with_suffix(".safetensors").read_bytes()
    assert "held_out_figures" in card["training_data"]["held_out"] and "sevnet_lite_brats_heldout" in card["training_data"]["held_out"]
    assert figures == json.loads(model.read_text(encoding="utf-8"))["model_card"]["held_out_figures"]


def test_default_weights_keep_the_repository_light():
    assert bundled_checkpoint().with_suffix(".safetensors").stat().st_size < 40 * 1024**2


def _largest_move(cases) -> float:
    """Largest difference of one channel's excitation between the two cases over all stages."""
    predictor = Predictor(device="cpu")
    first, second = (predictor.predict(image, spacing=spacing).attention for image, spacing in cases)
    return max(float(np.abs(np.asarray(first[stage]) - np.asarray(second[stage])).max()) for stage in first)


def test_default_excitations_differ_between_two_phantoms():
    cases = [(case.image, case.spacing) for case in (phantom_case(3, (64, 72, 64), contrast=1.0), phantom_case(4, (64, 72, 64), contrast=0.5))]
    assert _largest_move(cases) > PHANTOM_MOVE


@pytest.mark.slow
def test_default_excitations_differ_between_two_real_cases():
    cases = [(case.image, case.spacing) for case in (load_case(real_case(name)) for name in ("BraTS2021_00006", "TCGA-DU-7294"))]
    assert _largest_move(cases) > REAL_MOVE


@pytest.mark.qt
def test_the_segment_dock_says_what_the_default_was_trained_on():
    from napari_sevnet.widgets.segment import _default_model_tooltip

    tip = _default_model_tooltip()
    assert "BraTS" in tip and "Held-out Dice" in tip and "NOT for diagnosis" in tip


def test_the_tta_checkbox_states_what_tta_measured_on_the_held_out_cases():
    """The tooltip's gains are those of benchmarks/results/real-heldout-tta.json (the default with and without TTA)."""
    from napari_sevnet.widgets.segment import TOOLTIPS

    measured = json.loads((ROOT / "benchmarks" / "results" / "real-heldout-tta.json").read_text(encoding="utf-8"))
    (gain,) = measured["paired_vs_first"].values()
    stated = ", ".join(f"{r} {gain[r]['mean']:+.3f}" for r in REGIONS)
    assert f"Dice {stated}" in TOOLTIPS["tta"]


def test_the_default_handles_missing_sequences_and_its_card_gives_figures_per_set():
    info = read_info(bundled_checkpoint())
    assert float(info.preprocessing["sequence_dropout"]) > 0, "trained with sequences left out"
    by_sequences = _card()["held_out_figures_by_sequences"]
    assert {"all four", "FLAIR + T1ce", "T1ce only", "FLAIR only"} <= set(by_sequences["mean_dice"])
    assert by_sequences["cases"] == _card()["held_out_figures"]["cases"]
    _held_out_model(_card()["held_out_figures"])


def test_the_default_segments_a_case_missing_sequences_and_says_what_each_contributed():
    from napari_sevnet.contributions import sequence_contributions

    case = phantom_case(3, (64, 72, 64), contrast=1.0)
    predictor = Predictor(device="cpu")
    result = predictor.predict(case.image, spacing=case.spacing, sequences=("t1ce", "flair"))
    assert result.sequences == ("t1ce", "flair") and any("without T1, T2" in note for note in result.notes), result.notes
    figures = _card()["held_out_figures_by_sequences"]["mean_dice"]["FLAIR + T1ce"]
    assert any(f"WT {figures['WT']:.2f} / TC {figures['TC']:.2f} / ET {figures['ET']:.2f}" in w for w in result.warnings), result.warnings
    drops = sequence_contributions(predictor, case.image, sequences=("t1ce", "t2", "flair"), spacing=case.spacing)
    assert set(drops) == {"t1ce", "t2", "flair"} and all(set(v) == set(REGIONS) for v in drops.values())


def test_default_declares_the_postprocessing_chosen_on_the_training_cases():
    chosen = json.loads((ROOT / "benchmarks" / "results" / "postprocessing.json").read_text(encoding="utf-8"))
    declared = chosen["results"]["chosen"]["declared"]
    info = read_info(bundled_checkpoint())
    assert {k: info.preprocessing.get(k) for k in declared} == declared, "the shipped masks are the ones the benchmark scored"
    assert {k: _card()["postprocessing"][k] for k in declared} == declared and _card()["postprocessing"]["why"]
    predictor = Predictor(device="cpu")
    assert predictor.thresholds == tuple(declared["thresholds"][r] for r in REGIONS)
    assert predictor.min_component_ml == tuple(declared["min_component_ml"][r] for r in REGIONS)
    assert set(chosen["train"]).isdisjoint(chosen["held_out"]), "chosen on training cases, never on held-out ones"


def test_default_fills_the_core_holes_because_the_training_cases_said_so():
    """The hole filling was kept on the training cases' figures alone; the held-out figures were measured with it."""
    from napari_sevnet.inference import POSTPROCESSING_KEYS

    ablation = json.loads((ROOT / "benchmarks" / "results" / "core-holes.json").read_text(encoding="utf-8"))
    results = ablation["results"]
    assert results["shipped"]["setting"]["fill_core_holes"] and not results["fill_core_holes = False"]["setting"]["fill_core_holes"]
    train_tc = {name: res["train"]["mean"]["TC"]["dice"] for name, res in results.items()}
    assert train_tc["shipped"] > train_tc["fill_core_holes = False"]
    assert set(ablation["train"]).isdisjoint(ablation["held_out"])
    shipped = read_info(bundled_checkpoint()).preprocessing
    assert shipped["fill_core_holes"] is True and "fill_core_holes" in _card()["postprocessing"]["why"]
    held_out_model = read_info(_held_out_model(_card()["held_out_figures"])).preprocessing
    assert {k: shipped.get(k) for k in POSTPROCESSING_KEYS} == {k: held_out_model.get(k) for k in POSTPROCESSING_KEYS}
    assert Predictor(device="cpu").fill_core_holes


def test_the_postprocessing_benchmark_applies_what_the_predictor_does():
    from benchmarks.postprocessing import apply, declared

    case = phantom_case(3, (48, 48, 48))
    setting = {"threshold_WT": 0.6, "threshold_TC": 0.4, "threshold_ET": 0.5, "min_ml_WT": 0.5, "min_ml_TC": 0.05, "min_ml_ET": 0.02, "min_et_voxels": 0, "fill_core_holes": True}
    wanted = declared(setting)
    predictor = Predictor(phantom_checkpoint(), "cpu", threshold=wanted["thresholds"], min_component_ml=wanted["min_component_ml"], fill_core_holes=wanted["fill_core_holes"])
    result = predictor.predict(case.image)
    np.testing.assert_array_equal(apply(setting, result.probabilities * 255, case.spacing), result.regions)


def test_publish_writes_the_chosen_postprocessing_into_the_checkpoint(tmp_path):
    from training import publish

    chosen = {"results": {"chosen": {"declared": {"thresholds": {"WT": 0.7, "TC": 0.5, "ET": 0.6}, "min_component_ml": {"WT": 0.5, "TC": 0.5, "ET": 0.5}, "min_et_voxels": 0}}}}
    (tmp_path / "postprocessing.json").write_text(json.dumps(chosen), encoding="utf-8")
    card = ROOT / "training" / "model_cards" / "sevnet_lite_phantom.yaml"
    assert publish.main([str(phantom_checkpoint()), str(tmp_path / "model"), "--card", str(card), "--postprocessing", str(tmp_path / "postprocessing.json")]) == 0
    assert Predictor(tmp_path / "model.json", "cpu").thresholds == (0.7, 0.5, 0.6)
    assert read_info(tmp_path / "model.json").preprocessing["min_component_ml"] == {"WT": 0.5, "TC": 0.5, "ET": 0.5}
    # published again, the training's figures of the earlier card stay (the metrics do not hold them)
    seconds = json.loads(phantom_checkpoint().read_text(encoding="utf-8"))["model_card"]["training"]["seconds"]
    assert seconds and json.loads((tmp_path / "model.json").read_text(encoding="utf-8"))["model_card"]["training"]["seconds"] == seconds


def test_publish_never_replaces_a_checkpoint_unasked_and_names_a_wrong_input_file(tmp_path, capsys):
    from training import publish

    card = ROOT / "training" / "model_cards" / "sevnet_lite_phantom.yaml"
    args = [str(phantom_checkpoint()), str(tmp_path / "model"), "--card", str(card)]
    assert publish.main(args) == 0
    before = (tmp_path / "model.json").read_bytes()
    with pytest.raises(SystemExit):
        publish.main([*args, "--held-out", str(tmp_path / "model.json")])
    assert "model.safetensors already exists; give --replace" in capsys.readouterr().err
    assert (tmp_path / "model.json").read_bytes() == before
    (tmp_path / "other.json").write_text('{"date": "today"}', encoding="utf-8")
    for extra, said in ((["--held-out", str(tmp_path / "other.json")], "other.json: not a python -m benchmarks.real_heldout result"),
                        (["--postprocessing", str(tmp_path / "missing.json")], "missing.json: cannot read it"),
                        (["--card", str(tmp_path / "missing.yaml")], "missing.yaml: cannot read the model card")):
        with pytest.raises(SystemExit) as stopped:
            publish.main([*args, "--replace", *extra])
        err = capsys.readouterr().err
        assert stopped.value.code == 2 and said in err and "Traceback" not in err, err
    assert (tmp_path / "model.json").read_bytes() == before, "a refused publish leaves the earlier one"
    assert publish.main([*args, "--replace"]) == 0 and "replaced" in capsys.readouterr().out


def test_every_result_of_the_phantom_model_says_it_never_saw_a_patient():
    image = phantom_case(seed=3, shape=(48, 64, 64)).image
    phantom = Predictor(phantom_checkpoint(), "cpu").predict(image)
    assert any("synthetic phantoms only" in w and "not to be relied on" in w for w in phantom.warnings), phantom.warnings
    assert not any("synthetic" in w for w in Predictor(device="cpu").predict(image).warnings)
