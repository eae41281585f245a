"""Shared fixtures: small phantoms on disk, a seeded random checkpoint, the real scans when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from napari_sevnet.checkpoint import CheckpointInfo, save_checkpoint
from napari_sevnet.model import build_model
from napari_sevnet.phantom import write_phantom

REAL_DATA = Path(os.environ.get("SEVNET_REAL_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
SMALL = (48, 56, 48)


def real_case(name: str) -> Path:
    """Path of a real shared case, or skip the test saying why."""
    path = REAL_DATA / name
    if not path.is_dir():
        pytest.skip(f"real scan {name} not present under {REAL_DATA} (set SEVNET_REAL_DATA to its folder)")
    return path


@pytest.fixture(autouse=True)
def recovery_folder(tmp_path_factory, monkeypatch) -> Path:
    """Each test keeps its recovery copies to itself (the phantoms are shared: a copy of one test's edits would come back in the next)."""
    from napari_sevnet import recovery

    folder = tmp_path_factory.mktemp("recovery")
    monkeypatch.setenv("SEVNET_RECOVERY_DIR", str(folder))
    yield folder
    recovery.flush()  # a copy still due is written here, not into the next test's folder


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    """Three small BraTS-2021-layout phantom cases (seeds 0..2)."""
    root = tmp_path_factory.mktemp("phantoms")
    for seed in range(3):
        write_phantom(root, seed, SMALL)
    return root


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory) -> Path:
    """A seeded, randomly initialised tiny SEV-Net: for plumbing, never for segmentation results."""
    torch.manual_seed(0)
    model = build_model("sevnet", {"preset": "tiny"})
    info = CheckpointInfo(architecture={"name": "sevnet", "config": {"preset": "tiny"}}, preprocessing={"crop": "nonzero-box", "normalize": "zscore-over-brain", "patch_size": [32, 32, 32]})
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", model, info)
