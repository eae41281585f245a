"""``python -m benchmarks.backends``: does channels-last 3D, torch.compile or ONNX Runtime speed up a window?

One forward pass of the bundled demo model on one training-size window
(96^3, batch 1), median of 5 after a warm-up, against eager PyTorch in the
same process; each variant's largest difference from eager is reported too.
ONNX Runtime is not a dependency: install ``onnxruntime onnx`` to include it
(it is skipped otherwise). Writes ``benchmarks/results/<date>-<host>-backends.json``.
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import socket
import statistics
import tempfile
import time
from pathlib import Path

import napari_sevnet  # noqa: F401  (transparent huge pages on, as in the app)
from benchmarks.run import _timed

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("channels_last_3d", "torch.compile", "onnxruntime")


def _median_s(fn, repeats: int = 5) -> float:
    return statistics.median(_timed(fn, repeats))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.backends", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=96, help="window edge in voxels (the demo model's training patch)")
    parser.add_argument("--backends", default=",".join(BACKENDS), help=f"comma-separated subset of {','.join(BACKENDS)} (eager always runs)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    chosen = set(args.backends.split(","))
    if chosen - set(BACKENDS):
        parser.error(f"unknown backend(s) {sorted(chosen - set(BACKENDS))}; choose from {', '.join(BACKENDS)}")

    import torch

    from napari_sevnet.checkpoint import bundled_checkpoint, load_checkpoint

    model, _ = load_checkpoint(bundled_checkpoint())
    model.eval()
    x = torch.randn(1, 4, args.size, args.size, args.size)
    results: dict = {}
    with torch.inference_mode():
        reference = model(x)
        eager = _median_s(lambda: model(x))
        results["eager"] = {"median_s": eager}

    if "channels_last_3d" in chosen:
        channels_last = copy.deepcopy(model).to(memory_format=torch.channels_last_3d)
        x_cl = x.contiguous(memory_format=torch.channels_last_3d)
        with torch.inference_mode():
            t = _median_s(lambda: channels_last(x_cl))
            results["channels_last_3d"] = {"median_s": t, "speedup": eager / t, "max_abs_diff": float((channels_last(x_cl) - reference).abs().max())}

    if "torch.compile" in chosen:
        compiled = torch.compile(model)
        with torch.inference_mode():
            t0 = time.perf_counter()
            out = compiled(x)
            first = time.perf_counter() - t0
            t = _median_s(lambda: compiled(x))
        results["torch.compile"] = {"first_call_s": first, "median_s": t, "speedup": eager / t, "max_abs_diff": float((out - reference).abs().max())}

    try:
        import onnxruntime as ort
    except ImportError:
        ort = None
    if "onnxruntime" in chosen and ort is None:
        results["onnxruntime"] = {"skipped": "onnxruntime is not installed (pip install onnxruntime onnx)"}
    elif "onnxruntime" in chosen:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["x"], output_names=["y"], opset_version=17)
            options = ort.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        xn = x.numpy()
        out = session.run(None, {"x": xn})[0]
        t = _median_s(lambda: session.run(None, {"x": xn}))
        results["onnxruntime"] = {"version": ort.__version__, "median_s": t, "speedup": eager / t, "max_abs_diff": float(abs(out - reference.numpy()).max())}

    meta = {"date": _dt.datetime.now().isoformat(timespec="seconds"), "host": socket.gethostname(), "torch": torch.__version__, "threads": torch.get_num_threads(), "window": [args.size] * 3}
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / f"{meta['date'][:10]}-{meta['host']}-backends.json"
    target.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n", encoding="utf-8")
    for name, r in results.items():
        print(f"{name:18s} " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()))
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
