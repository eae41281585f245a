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
