import json

import torch

from napari_sevnet.checkpoint import CheckpointInfo, load_checkpoint, save_checkpoint
from napari_sevnet.model import build_model


def tiny_info():
    return CheckpointInfo(architecture={"name": "sevnet", "config": {"preset": "tiny"}})


def test_round_trip_is_exact(tmp_path):
    torch.manual_seed(1)
    model = build_model("sevnet", {"preset": "tiny"})
    info = tiny_info()
    info.metrics = {"dice": {"WT": 0.5}}
    meta = save_checkpoint(tmp_path / "m", model, info)
    data = json.loads(meta.read_text(encoding="utf-8"))
    assert data["modalities"] == ["t1", "t1ce", "t2", "flair"] and data["regions"] == ["WT", "TC", "ET"]
    assert data["label_convention"] == "brats2021" and "preprocessing" in data
    loaded, linfo = load_checkpoint(tmp_path / "m.safetensors")
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    assert linfo.metrics == {"dice": {"WT": 0.5}}
    assert not list(tmp_path.glob(".*"))  # no temporary files left


def test_attention_caveat_only_when_the_card_measured_static_excitations(tmp_path):
    from napari_sevnet.checkpoint import attention_caveat

    save_checkpoint(tmp_path / "m", build_model("sevnet", {"preset": "tiny"}), tiny_info())
    assert attention_caveat(tmp_path / "m.json") is None, "no measurement, no claim"
    data = json.loads((tmp_path / "m.json").read_text(encoding="utf-8"))
    for across_cases, expected in ((0.003, True), (0.08, False)):
        data["model_card"] = {"held_out_figures": {"se_spread": {"across_cases": across_cases, "across_channels": 0.31}}}
        (tmp_path / "m.json").write_text(json.dumps(data), encoding="utf-8")
        caveat = attention_caveat(tmp_path / "m.json")
        assert (caveat is not None) == expected and (not expected or "0.003" in caveat)
    assert attention_caveat(tmp_path / "missing.json") is None and attention_caveat(None) is None


def test_describe_says_whose_held_out_figures_a_model_carries(tmp_path):
    """Its own on cases it never saw; a recipe's estimate when these weights trained on those cases too."""
    from napari_sevnet.checkpoint import describe

    save_checkpoint(tmp_path / "m", build_model("sevnet", {"preset": "tiny"}), tiny_info())
    data = json.loads((tmp_path / "m.json").read_text(encoding="utf-8"))
    data["model_card"] = {"name": "m", "held_out_figures": {"cases": ["a", "b"], "mean": {"WT": {"dice": 0.85}}}}
    for train_cases, recipe in ((["c"], False), (["a", "b", "c"], True)):
        data["provenance"] = {"train_cases": train_cases}
        (tmp_path / "m.json").write_text(json.dumps(data), encoding="utf-8")
        text = describe(tmp_path / "m.json")
        assert "WT 0.85" in text and ("of the same recipe trained without those cases" in text) == recipe
