"""The trainer: config, data, augmentation, one step, resume, fine-tune, two Gloo processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from napari_sevnet.checkpoint import CheckpointInfo, load_checkpoint, save_checkpoint
from napari_sevnet.errors import InputError
from napari_sevnet.model import build_model
from napari_sevnet.phantom import write_phantom
from training.config import TrainConfig, from_dict, load_config, save_config, to_dict
from training.data import AugmentConfig, PatchDataset, RandBiasFieldPerModality, discover_cases, patch_transform, split_cases
from training.loop import region_loss, train

ROOT = Path(__file__).resolve().parents[1]


def small_config(phantom_dir, tmp_path, **overrides) -> TrainConfig:
    data = {
        "model": {"name": "sevnet", "config": {"preset": "tiny"}},
        "data": {"roots": [str(phantom_dir)], "val_cases": 1, "cache_dir": str(tmp_path / "cache")},
        "patch_size": [32, 32, 32],
        "batch_size": 2,
        "epochs": 2,
        "steps_per_epoch": 2,
        "val_every": 1,
        "output": str(tmp_path / "run"),
    }
    data.update(overrides)
    return from_dict(data)


def test_config_round_trip_and_overrides(tmp_path):
    cfg = load_config(ROOT / "training" / "configs" / "phantom_demo.yaml", ["lr=1e-4", "model.name=vnet", "augment.elastic=true"])
    assert cfg.lr == 1e-4 and cfg.model.name == "vnet" and cfg.augment.elastic is True
    assert Path(cfg.data.roots[0]).is_absolute() and cfg.data.roots[0].endswith("data/phantoms")
    save_config(cfg, tmp_path / "c.yaml")
    assert to_dict(load_config(tmp_path / "c.yaml")) == to_dict(cfg)
    with pytest.raises(ValueError, match="unknown keys"):
        from_dict({"learning_rate": 1})
    with pytest.raises(ValueError, match="optimizer"):
        from_dict({"optimizer": "lion"})
    with pytest.raises(ValueError, match="bce_weight"):
        from_dict({"bce_weight": -1})


def test_the_loss_weighs_cross_entropy_as_configured():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 3, 8, 8, 8), (torch.rand(2, 3, 8, 8, 8) > 0.5).float()
    dice_alone, default, double = (float(region_loss(w)(logits, target)) for w in (0.0, 1.0, 2.0))
    bce = float(torch.nn.functional.binary_cross_entropy_with_logits(logits, target))
    assert default == pytest.approx(dice_alone + bce, rel=1e-5) and double == pytest.approx(dice_alone + 2 * bce, rel=1e-5)


def test_every_shipped_config_loads():
    configs = sorted((ROOT / "training" / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        load_config(path)


def test_one_case_in_two_training_folders_is_refused(phantom_dir, tmp_path):
    """With data.roots=[originals, corrections] the first root's mask won without a word."""
    corrections = tmp_path / "corrections"
    shutil.copytree(phantom_dir / "phantom_0001", corrections / "phantom_0001")
    with pytest.raises(InputError, match="phantom_0001.*holds too"):
        discover_cases([phantom_dir, corrections])
    assert len(discover_cases([phantom_dir, phantom_dir])) == 3, "one folder named twice is one case"


def test_data_discovery_of_both_layouts_and_split(phantom_dir, tmp_path):
    from tests.test_io import AFFINES, write_case

    write_case(tmp_path / "c2023", AFFINES["RAS"], naming="brats2023")
    refs = discover_cases([phantom_dir, tmp_path])
    assert [r.case_id for r in refs] == ["case", "phantom_0000", "phantom_0001", "phantom_0002"]
    by_sequence = tmp_path / "more" / "patient_7"  # files named by their sequence alone: the folder is the case
    by_sequence.mkdir(parents=True)
    for role in ("t1", "t1ce", "t2", "flair", "seg"):
        shutil.copy(phantom_dir / "phantom_0001" / f"phantom_0001_{role}.nii.gz", by_sequence / f"{role.upper()}.nii.gz")
    (ref,) = discover_cases([tmp_path / "more"])
    assert ref.case_id == "patient_7" and not ref.missing
    assert PatchDataset([ref], tmp_path / "cache", [32, 32, 32], AugmentConfig()) is not None
    (tmp_path / "split.json").write_text(json.dumps({"train": ["phantom_0000", "case"], "val": ["phantom_0002"]}), encoding="utf-8")
    cfg = small_config(phantom_dir, tmp_path).data
    cfg.split = str(tmp_path / "split.json")
    train_refs, val_refs = split_cases(refs, cfg)
    assert [r.case_id for r in train_refs] == ["phantom_0000", "case"] and [r.case_id for r in val_refs] == ["phantom_0002"]
    for leak, said in (({"held_out": ["case"]}, "held-out cases"), ({"val": ["phantom_0002", "case"]}, "both training and validation")):
        (tmp_path / "split.json").write_text(json.dumps({"train": ["phantom_0000", "case"], "val": ["phantom_0002"], **leak}), encoding="utf-8")
        with pytest.raises(InputError, match=said):
            split_cases(refs, cfg)
    cfg.split, cfg.val_cases, cfg.folds = None, None, 2
    folds = [split_cases(refs, type(cfg)(**{**cfg.__dict__, "fold": k}))[1] for k in range(2)]
    assert sorted(r.case_id for f in folds for r in f) == sorted(r.case_id for r in refs)
    # the Fine-tune dock's rule: a fold kept out only from five cases on (with two, keeping one out harmed both it and other patients)
    cfg.folds, cfg.keep_out_from = 5, 5
    assert split_cases(refs, cfg) == (refs, []), "four cases: all trained on"
    assert len(split_cases(refs + [refs[0]], cfg)[1]) == 1, "five: a fifth kept out"
    cfg.val_cases = 1
    assert len(split_cases(refs, cfg)[1]) == 1, "a number of validation cases given is kept whatever the count"


def test_preprocessing_is_cached(phantom_dir, tmp_path):
    refs = discover_cases([phantom_dir])[:1]
    PatchDataset(refs, tmp_path, [32, 32, 32], AugmentConfig())
    cached = list(tmp_path.glob("*.npz"))
    assert len(cached) == 1
    mtime = cached[0].stat().st_mtime_ns
    PatchDataset(refs, tmp_path, [32, 32, 32], AugmentConfig())
    assert cached[0].stat().st_mtime_ns == mtime


def test_augmentation_keeps_image_and_mask_aligned():
    # the mask is a function of the image: any misalignment after crop/flip/rotation breaks it
    rng = np.random.default_rng(0)
    image = np.zeros((4, 40, 40, 40), np.float32)
    image[:, 10:25, 12:30, 5:20] = 5.0
    image += rng.normal(0, 0.01, image.shape).astype(np.float32)
    label = np.repeat((image[:1] > 2.5).astype(np.float32), 3, axis=0)
    transform = patch_transform([24, 24, 24], AugmentConfig(rotate_degrees=10, intensity_scale=0.0, intensity_shift=0.0))
    transform.set_random_state(1)
    for _ in range(8):
        out = transform({"image": image, "label": label, "fg": label[:1]})[0]
        img, lab = np.asarray(out["image"]), np.asarray(out["label"])
        assert img.shape == (4, 24, 24, 24) and lab.shape == (3, 24, 24, 24)
        agree = ((img[0] > 2.5) == (lab[0] > 0.5)).mean()
        assert agree > 0.97


def test_bias_field_is_smooth_per_modality_and_keeps_background_and_statistics():
    rng = np.random.default_rng(0)
    image = np.zeros((4, 32, 40, 32), np.float32)
    image[:, 4:28, 4:36, 4:28] = rng.normal(0, 1, (4, 24, 32, 24))
    brain = image[0] != 0
    transform = RandBiasFieldPerModality(0.1, prob=1.0)
    transform.set_random_state(3)
    out = transform({"image": image})["image"]
    assert (out[:, ~brain] == 0).all()  # the background stays zero
    ratios = []
    for c in range(4):
        assert abs(out[c][brain].mean() - image[c][brain].mean()) < 1e-4 and abs(out[c][brain].std() - image[c][brain].std()) < 1e-3
        # what changed is a smooth gain: the voxel-wise ratio of the shifted intensities varies slowly in space
        shifted_in, shifted_out = image[c] - image[c][brain].min(), out[c] - out[c][brain].min()
        gain = np.where(brain, shifted_out / np.maximum(shifted_in, 1e-3), np.nan)
        left, right = np.nanmedian(gain[:, :, 4:10]), np.nanmedian(gain[:, :, 22:28])
        ratios.append(left / right)
        assert np.corrcoef(image[c][brain], out[c][brain])[0, 1] > 0.8
    assert max(abs(r - 1) for r in ratios) > 0.05  # a field that changes the gain across the brain
    assert len({round(r, 3) for r in ratios}) == 4  # each sequence its own field


def test_one_step_lowers_the_loss_on_a_fixed_batch(phantom_dir, tmp_path):
    torch.manual_seed(0)
    ds = PatchDataset(discover_cases([phantom_dir]), tmp_path, [32, 32, 32], AugmentConfig())
    ds.transform.set_random_state(0)
    x, y = (torch.stack(t) for t in zip(*[ds[i] for i in range(2)]))
    model = build_model("sevnet", {"preset": "tiny"})
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = region_loss()
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]


def test_training_writes_a_complete_run(phantom_dir, tmp_path):
    run = train(small_config(phantom_dir, tmp_path, optimizer="nadam", schedule="cosine", keep_epochs=True))
    for name in ("config.yaml", "data.json", "metrics.csv", "best.json", "best.safetensors", "last.json", "resume_state.pt"):
        assert (run / name).is_file(), name
    # each epoch's weights kept for weight averaging; the last of them is the last checkpoint
    assert sorted(p.name for p in run.glob("epoch_*.json")) == ["epoch_001.json", "epoch_002.json"]
    last, first, second = (load_file(run / f"{name}.safetensors") for name in ("last", "epoch_001", "epoch_002"))
    assert second.keys() == last.keys()
    assert all(torch.equal(v, last[k]) for k, v in second.items())
    assert not all(torch.equal(v, last[k]) for k, v in first.items())
    rows = (run / "metrics.csv").read_text(encoding="utf-8").splitlines()
    assert rows[0].startswith("epoch,train_loss") and len(rows) == 3
    model, info = load_checkpoint(run / "best.json")
    assert info.provenance["seed"] == 0 and info.provenance["train_cases"] and "dice" in info.metrics
    assert list(run.glob("tensorboard/events.*"))


def test_the_two_hour_recipe_runs_on_phantoms(phantom_dir, tmp_path):
    """make real-weights's configs (the two-hour recipe) as shipped, shrunk to a few small steps: part 1 from the phantom weights, part 2 and its average."""
    from training.average import average

    configs = ROOT / "training" / "configs"
    small = [f"data.roots=[{phantom_dir}]", "data.split=null", "data.val_cases=1", f"data.cache_dir={tmp_path / 'cache'}",
             "patch_size=[32,32,32]", "steps_per_epoch=1", "val_every=1"]
    part1 = train(load_config(configs / "sevnet_real_brats_2h.yaml", [*small, "epochs=1", f"output={tmp_path / 'part1'}"]))
    _, info = load_checkpoint(part1 / "last.json")
    assert info.provenance["init"].endswith("napari_sevnet/weights/sevnet_lite_phantom.json")
    assert info.architecture["config"]["se_squeeze"] == "mean_max" and info.preprocessing["sequence_dropout"] == 0.5
    part2 = train(load_config(configs / "sevnet_real_brats_2h_swa.yaml",
                              [*small, "epochs=2", f"init={part1 / 'last.json'}", f"output={tmp_path / 'part2'}"]))
    model, averaged = average([part2 / "epoch_002.json", part2 / "epoch_001.json"])
    snapshots = [load_file(part2 / f"epoch_00{n}.safetensors") for n in (1, 2)]
    key = "head.weight"
    torch.testing.assert_close(model.state_dict()[key], (snapshots[0][key] + snapshots[1][key]) / 2)
    assert averaged.architecture["config"]["se_squeeze"] == "mean_max"


def test_resume_equals_an_uninterrupted_run(phantom_dir, tmp_path, monkeypatch):
    from training import loop

    full = train(small_config(phantom_dir, tmp_path / "a", epochs=3))
    log_row = loop._log_row

    def killed_after_first_epoch(path, epoch, *args):
        log_row(path, epoch, *args)
        raise KeyboardInterrupt  # the epoch's state is on disk, as when a run is killed here

    monkeypatch.setattr(loop, "_log_row", killed_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(small_config(phantom_dir, tmp_path / "b", epochs=3))
    monkeypatch.setattr(loop, "_log_row", log_row)
    run_b = tmp_path / "b" / "run"
    resumed = train(load_config(run_b / "config.yaml"), resume=run_b)
    a, b = load_file(full / "last.safetensors"), load_file(resumed / "last.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    assert len((run_b / "metrics.csv").read_text(encoding="utf-8").splitlines()) == 4  # header + 3 epochs, none twice


def test_a_finished_run_trained_longer_follows_the_stretched_schedule(phantom_dir, tmp_path):
    """Resumed with more epochs, a poly run goes on at (1 - 1/3)^0.9 of its rate, not at the 0 its last epoch ended on."""
    run = train(small_config(phantom_dir, tmp_path, epochs=1))
    before = load_file(run / "last.safetensors")
    train(load_config(run / "config.yaml", ["epochs=3"]), resume=run)
    rates = [float(row.split(",")[2]) for row in (run / "metrics.csv").read_text(encoding="utf-8").splitlines()[1:]]
    assert rates == pytest.approx([3e-3, 3e-3 * (2 / 3) ** 0.9, 3e-3 * (1 / 3) ** 0.9])
    after = load_file(run / "last.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before), "the added epochs trained"


def test_paths_typed_on_the_command_line_are_kept_from_where_they_were_typed(phantom_dir, tmp_path, monkeypatch):
    """``data.roots=[cases]`` saved as typed would send a later ``--resume`` from another folder to the wrong place."""
    monkeypatch.chdir(phantom_dir.parent)
    cfg = load_config(ROOT / "training" / "configs" / "phantom_demo.yaml", [f"data.roots=[{phantom_dir.name}]", "init=w.json", "output=run"])
    assert cfg.data.roots == [str(phantom_dir)] and cfg.init == str(phantom_dir.parent / "w.json") and cfg.output == str(phantom_dir.parent / "run")
    assert cfg.data.val_cases == 6, "an override of one key keeps the config's others"
    assert load_config(None, [f"data.roots={phantom_dir}"]).data.roots == [str(phantom_dir)]


def test_fine_tune_from_checkpoint_with_frozen_encoder_and_replay(phantom_dir, tmp_path, capsys, caplog):
    base = train(small_config(phantom_dir, tmp_path / "base", epochs=1, patch_size=[24, 24, 24]))
    declared = json.loads((base / "last.json").read_text(encoding="utf-8"))
    declared["preprocessing"]["min_component_ml"] = 0.5  # as the shipped default declares its cleanup
    (base / "last.json").write_text(json.dumps(declared), encoding="utf-8")
    cfg = small_config(phantom_dir, tmp_path / "ft", epochs=1, init=str(base / "last.json"), freeze_encoder=True, lr=1e-2, patch_size=None)
    cfg.model.config = None  # the architecture comes from the checkpoint
    replay = tmp_path / "replay"
    write_phantom(replay, 7, (32, 40, 32))  # an original case the fine-tune set lacks
    shutil.copytree(phantom_dir / "phantom_0000", replay / "phantom_0000")  # and the original of one it holds corrected
    cfg.data.replay_roots = [str(replay)]
    capsys.readouterr()
    run = train(cfg, progress_json=True)
    assert json.loads((run / "data.json").read_text(encoding="utf-8"))["replay"] == ["phantom_0007"], "the original mask never contradicts its correction"
    validations = [e for e in map(json.loads, capsys.readouterr().out.splitlines()) if e["event"] == "validation"]
    assert [e["epoch"] for e in validations] == [0, 1], "a fine-tune validates its starting model first (epoch 0)"
    before, after = load_file(base / "last.safetensors"), load_file(run / "last.safetensors")
    assert torch.equal(before["input_stage.convs.body.0.weight"], after["input_stage.convs.body.0.weight"])
    assert not torch.equal(before["head.weight"], after["head.weight"])
    _, info = load_checkpoint(run / "last.json")
    assert info.provenance["init"] == str(base / "last.json") and info.architecture["config"] == {"preset": "tiny"}
    assert info.preprocessing["patch_size"] == [24, 24, 24]  # unset: the model keeps the windows it was trained on
    assert info.preprocessing["min_component_ml"] == 0.5  # and the cleanup its masks were measured with
    from napari_sevnet.checkpoint import training_caveats

    assert training_caveats(run / "last.json") == [], "a fine-tune validated on a case it did not train on"
    cfg = small_config(phantom_dir, tmp_path / "ft2", epochs=1, init=str(base / "last.json"), patch_size=None, steps_per_epoch=1)
    cfg.model.config, cfg.data.val_cases, cfg.data.validate_on_train = None, 0, True  # as the Fine-tune dock runs it
    assert "without replay data" not in caplog.text, "the run with replay data is not warned"
    (caveat,) = training_caveats(train(cfg) / "last.json")
    assert "fine-tuning on 3 corrected case(s) without replay data: on real scans such a fine-tune segmented other patients worse" in caplog.text
    assert "fine-tuned from last.json on 3 case(s) and measured only on cases it trained on" in caveat
    assert "on other patients' real scans, such a fine-tune segmented worse than the model it started from" in caveat, "what was measured, said"


def test_a_run_that_ends_below_its_starting_model_says_so_after_a_resume_too(phantom_dir, tmp_path, caplog, monkeypatch):
    """The Fine-tune dock says when the best epoch falls below epoch 0; a fine-tune run from the command line says it too."""
    import training.loop as loop

    base = train(small_config(phantom_dir, tmp_path / "base", epochs=1, patch_size=[24, 24, 24]))
    scores = iter([0.8, 0.5, 0.6, 0.7])  # the start (epoch 0), then each validation

    def scored(_predictor, _arrays):
        value = next(scores)
        return {"dice": dict.fromkeys(("WT", "TC", "ET"), value), "hd95": dict.fromkeys(("WT", "TC", "ET"), 1.0), "mean_dice": value}

    monkeypatch.setattr(loop, "validate", scored)
    cfg = small_config(phantom_dir, tmp_path / "ft", epochs=1, init=str(base / "last.json"), patch_size=None)
    cfg.model.config = None
    run = train(cfg)
    assert "validation mean Dice, 0.500, is below the starting model's, 0.800 (epoch 0)" in caplog.text
    caplog.clear()
    cfg.epochs = 2  # one more epoch after a resume: the start's figure comes from the saved state
    train(cfg, resume=run)
    assert "validation mean Dice, 0.600, is below the starting model's, 0.800 (epoch 0)" in caplog.text
    caplog.clear()
    cfg.epochs = 3
    scores = iter([0.9])
    train(cfg, resume=run)
    assert "below the starting model's" not in caplog.text, "a best epoch above the start is not warned"


def test_fine_tune_with_replay_scores_the_replay_cases_kept_out_as_other_patients(phantom_dir, tmp_path, capsys, caplog, monkeypatch):
    """benchmarks.finetune_heldout: a fine-tune that fits its case can harm the next patients; kept-out replay cases measure it."""
    from training import events

    base = train(small_config(phantom_dir, tmp_path / "base", epochs=1, patch_size=[24, 24, 24]))
    replay = tmp_path / "replay"
    for seed in (7, 8, 9):
        write_phantom(replay, seed, (32, 40, 32))
    declared = json.loads((base / "last.json").read_text(encoding="utf-8"))
    declared["provenance"]["train_cases"] = [str(replay / "phantom_0007"), str(replay / "phantom_0008")]  # as the shipped model learnt BraTS cases
    (base / "last.json").write_text(json.dumps(declared), encoding="utf-8")
    cfg = small_config(phantom_dir, tmp_path / "ft", epochs=1, init=str(base / "last.json"), patch_size=None, lr=1e-2)
    cfg.model.config, cfg.data.val_cases, cfg.data.validate_on_train = None, 0, True  # as the Fine-tune dock runs it
    cfg.data.replay_roots, cfg.data.replay_check_cases = [str(replay)], 2
    monkeypatch.setattr(events, "OTHERS_TOLERANCE", -1.0)  # any change counts as harm: the warning's path, whatever the phantoms do
    capsys.readouterr()
    run = train(cfg, progress_json=True)
    split = json.loads((run / "data.json").read_text(encoding="utf-8"))
    assert len(split["replay_check"]) == 1 and len(split["replay"]) == 2, "at most half the replay cases are kept out"
    assert split["replay_check"] == ["phantom_0009"], "a case the starting model never trained on is checked first: it stands for new patients"
    assert set(split["replay"]).isdisjoint(split["replay_check"]), "a case scored as another patient is never trained on"
    assert "data.replay_check_cases=2, but 3 replay case(s) keep only 1 out" in caplog.text
    others = [e for e in map(json.loads, capsys.readouterr().out.splitlines()) if e["event"] == "others"]
    assert [e["epoch"] for e in others] == [0, 1] and others[0]["cases"] == split["replay_check"]
    assert others[0]["learnt_by_start"] == 0
    _, info = load_checkpoint(run / "best.json")
    assert info.metrics["other_patients"] == {"cases": split["replay_check"], "learnt_by_start": 0, "start": others[0]["dice"], "dice": others[1]["dice"]}
    assert info.provenance["replay_check_cases"] == [str(replay / split["replay_check"][0])]
    assert "the best checkpoint segments the 1 replay case(s) kept out of the fine-tune" in caplog.text
    from napari_sevnet.checkpoint import training_caveats

    (caveat,) = training_caveats(run / "best.json")
    assert f"on 1 original case(s) kept out of its replay (0 learnt by the model it started from) its Dice went WT {others[0]['dice']['WT']:.2f} -> " in caveat
    caplog.clear()
    train(load_config(run / "config.yaml", ["epochs=2"]), resume=run)
    _, info = load_checkpoint(run / "last.json")
    assert info.metrics["other_patients"]["start"] == others[0]["dice"], "a resumed run compares with the starting model still"
    assert "the best checkpoint segments the 1 replay case(s)" in caplog.text


def test_a_replay_check_on_cases_the_starting_model_learnt_says_it_cannot_tell(phantom_dir, tmp_path, caplog):
    """On real scans two kept-out training cases held while new patients fell (benchmarks.finetune_heldout)."""
    from training.loop import Trainer

    for seed in (7, 8):
        write_phantom(tmp_path / "replay", seed, (32, 40, 32))
    trainer = Trainer(small_config(phantom_dir, tmp_path, data={"roots": [str(phantom_dir)], "replay_check_cases": 1}))
    trainer.replay_refs = discover_cases([tmp_path / "replay"])
    trainer.start_cases = {"phantom_0007", "phantom_0008"}
    (checked,) = trainer._replay_check_cases()
    assert checked.case_id in trainer.start_cases and len(trainer.replay_refs) == 1
    assert "were all learnt by the starting model" in caplog.text and "add labelled cases it never trained on" in caplog.text


def test_l2sp_keeps_a_fine_tune_near_its_starting_weights(phantom_dir, tmp_path):
    """L2-SP: a fine-tune without replay data is pulled back to what the model knew, not only by a smaller rate."""
    base = train(small_config(phantom_dir, tmp_path / "base", epochs=1, patch_size=[24, 24, 24]))
    start = load_file(base / "last.safetensors")

    def drift(l2sp: float) -> float:
        cfg = small_config(phantom_dir, tmp_path / f"ft{l2sp}", epochs=1, steps_per_epoch=4, init=str(base / "last.json"), patch_size=None, lr=1e-2, l2sp=l2sp)
        cfg.model.config = None
        tuned = load_file(train(cfg) / "last.safetensors")
        return sum(float(((tuned[k] - start[k]) ** 2).sum()) for k in start if "running" not in k and start[k].is_floating_point())

    assert drift(100.0) < drift(0.0) / 2
    with pytest.raises(ValueError, match="l2sp=0.1: the penalty pulls a fine-tune toward its init checkpoint"):
        train(small_config(phantom_dir, tmp_path / "scratch", epochs=1, l2sp=0.1))


def test_fine_tune_that_changes_the_se_squeeze_restarts_the_excitations(phantom_dir, tmp_path, caplog):
    base = train(small_config(phantom_dir, tmp_path / "base", epochs=1, patch_size=[24, 24, 24]))
    cfg = small_config(phantom_dir, tmp_path / "ft", epochs=1, init=str(base / "last.json"), lr=1e-9, patch_size=None)
    cfg.model.config = {"se_squeeze": "standardised"}
    cfg.model.name = "vnet"
    run = train(cfg)
    assert "model.name=vnet is not used" in caplog.text, "a fine-tune keeps its checkpoint's network, and says so"
    before, after = load_file(base / "last.safetensors"), load_file(run / "last.safetensors")
    assert not torch.allclose(before["input_stage.se.fc2.bias"], after["input_stage.se.fc2.bias"]), "the SE MLPs restart"
    torch.testing.assert_close(before["head.weight"], after["head.weight"], rtol=1e-4, atol=1e-6)  # the rest is kept
    _, info = load_checkpoint(run / "last.json")
    assert info.architecture["config"] == {"preset": "tiny", "se_squeeze": "standardised"}


def test_progress_json_lines_and_error_line(phantom_dir, tmp_path):
    cmd = [sys.executable, "-m", "training.cli", f"data.roots=[{phantom_dir}]", "model.config.preset=tiny", "patch_size=[32,32,32]", "epochs=1", "steps_per_epoch=2", "data.val_cases=1", f"output={tmp_path / 'run'}", f"data.cache_dir={tmp_path / 'cache'}", "--progress-json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and "step" in kinds and "validation" in kinds
    step = next(e for e in events if e["event"] == "step")
    assert {"epoch", "step", "loss", "eta_s"} <= set(step)
    bad = subprocess.run([sys.executable, "-m", "training.cli", f"data.roots=[{tmp_path / 'nowhere'}]", "--progress-json"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert bad.returncode == 1 and json.loads(bad.stdout.splitlines()[-1])["event"] == "error"
    assert "nowhere" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_two_gloo_processes_end_with_identical_weights(phantom_dir, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517", str(ROOT / "tests" / "ddp_worker.py"), str(tmp_path),
           f"data.roots=[{phantom_dir}]", "model.config.preset=tiny", "patch_size=[32,32,32]", "epochs=2", "steps_per_epoch=2",
           "batch_size=1", "data.val_cases=1", f"output={tmp_path / 'run'}", f"data.cache_dir={tmp_path / 'cache'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    w0, w1 = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    start = load_file(tmp_path / "run" / "last.safetensors")
    assert w0.keys() == w1.keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
        assert torch.equal(w0[k], start[k]), k  # rank 0 saved the same weights
    _, info = load_checkpoint(tmp_path / "run" / "last.json")
    assert info.provenance["world_size"] == 2


def test_compare_trains_each_model_with_the_same_budget(phantom_dir, tmp_path):
    from training.compare import main

    out = tmp_path / "cmp"
    args = ["-o", str(out), "--models", "sevnet,unet2d", f"data.roots=[{phantom_dir}]", "patch_size=[32,32,32]", "epochs=1", "steps_per_epoch=1", "val_every=1", "data.val_cases=1", f"data.cache_dir={tmp_path / 'cache'}"]
    assert main(args) == 0
    result = json.loads((out / "comparison.json").read_text(encoding="utf-8"))
    assert [r["name"] for r in result["rows"]] == ["sevnet", "unet2d"]
    assert all(0 <= r["dice"]["WT"] <= 1 and r["parameters"] > 0 and r["inference_s"] > 0 for r in result["rows"])
    assert result["budget"]["steps"] == 1
    assert "| SEV-Net lite |" in (out / "comparison.md").read_text(encoding="utf-8")


def test_compare_refuses_before_training_and_a_stopped_comparison_resumes(phantom_dir, tmp_path, capsys):
    """Hours of training are not spent on a comparison that would fail at its end or overwrite another."""
    from training.compare import main

    out = tmp_path / "cmp"
    budget = [f"data.roots=[{phantom_dir}]", "patch_size=[32,32,32]", "epochs=1", "steps_per_epoch=1", "data.val_cases=1", f"data.cache_dir={tmp_path / 'cache'}"]
    with pytest.raises(SystemExit):
        main(["-o", str(out), "--models", "sevnet,vnett", *budget])
    assert "unknown model vnett; choose from sevnet, vnet" in capsys.readouterr().err
    assert main(["-o", str(out), "--models", "vnet", *budget[:-2], "data.val_cases=0"]) == 1
    assert "leaves no validation case" in capsys.readouterr().err and not out.exists()

    assert main(["-o", str(out), "--models", "sevnet", *budget]) == 0
    finished = (out / "sevnet" / "best.safetensors").stat().st_mtime_ns
    assert main(["-o", str(out), "--models", "sevnet,vnet", *budget]) == 1
    assert "cmp/sevnet: holds a run already; continue the comparison with --resume" in capsys.readouterr().err
    assert not (out / "vnet").exists()
    assert main(["-o", str(out), "--models", "sevnet,vnet", "--resume", *budget]) == 0
    assert [r["name"] for r in json.loads((out / "comparison.json").read_text(encoding="utf-8"))["rows"]] == ["sevnet", "vnet"]
    assert (out / "sevnet" / "best.safetensors").stat().st_mtime_ns == finished, "the finished model is read back, not trained again"


def test_average_is_the_mean_of_the_snapshots_and_refuses_other_networks_or_an_existing_output(tmp_path, capsys):
    from training.average import main as average_main

    for seed in (1, 2):
        torch.manual_seed(seed)
        tiny = CheckpointInfo(architecture={"name": "sevnet", "config": {"preset": "tiny"}}, metrics={"elapsed_s": 12.0 * seed, "dice": {"WT": 0.9}},
                              provenance={"train_cases": [f"case{seed}", "shared"], "val_cases": ["val"]})
        save_checkpoint(tmp_path / f"s{seed}", build_model("sevnet", {"preset": "tiny"}), tiny)
    snapshots = [load_checkpoint(tmp_path / f"s{seed}.json")[0] for seed in (1, 2)]
    assert average_main([str(tmp_path / "s1.json"), str(tmp_path / "s2.safetensors"), "-o", str(tmp_path / "mean")]) == 0
    averaged, info = load_checkpoint(tmp_path / "mean.json")
    for key, value in averaged.state_dict().items():
        assert torch.allclose(value, (snapshots[0].state_dict()[key] + snapshots[1].state_dict()[key]) / 2, atol=1e-6), key
    assert info.provenance["averaged_from"] == [str(tmp_path / "s1.json"), str(tmp_path / "s2.safetensors")]
    assert info.metrics == {"elapsed_s": 12.0}  # what the first cost to train; no snapshot's scores describe the mean
    assert info.provenance["train_cases"] == ["case1", "case2", "shared"] and info.provenance["val_cases"] == ["val"]  # every case seen

    with pytest.raises(SystemExit):  # nothing is overwritten
        average_main([str(tmp_path / "s1.json"), str(tmp_path / "s2.json"), "-o", str(tmp_path / "mean")])
    assert "mean.safetensors already exists" in capsys.readouterr().err
    save_checkpoint(tmp_path / "vnet", build_model("vnet", {"preset": "tiny"}), CheckpointInfo(architecture={"name": "vnet", "config": {"preset": "tiny"}}))
    with pytest.raises(SystemExit) as exit_info:
        average_main([str(tmp_path / "s1.json"), str(tmp_path / "vnet.json"), "-o", str(tmp_path / "other")])
    assert exit_info.value.code == 2 and "vnet.json: its architecture differs" in capsys.readouterr().err
    assert not (tmp_path / "other.json").exists()


def test_a_model_card_extends_another_and_replaces_only_what_it_names(tmp_path):
    """The held-out model's card is the shipped card with its own name; the rest is shared."""
    from training.publish import load_card

    (tmp_path / "base.yaml").write_text("name: base\nintended_use: research\ntraining_data: {sources: [a], citations: [c]}\n", encoding="utf-8")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nname: child\ntraining_data: {sources: [b]}\n", encoding="utf-8")
    assert load_card(tmp_path / "child.yaml") == {"name": "child", "intended_use": "research", "training_data": {"sources": ["b"], "citations": ["c"]}}
    shipped = load_card(ROOT / "training" / "model_cards" / "sevnet_lite_brats.yaml")
    held_out = load_card(ROOT / "training" / "model_cards" / "sevnet_lite_brats_heldout.yaml")
    assert held_out["known_failures"] == shipped["known_failures"] and held_out["name"] != shipped["name"]
    assert held_out["training_data"]["citations"] == shipped["training_data"]["citations"]


def test_a_training_case_with_voxels_without_a_value_is_trained_on_and_said(tmp_path, caplog):
    import logging

    import nibabel as nib

    from napari_sevnet.phantom import write_phantom
    from training.data import CaseRef, load_preprocessed

    folder = write_phantom(tmp_path / "cases", seed=3, shape=(32, 40, 32))
    t2 = folder / f"{folder.name}_t2.nii.gz"
    img = nib.load(t2)
    data = np.asanyarray(img.dataobj).astype(np.float32)
    data[:2] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine), t2)
    with caplog.at_level(logging.WARNING, logger="training.data"):
        image, _ = load_preprocessed(CaseRef(folder.name, folder), tmp_path / "cache")
    assert np.isfinite(image).all() and any("_t2.nii.gz" in r.getMessage() and "have no value" in r.getMessage() for r in caplog.records)


def test_a_one_label_mask_read_as_necrosis_alone_is_trained_on_but_said(tmp_path, caplog):
    import nibabel as nib

    from training.data import load_preprocessed

    folder = write_phantom(tmp_path / "cases", seed=3, shape=(32, 40, 32))
    seg = folder / f"{folder.name}_seg.nii.gz"
    img = nib.load(seg)
    nib.save(nib.Nifti1Image((np.asanyarray(img.dataobj) > 0).astype(np.uint8), img.affine), seg)
    (ref,) = discover_cases([tmp_path / "cases"])
    _, regions = load_preprocessed(ref, tmp_path / "cache")
    assert np.array_equal(regions[0], regions[1]) and regions[0].any()
    assert f"{seg.name}: holds label 1 alone, read by its BraTS name as necrosis" in caplog.text and "leave the case out" in caplog.text
