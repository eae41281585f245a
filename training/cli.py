"""``sevnet-train --config training/configs/X.yaml [key=value ...]``: train, fine-tune or resume.

Runs as one process or under ``torchrun --nproc_per_node N`` (DDP). With
``--progress-json`` every step, epoch and validation is one JSON object per
line on stdout (the fine-tune widget reads them); errors end with one
``{"event": "error", "message": ...}`` line and exit code 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

from napari_sevnet.errors import InputError
from training import events


def _stop_on_sigterm(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="sevnet-train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, help="YAML config (see training/configs/)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. lr=1e-4 model.name=vnet")
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue a stopped run from its last finished epoch")
    parser.add_argument("--init", type=Path, metavar="CHECKPOINT", help="fine-tune: start from this checkpoint")
    parser.add_argument("-o", "--output", help="run folder (overrides the config's output)")
    parser.add_argument("--progress-json", action="store_true", help="JSON-lines progress on stdout for programs")
    args = parser.parse_intermixed_args(argv)  # overrides may come before and after the options
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)

    signal.signal(signal.SIGTERM, _stop_on_sigterm)  # the plugin's Cancel: stop like Ctrl-C, checkpoints intact

    import torch

    from napari_sevnet.inference import enable_huge_pages
    from training.config import load_config
    from training.loop import train

    enable_huge_pages()

    try:
        config_path = args.config
        if args.resume and config_path is None:
            config_path = args.resume / "config.yaml"
            if not config_path.is_file():
                raise InputError(args.resume, "is not a run folder of sevnet-train (it holds no config.yaml): name the -o folder of the run to continue")
        overrides = list(args.overrides)
        if args.init:
            overrides.append(f"init={args.init}")
        if args.output:
            overrides.append(f"output={args.output}")
        cfg = load_config(config_path, overrides)
        train(cfg, resume=args.resume, progress_json=args.progress_json)
    except (InputError, ValueError, FileNotFoundError) as exc:
        if args.progress_json:
            print(json.dumps(events.event(events.ERROR, message=str(exc))), flush=True)
        print(f"sevnet-train: error: {exc}", file=sys.stderr)
        return 1
    except torch.cuda.OutOfMemoryError as exc:  # a GPU too small for the batch and patch: say what to change, not a traceback
        message = (f"the GPU ran out of memory ({str(exc).splitlines()[0][:120]}): train with a smaller batch_size (e.g. batch_size=1) or patch_size "
                   "(e.g. patch_size=[96,96,96]), or on the CPU (CUDA_VISIBLE_DEVICES= sevnet-train ..., or the Fine-tune dock's Device: cpu); "
                   "epochs already finished are kept (--resume RUN_DIR)")
        if args.progress_json:
            print(json.dumps(events.event(events.ERROR, message=message)), flush=True)
        print(f"sevnet-train: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if args.progress_json:
            print(json.dumps(events.event(events.STOPPED, message="stopped; the last finished epoch is saved")), flush=True)
        print("sevnet-train: interrupted; the last finished epoch is saved (resume with --resume RUN_DIR)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
