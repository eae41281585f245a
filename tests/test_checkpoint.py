import json

import pytest
import torch

from napari_sevnet.checkpoint import CheckpointInfo, load_checkpoint, read_info, save_checkpoint
from napari_sevnet.errors import InputError
from napari_sevnet.model import build_model


def tiny_info():
    return CheckpointInfo(architecture={"name": "sevnet", "config": {"preset": "tiny"}})


def test_round_trip_is_exact(tmp_path):
    torch.manual_seed(1)
    model = build_model("sevnet", {"preset": "tiny"})
    info = tiny_info()
    info.metrics = {"dice": {"WT": 0.5}}
    meta = save_checkpoint(tmp_path / "m", model, info)
    data = json.loads(meta.read_text())
    assert data["modalities"] == ["t1", "t1ce", "t2", "flair"] and data["regions"] == ["WT", "TC", "ET"]
    assert data["label_convention"] == "brats2021" and "preprocessing" in data
    loaded, linfo = load_checkpoint(tmp_path / "m.safetensors")
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    assert linfo.metrics == {"dice": {"WT": 0.5}}
    assert not list(tmp_path.glob(".*"))  # no temporary files left


def test_pickle_checkpoint_is_refused_and_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "model.pt"
    torch.save({"state": Evil()}, path)
    with pytest.raises(InputError, match="pickle"):
        load_checkpoint(path)
    assert not marker.exists()


def test_wrong_shapes_and_missing_fields(tmp_path):
    model = build_model("sevnet", {"preset": "tiny"})
    save_checkpoint(tmp_path / "m", model, tiny_info())
    meta = tmp_path / "m.json"
    data = json.loads(meta.read_text())
    data["architecture"]["config"] = {"preset": "lite"}  # weights no longer fit
    meta.write_text(json.dumps(data))
    with pytest.raises(InputError, match="do not fit"):
        load_checkpoint(meta)
    data["architecture"]["config"] = {"preset": "tiny", "in_channels": 2}
    meta.write_text(json.dumps(data))
    with pytest.raises(InputError, match="do not fit"):
        load_checkpoint(meta)
    del data["modalities"]
    meta.write_text(json.dumps(data))
    with pytest.raises(InputError, match="lacks fields"):
        read_info(meta)
    meta.write_text("{not json")
    with pytest.raises(InputError, match="unreadable"):
        read_info(meta)
    (tmp_path / "m.safetensors").write_bytes(b"garbage")
    meta.write_text(json.dumps(tiny_info().to_json()))
    with pytest.raises(InputError, match="safetensors"):
        load_checkpoint(meta)
