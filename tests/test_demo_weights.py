"""The bundled phantom weights really segment phantoms they never saw (README figure: make demo-weights)."""

import json

import pytest

from napari_sevnet.checkpoint import phantom_checkpoint, read_info
from napari_sevnet.inference import Predictor
from napari_sevnet.metrics import dice
from napari_sevnet.phantom import make_phantom
from napari_sevnet.regions import REGIONS

HELD_OUT_SEEDS = (5000, 5001)  # training used seeds 1000-1029


def test_phantom_weights_declare_what_they_are():
    info = read_info(phantom_checkpoint())
    data = json.loads(phantom_checkpoint().read_text(encoding="utf-8"))
    assert info.architecture == {"name": "sevnet", "config": {"preset": "lite", "se_squeeze": "output"}}
    assert "NOT for clinical use" in data["intended_use"]
    assert info.provenance["train_cases"] and info.provenance["seed"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("seed", HELD_OUT_SEEDS)
def test_held_out_phantom_dice_at_least_0_9(seed):
    phantom = make_phantom(seed, (112, 128, 112))
    result = Predictor(phantom_checkpoint(), device="cpu").predict(phantom.image)
    for i, r in enumerate(REGIONS):
        assert dice(result.regions[i], phantom.regions[i]) >= 0.9, r
