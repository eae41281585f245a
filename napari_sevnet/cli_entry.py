"""``python -m napari_sevnet.cli_entry predict|evaluate ...``: the console scripts without installing them."""

import sys

from napari_sevnet.cli import evaluate_main, predict_main

if __name__ == "__main__":
    commands = {"predict": predict_main, "evaluate": evaluate_main}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print("usage: python -m napari_sevnet.cli_entry {predict,evaluate} ...", file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(commands[sys.argv[1]](sys.argv[2:]))
