"""``python -m training.publish RUN/best.json DEST``: ship a checkpoint as the package's weights.

Copies the safetensors unchanged and the JSON with its intended use added,
so a reader of the bundled weights knows what they are (and are not) for.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from napari_sevnet.checkpoint import read_info
from napari_sevnet.files import atomic_output, write_text_atomic

INTENDED_USE = (
    "Demo and tests on synthetic phantoms (napari_sevnet.phantom). Trained on 24 synthetic cases (13 on the 240x240x155 BraTS grid, 11 smaller); "
    "NOT validated on patient data and NOT for clinical use. Fine-tune on real, expert-labelled scans first."
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.publish", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("dest", type=Path, help="destination stem, e.g. napari_sevnet/weights/sevnet_lite_phantom")
    args = parser.parse_args(argv)
    info = read_info(args.checkpoint)
    src = args.checkpoint.with_suffix("")
    with atomic_output(args.dest.with_suffix(".safetensors")) as tmp:
        shutil.copyfile(src.with_suffix(".safetensors"), tmp)
    data = json.loads(src.with_suffix(".json").read_text())
    data["intended_use"] = INTENDED_USE
    data["provenance"]["published_from"] = str(args.checkpoint)
    data["provenance"]["make_target"] = "make demo-weights"
    write_text_atomic(args.dest.with_suffix(".json"), json.dumps(data, indent=2) + "\n")
    print(f"published {args.dest} (validation {info.metrics.get('dice')})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
