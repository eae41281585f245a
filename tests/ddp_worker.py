"""Run by torchrun in test_training: train, then save this rank's final weights for comparison."""

import os
import sys

from safetensors.torch import save_file

from training import loop
from training.config import load_config

models = []
_build = loop.build_model
loop.build_model = lambda name, config: models.append(_build(name, config)) or models[-1]

loop.train(load_config(None, sys.argv[2:]))
state = {k: v.detach().contiguous() for k, v in models[0].state_dict().items()}
save_file(state, os.path.join(sys.argv[1], f"rank{os.environ['RANK']}.safetensors"))
