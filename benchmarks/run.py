"""Benchmarks: speed, memory and responsiveness against what a user would pick instead, in one run.

    python -m benchmarks.run [--quick] [--out benchmarks/results]

Each measurement runs in its own Python process (so peak RSS is that of the
measured thing alone) and prints one JSON object; this runner collects them
into ``<out>/<date>-<host>.json`` and a markdown table ``<out>/latest.md``.
Baselines run in the same session on the same input: MONAI SegResNet
(Myronenko 2018, init_filters 16) with ``sliding_window_inference`` at the
settings of MONAI's BraTS tutorial (roi 240x240x160, sw_batch_size 1, overlap
0.5, whole volume) on the volume in the tutorial's own (H, W, D) axis order,
where that roi is one window, and plain nibabel for loading. The per-case
figure a user feels is a whole process (start-up, reading, segmenting,
writing): ``sevnet-predict`` against ``benchmarks/monai_tutorial.py``, the
tutorial's pipeline as one process. ``--quick`` shrinks every
size so the suite itself can be tested in CI; its figures mean nothing.
A GPU section runs when CUDA is available.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REAL_CASE = Path(os.environ.get("SEVNET_REAL_DATA", ROOT.parent / "shared" / "data")) / "BraTS-GLI-00001-000"
FULL_SHAPE = (155, 240, 240)  # a BraTS volume, (Z, Y, X)
QUICK_SHAPE = (40, 48, 40)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _timed(fn, repeats: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def _phantom_folder(shape, seed=21) -> Path:
    import hashlib

    from napari_sevnet import phantom

    # cached across runs, keyed by the generator's source: a changed phantom.py must not be timed on old phantoms
    version = hashlib.sha256(Path(phantom.__file__).read_bytes()).hexdigest()[:12]
    root = Path(tempfile.gettempdir()) / "sevnet-bench" / version / "x".join(map(str, shape))
    folder = root / f"phantom_{seed:04d}"
    if not (folder / f"phantom_{seed:04d}_seg.nii.gz").is_file():
        phantom.write_phantom(root, seed=seed, shape=shape)
    return folder


# --------------------------------------------------------------------------- tasks (each in its own process)


def task_inference(case: str, model: str, tta: bool, repeats: int, device: str, roi: list[int] = (240, 240, 160)) -> dict:
    """Wall time of one full case through the Predictor (or the MONAI baseline), and its Dice when labelled."""
    import torch

    from napari_sevnet.io import load_case
    from napari_sevnet.metrics import dice

    loaded = load_case(case)
    if model == "segresnet-monai-tutorial":
        from monai.inferers import sliding_window_inference

        from napari_sevnet.inference import normalize
        from napari_sevnet.model import build_model

        net = build_model("segresnet", {"init_filters": 16}).to(device).eval()
        # the tutorial's (H, W, D) voxel order: on our (Z, Y, X) arrays its roi would pad Z to 240 and slide along X
        x = torch.from_numpy(normalize(loaded.image)).permute(0, 3, 2, 1)[None].contiguous().to(device)

        def run():
            with torch.inference_mode():
                out = torch.sigmoid(sliding_window_inference(x, tuple(roi), 1, net, overlap=0.5))
            if out.is_cuda:
                torch.cuda.synchronize()  # CUDA runs asynchronously: time the work, not its launch
            return out

    else:
        from napari_sevnet.inference import Predictor

        if model == "sevnet-faithful":  # speed only: no trained weights; windows of its BraTS config's patch size
            from napari_sevnet.checkpoint import CheckpointInfo
            from napari_sevnet.model import build_model
            from training.config import load_config

            patch = load_config(ROOT / "training" / "configs" / "sevnet_faithful_brats.yaml").patch_size
            arch = {"name": "sevnet", "config": {"preset": "faithful"}}
            info = CheckpointInfo(architecture=arch, preprocessing={"patch_size": patch})
            predictor = Predictor(model=build_model("sevnet", {"preset": "faithful"}), info=info, device=device, tta=tta)
        else:
            predictor = Predictor(None, device, tta=tta)

        def run():
            last[:] = [predictor.predict(loaded.image)]

    last: list = []
    times = _timed(run, repeats, warmup=0 if tta or model == "sevnet-faithful" else 1)  # those run long enough
    out = {"median_s": statistics.median(times), "runs_s": times, "peak_rss_mb": _peak_rss_mb(), "shape": list(loaded.shape)}
    if model == "sevnet-lite" and loaded.regions is not None:
        out["dice"] = {r: round(dice(last[0].regions[i], loaded.regions[i]), 4) for i, r in enumerate(("WT", "TC", "ET"))}
    return out


def task_process(case: str, program: str, repeats: int) -> dict:
    """Wall time of a whole process that segments one case and writes its mask, start-up included."""
    out = Path(tempfile.mkdtemp(prefix="sevnet-bench-process-"))
    if program == "sevnet-predict":
        cmd = [str(Path(sys.executable).with_name("sevnet-predict")), case, "-o", str(out), "--device", "cpu", "--overwrite"]
    else:
        cmd = [sys.executable, "-m", "benchmarks.monai_tutorial", case, str(out / "tutorial_seg.nii.gz")]
    times = []
    for _ in range(repeats + 1):  # the first run warms the page cache for the files and the libraries
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
        times.append(time.perf_counter() - t)
    return {"median_s": statistics.median(times[1:]), "runs_s": times[1:]}


def task_throughput(shape: list[int], device: str) -> dict:
    """Achieved GFLOP/s of the demo model's forward pass on a brain-sized crop, against a large plain Conv3d."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from napari_sevnet.checkpoint import bundled_checkpoint, load_checkpoint

    torch.set_grad_enabled(False)
    model, _ = load_checkpoint(bundled_checkpoint(), device)
    x = torch.randn(1, 4, *shape, device=device)
    with FlopCounterMode(display=False) as counter:
        model(x)
    flops = counter.get_total_flops()
    times = _timed(lambda: model(x), 3)
    peak_conv = torch.nn.Conv3d(64, 64, 3, padding=1).to(device).eval()
    side = max(16, min(64, shape[0]))
    y = torch.randn(1, 64, side, side, side, device=device)
    with FlopCounterMode(display=False) as counter:
        peak_conv(y)
    peak_flops = counter.get_total_flops()
    peak_times = _timed(lambda: peak_conv(y), 3)
    achieved = flops / statistics.median(times) / 1e9
    peak = peak_flops / statistics.median(peak_times) / 1e9
    return {"model_gflop": flops / 1e9, "achieved_gflops": achieved, "peak_conv3d_gflops": peak, "fraction_of_peak": achieved / peak, "threads": torch.get_num_threads()}


def task_loading(case: str, repeats: int) -> dict:
    """Our reader (validation, re-orientation, float32 stack) against plain nibabel get_fdata of the same files."""
    import nibabel as nib

    from napari_sevnet.io import MODALITIES, find_case_files, load_case

    _, files, _ = find_case_files(case)
    ours = _timed(lambda: load_case(case), repeats)
    plain = _timed(lambda: [nib.load(str(files[m])).get_fdata(dtype=np.float32) for m in MODALITIES], repeats)
    return {"ours_median_s": statistics.median(ours), "nibabel_median_s": statistics.median(plain), "ratio": statistics.median(ours) / statistics.median(plain)}


def task_training_step(model: str, patch: int, repeats: int, device: str) -> dict:
    """Seconds per optimizer step (batch 1, one patch of patch^3, Dice + BCE, AdamW)."""
    import torch

    from napari_sevnet.model import build_model
    from training.loop import region_loss

    config = {"preset": "lite"} if model == "sevnet-lite" else ({"preset": "faithful"} if model == "sevnet-faithful" else {"init_filters": 16})
    net = build_model("sevnet" if model.startswith("sevnet") else "segresnet", config).to(device).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    loss_fn = region_loss()
    x = torch.randn(1, 4, patch, patch, patch, device=device)
    y = (torch.rand(1, 3, patch, patch, patch, device=device) > 0.9).float()

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()
        optimizer.step()
        if x.is_cuda:
            torch.cuda.synchronize()

    times = _timed(step, repeats)
    return {"median_s": statistics.median(times), "runs_s": times, "peak_rss_mb": _peak_rss_mb()}


def task_finetune_round(shape: list[int], epochs: int, steps: int, patch: list[int] | None = None) -> dict:
    """Export one corrected phantom, fine-tune the default on it, segment it again: seconds for each part.

    ``patch``: train on patches of this size instead of the default's own (``--quick``: the suite's plumbing check,
    where the default's 128x160x128 patches would spend a minute on a 40x48x40 phantom).
    """
    from napari_sevnet.checkpoint import bundled_checkpoint
    from napari_sevnet.export import export_case
    from napari_sevnet.inference import Predictor
    from napari_sevnet.io import load_case
    from napari_sevnet.metrics import dice
    from napari_sevnet.phantom import write_phantom

    work = Path(tempfile.mkdtemp(prefix="sevnet-bench-ft-"))
    case = load_case(write_phantom(work / "src", seed=11, shape=tuple(shape), contrast=0.35))
    before = Predictor(None, "cpu").predict(case.image)
    t0 = time.perf_counter()
    export_case(case, case.regions, work / "ds", model_regions=before.regions)
    t1 = time.perf_counter()
    cmd = [sys.executable, "-m", "training.cli", "--config", str(ROOT / "training" / "configs" / "finetune.yaml"), "--init", str(bundled_checkpoint()),
           "-o", str(work / "ds" / "runs" / "bench"), f"data.roots=[{work / 'ds'}]", f"epochs={epochs}", f"steps_per_epoch={steps}"]
    if patch:
        cmd += [f"patch_size=[{','.join(str(v) for v in patch)}]", "batch_size=1"]
    subprocess.run(cmd, check=True, capture_output=True)
    t2 = time.perf_counter()
    after = Predictor(work / "ds" / "runs" / "bench" / "best.json", "cpu").predict(case.image)
    t3 = time.perf_counter()
    mean = lambda r: float(np.mean([dice(r.regions[i], case.regions[i]) for i in range(3)]))  # noqa: E731
    return {"export_s": t1 - t0, "finetune_s": t2 - t1, "resegment_s": t3 - t2, "total_s": t3 - t0, "steps": epochs * steps, "mean_dice_before": mean(before), "mean_dice_after": mean(after)}


def task_gui_stall(case: str) -> dict:
    """Longest Qt event-loop stall while the Segment widget runs in a real napari viewer (needs a display)."""
    import napari
    from qtpy.QtCore import QEventLoop, QTimer

    from napari_sevnet.widgets.responsiveness import gui_workarounds
    from napari_sevnet.widgets.segment import SegmentWidget

    def run_event_loop(until, poll_ms=20):
        """A real event loop, as napari.run() has: processEvents() alone never runs deleteLater(), and napari's
        activity spinner, stopped by one, would repaint the window 30 times a second."""
        loop, poll = QEventLoop(), QTimer()
        poll.timeout.connect(lambda: loop.quit() if until() else None)
        poll.start(poll_ms)
        loop.exec()
        poll.stop()

    viewer = napari.Viewer(show=True)
    from napari_sevnet.layers import LayerInfo

    for layer in viewer.open(case, plugin="napari-sevnet"):
        if LayerInfo.from_layer(layer).region is not None:  # the case's own mask: only the model's result is timed
            viewer.layers.remove(layer)
    opening = time.perf_counter()  # the dock's imports, warm-up and first collection run on the GUI thread
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    dock_open_ms = (time.perf_counter() - opening) * 1000
    settled = time.perf_counter() + 0.5
    run_event_loop(lambda: time.perf_counter() > settled)
    heartbeat = QTimer()
    heartbeat.setInterval(10)
    runs = []
    for _ in range(2):  # a second run adds its layers beside the first run's
        ticks, inference_done = [], []
        heartbeat.timeout.connect(lambda ticks=ticks: ticks.append(time.perf_counter()))
        relay = lambda f, m, done=inference_done: done.append(time.perf_counter()) if f == 1.0 else None  # noqa: E731
        widget._relay.progressed.connect(relay)
        heartbeat.start()
        start = time.perf_counter()
        widget.run()
        run_event_loop(lambda start=start: widget.worker is None or time.perf_counter() - start > 300)
        heartbeat.stop()
        heartbeat.timeout.disconnect()
        widget._relay.progressed.disconnect(relay)
        ticks = np.array(ticks)
        during = np.diff(ticks[ticks <= inference_done[0]]) if inference_done else np.array([0.0])
        after = np.diff(ticks[ticks >= inference_done[0]]) if inference_done else np.array([0.0])
        runs.append({"max_stall_inference_ms": float(during.max() * 1000), "max_stall_layer_insertion_ms": float(after.max() * 1000), "run_s": time.perf_counter() - start})
    viewer.close()
    worst = {key: max(r[key] for r in runs) for key in ("max_stall_inference_ms", "max_stall_layer_insertion_ms")}
    return {**worst, "max_stall_ms": max(worst.values()), "dock_open_ms": dock_open_ms, "gui_workarounds": gui_workarounds(), "runs": runs}


TASKS = {name[5:]: fn for name, fn in globals().items() if name.startswith("task_")}


# --------------------------------------------------------------------------- runner


def _spawn(name: str, timeout: float = 900, env=None, **kwargs) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.run", "--task", name, "--args", json.dumps(kwargs)]
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - t
    print(f"  {name} {kwargs}: " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items() if not isinstance(v, (list, dict))), flush=True)
    return result


def _display_env():
    """(environment with an X display, private Xvfb process or None); (None, None) when there is no way to get one."""
    if os.environ.get("DISPLAY"):
        return dict(os.environ), None
    from napari_sevnet.demo import start_xvfb

    xvfb = start_xvfb()  # sets DISPLAY
    return (dict(os.environ), xvfb) if xvfb is not None else (None, None)


def run_all(quick: bool, device: str) -> dict:
    shape = QUICK_SHAPE if quick else FULL_SHAPE
    repeats = 1 if quick else 3
    inputs = {"phantom": str(_phantom_folder(shape))}
    if REAL_CASE.is_dir() and not quick:
        inputs["real BraTS-GLI-00001-000"] = str(REAL_CASE)
    results: dict = {"inference": {}, "loading": {}, "training_step": {}}
    for label, case in inputs.items():
        print(f"inference on {label}", flush=True)
        runs = {
            "sevnet-lite (default)": dict(model="sevnet-lite", tta=False, repeats=repeats),
            "segresnet-monai-tutorial": dict(model="segresnet-monai-tutorial", tta=False, repeats=min(repeats, 2), roi=[32, 32, 32] if quick else [240, 240, 160]),
        }
        if label != "phantom" or len(inputs) == 1:  # minutes per run: once, on the real case when there is one
            runs["sevnet-faithful"] = dict(model="sevnet-faithful", tta=False, repeats=1)
        if label == "phantom" or quick:
            runs["sevnet-lite + TTA"] = dict(model="sevnet-lite", tta=True, repeats=1 if quick else 2)
        results["inference"][label] = {name: _spawn("inference", case=case, device=device, **kw) for name, kw in runs.items()}
        if not quick:
            results.setdefault("process", {})[label] = {p: _spawn("process", case=case, program=p, repeats=repeats) for p in ("sevnet-predict", "monai-tutorial")}
        results["loading"][label] = _spawn("loading", case=case, repeats=repeats)
    print("throughput", flush=True)
    results["throughput"] = _spawn("throughput", shape=[48, 48, 48] if quick else [144, 176, 144], device=device)
    print("training steps", flush=True)
    patch = 32 if quick else 128
    for model in ("sevnet-lite", "segresnet"):
        results["training_step"][model] = _spawn("training_step", model=model, patch=patch, repeats=1 if quick else 3, device=device)
    print("fine-tune round", flush=True)
    results["finetune_round"] = _spawn("finetune_round", shape=[40, 48, 40] if quick else [64, 72, 64], epochs=1 if quick else 2, steps=2 if quick else 8,
                                       patch=[32, 32, 32] if quick else None)
    print("GUI stall", flush=True)
    env, xvfb = _display_env()
    try:
        results["gui"] = _spawn("gui_stall", case=inputs["phantom"], env=env) if env else {"error": "no display and no Xvfb"}
    finally:
        if xvfb is not None:
            xvfb.terminate()
    return results


def _ratio(a, b) -> str:
    return f"{a / b:.2f}" if a and b else "-"


def markdown_gpu(gpu: dict) -> list[str]:
    """The GPU section's tables (inference on the full-size phantom, training steps)."""
    lines = [f"GPU: {gpu.get('name', 'CUDA device')}", "", "| GPU inference, phantom | median s | vs MONAI SegResNet | Dice WT/TC/ET |", "|---|---|---|---|"]
    base = gpu["inference"].get("segresnet-monai-tutorial", {}).get("median_s")
    for name, r in gpu["inference"].items():
        d = r.get("dice")
        lines.append(f"| {name} | error: {r['error']} | | |" if "error" in r else f"| {name} | {r['median_s']:.3f} | {_ratio(r['median_s'], base)}x time | {'/'.join(f'{d[k]:.3f}' for k in ('WT', 'TC', 'ET')) if d else '-'} |")
    lines += ["", "| GPU training step (batch 1, 128^3) | s/step |", "|---|---|"]
    for model, r in gpu["training_step"].items():
        lines.append(f"| {model} | error: {r['error']} |" if "error" in r else f"| {model} | {r['median_s']:.3f} |")
    return lines


def markdown(results: dict, meta: dict) -> str:
    lines = [f"Benchmarks {meta['date']} on {meta['cpu']} ({meta['cores']} cores, torch {meta['torch']}, device {meta['device']}){' QUICK' if meta['quick'] else ''}", ""]
    if "inference" not in results:  # --gpu-only
        return "\n".join(lines + markdown_gpu(results["gpu"])) + "\n"
    lines += ["| input | model | median s | peak RSS MB | vs MONAI SegResNet | Dice WT/TC/ET |", "|---|---|---|---|---|---|"]
    for label, runs in results["inference"].items():
        base = runs.get("segresnet-monai-tutorial", {}).get("median_s")
        for name, r in runs.items():
            if "error" in r:
                lines.append(f"| {label} | {name} | error: {r['error']} | | | |")
                continue
            d = r.get("dice")
            lines.append(f"| {label} {'x'.join(map(str, r['shape']))} | {name} | {r['median_s']:.2f} | {r['peak_rss_mb']:.0f} | {_ratio(r['median_s'], base)}x time | {'/'.join(f'{d[k]:.3f}' for k in ('WT', 'TC', 'ET')) if d else '-'} |")
    if results.get("process"):
        lines += ["", "| one case as a process (start-up, read, segment, write) | sevnet-predict s | MONAI tutorial s | speed-up |", "|---|---|---|---|"]
        for label, r in results["process"].items():
            ours, base = r["sevnet-predict"].get("median_s"), r["monai-tutorial"].get("median_s")
            lines.append(f"| {label} | {ours:.2f} | {base:.2f} | {base / ours:.2f}x |" if ours and base else f"| {label} | {r} | | |")
    t = results.get("throughput", {})
    if "error" not in t:
        lines += ["", f"Forward pass of the demo model on a {meta['crop']} crop: {t['model_gflop']:.1f} GFLOP at {t['achieved_gflops']:.1f} GFLOP/s; a large plain Conv3d (64->64, 3^3) reaches {t['peak_conv3d_gflops']:.1f} GFLOP/s on this machine: {100 * t['fraction_of_peak']:.0f} % of that."]
    lines += ["", "| loading a 4-modality case | ours s | nibabel s | ratio |", "|---|---|---|---|"]
    for label, r in results["loading"].items():
        if "error" not in r:
            lines.append(f"| {label} | {r['ours_median_s']:.2f} | {r['nibabel_median_s']:.2f} | {r['ratio']:.2f} |")
    lines += ["", "| training step (batch 1, one patch) | s/step | peak RSS MB |", "|---|---|---|"]
    for model, r in results["training_step"].items():
        lines.append(f"| {model} | {r.get('median_s', float('nan')):.2f} | {r.get('peak_rss_mb', float('nan')):.0f} |" if "error" not in r else f"| {model} | error: {r['error']} | |")
    f = results.get("finetune_round", {})
    if "error" not in f:
        lines += ["", f"Fine-tune round on one phantom case: export {f['export_s']:.1f} s + fine-tune {f['steps']} steps {f['finetune_s']:.1f} s + re-segment {f['resegment_s']:.1f} s = {f['total_s']:.1f} s; mean Dice {f['mean_dice_before']:.3f} -> {f['mean_dice_after']:.3f}."]
    if "gpu" in results:
        lines += ["", *markdown_gpu(results["gpu"])]
    g = results.get("gui", {})
    lines += ["", f"GUI: longest event-loop stall during a Segment run: {g['max_stall_inference_ms']:.0f} ms while the model runs, {g['max_stall_layer_insertion_ms']:.0f} ms while the result layers are inserted; "
              f"opening the Segment dock (imports, warm-up, first collection) holds the GUI {g.get('dock_open_ms', float('nan')):.0f} ms once; process-wide workarounds {'on' if g.get('gui_workarounds') else 'off'}." if "error" not in g else f"GUI: {g['error']}"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the suite works, figures mean nothing")
    parser.add_argument("--gpu-only", action="store_true", help="only the GPU section (a CUDA machine; skips the CPU run)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--task", help=argparse.SUPPRESS)
    parser.add_argument("--args", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.task:
        print(json.dumps(TASKS[args.task](**json.loads(args.args))))
        return 0

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    meta = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"), "host": socket.gethostname(), "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(), "torch": torch.__version__, "device": device, "quick": args.quick, "crop": "144x176x144",
    }
    started = time.perf_counter()
    if args.gpu_only and device != "cuda":
        parser.error("--gpu-only needs a CUDA device; none is visible to torch")
    results = {} if args.gpu_only else run_all(args.quick, "cpu")
    if device == "cuda":
        print("GPU section", flush=True)
        shape_case = str(_phantom_folder(QUICK_SHAPE if args.quick else FULL_SHAPE))
        results["gpu"] = {
            "inference": {name: _spawn("inference", case=shape_case, model=model, tta=tta, repeats=3, device="cuda")
                          for name, model, tta in (("sevnet-lite", "sevnet-lite", False), ("sevnet-lite + TTA", "sevnet-lite", True), ("segresnet-monai-tutorial", "segresnet-monai-tutorial", False))},
            "training_step": {m: _spawn("training_step", model=m, patch=128, repeats=5, device="cuda") for m in ("sevnet-lite", "sevnet-faithful", "segresnet")},
            "name": torch.cuda.get_device_name(0),
        }
    meta["total_s"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"{meta['date'][:10]}-{meta['host']}" + ("-quick" if args.quick else "") + ("-gpu" if args.gpu_only else "")
    (args.out / f"{stem}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2), encoding="utf-8")
    table = markdown(results, meta)
    (args.out / ("latest-quick.md" if args.quick else "latest-gpu.md" if args.gpu_only else "latest.md")).write_text(table, encoding="utf-8")
    print(table)
    print(f"total {meta['total_s']:.0f} s; wrote {args.out / (stem + '.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
