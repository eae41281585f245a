"""The npe2 manifest is valid and every python_name in it imports (no Qt needed)."""

import importlib
from pathlib import Path

import pytest
import yaml

import napari_sevnet

MANIFEST = Path(napari_sevnet.__file__).parent / "napari.yaml"


def test_every_python_name_imports():
    commands = yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))["contributions"]["commands"]
    assert len(commands) >= 6
    for command in commands:
        module, _, attr = command["python_name"].partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), command["id"]


def test_npe2_validate():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(MANIFEST)
    manifest.validate_imports()
    assert manifest.name == "napari-sevnet"
    assert {w.display_name for w in manifest.contributions.widgets} == {"Segment", "Attention", "Export", "Fine-tune", "Worklist", "Correct", "Read-out", "Prepare raw scans", "Assign sequences"}


@pytest.mark.slow
def test_npe2_validate_command():
    import shutil
    import subprocess
    import sys

    npe2 = shutil.which("npe2") or str(Path(sys.executable).parent / "npe2")
    proc = subprocess.run([npe2, "validate", "napari-sevnet"], capture_output=True, encoding="utf-8", timeout=300)  # it prints a check mark
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "valid" in (proc.stdout + proc.stderr).lower()
