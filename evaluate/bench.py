"""python -m evaluate.bench --run runs/demo

Accuracy, latency (p50/p90/p99 after warm-up, at 1 thread and all threads), throughput, peak memory and
file size of every variant of every exported model, measured in one run so ratios are comparable: torch
fp32, ONNX Runtime fp32 / INT8 (CPU file) / INT8 (TensorRT QDQ file) / .ort files, and TensorRT engines
where TensorRT and a GPU are present. Each INT8 variant gets its speed-up over the fp32 ONNX. Writes
runs/<name>/bench/report.json (detector.fp32.map50, ...), report.md and the plots (latency vs accuracy
with the Pareto front, the detector's PR curve), and prints the table.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from datasets.config import DatasetError
from datasets.metrics import PRIMARY, EvalSet
from deploy.hardware import describe, fingerprint
from deploy.preprocess import PreprocessSpec, preprocess, read_image
from deploy.runtime import OrtModel
from evaluate.plots import plot_pareto, plot_pr
from evaluate.report import render_markdown, write_report
from train.checkpoint import CheckpointError, is_adopted, load_model_record, model_from_checkpoint, torch_runner
from train.run_dir import VARIANT_FILES, RunDir


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evaluate.bench", description=__doc__)
    p.add_argument("--run", required=True)
    p.add_argument("--split", default="val")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=200, help="timed runs per variant and thread count")
    p.add_argument("--limit", type=int, default=None, help="score only the first N images")
    return p


def latency_ms(fn: Callable[[], object], warmup: int, repeats: int) -> dict:
    for _ in range(warmup):
        fn()
    times = np.empty(repeats)
    for i in range(repeats):
        t0 = time.perf_counter()
        fn()
        times[i] = (time.perf_counter() - t0) * 1e3
    return latency_stats(times)


def latency_stats(times_ms) -> dict:
    """p50 / p90 / p99 / mean of per-call times, and the throughput of batch-1 calls back to back."""
    t = np.asarray(times_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(t, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(t.mean()),
            "fps": float(1e3 / t.mean())}


_PEAK_SCRIPT = """
import sys, numpy as np
from deploy.runtime import OrtModel
def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
base = rss("VmRSS")
m = OrtModel(sys.argv[1], threads=1)
x = np.zeros((1, 3, *m.contract.preprocess.input_size), np.uint8)
for _ in range(5):
    m.infer(x)
print(rss("VmHWM") - base)
"""


def peak_memory_mb(path: Path) -> float | None:
    """Peak resident memory a fresh process adds by loading the model and running it (Linux, else None)."""
    if not Path("/proc/self/status").is_file():
        return None
    r = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(path)], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parents[1], timeout=300)
    return float(r.stdout.strip()) if r.returncode == 0 and r.stdout.strip() else None


def _runner(model: OrtModel, x: np.ndarray) -> Callable[[], object]:
    return lambda: model.infer(x)


def interleaved_latency(runners: dict[str, Callable[[], object]], warmup: int, repeats: int,
                        rounds: int = 5) -> dict[str, dict]:
    """latency_ms of several variants measured in alternating rounds, so a noisy neighbour or a clock
    change hits all of them alike and their ratios stay comparable (the speed-ups are such ratios)."""
    samples: dict[str, list[float]] = {k: [] for k in runners}
    per_round = max(1, repeats // rounds)
    for _ in range(rounds):
        for name, fn in runners.items():
            for _ in range(warmup if not samples[name] else 2):
                fn()
            for _ in range(per_round):
                t0 = time.perf_counter()
                fn()
                samples[name].append((time.perf_counter() - t0) * 1e3)
    return {name: latency_stats(t) for name, t in samples.items()}


def onnx_variants(task: str, run: RunDir) -> list[tuple[str, Path]]:
    """Every exported variant present (int8-trt: the TensorRT QDQ file, run by ONNX Runtime here)."""
    return [(v, run.model(task, v)) for v in VARIANT_FILES if run.model(task, v).is_file()]


def bench_torch(ckpt: dict, ev: EvalSet, x: np.ndarray, warmup: int, repeats: int) -> dict:
    """The checkpoint's torch model: accuracy, and latency at 1 thread and all cores."""
    spec = PreprocessSpec.from_dict(ckpt["preprocess"])
    run_torch = torch_runner(model_from_checkpoint(ckpt))
    prev = torch.get_num_threads()
    lat = {}
    for n in (1, os.cpu_count() or 1):
        torch.set_num_threads(n)
        lat[f"{n}t"] = latency_ms(lambda: run_torch(x), warmup, repeats)
    torch.set_num_threads(prev)
    return {**ev.score(run_torch, lambda img: preprocess(img, spec), ckpt["postprocess"]),
            "latency_ms": lat, "size_mb": None, "params": ckpt.get("params"), "gflops": ckpt.get("gflops")}


def bench_model(task: str, run: Path, split: str, warmup: int, repeats: int, limit: int | None) -> dict:
    ckpt = load_model_record(RunDir.of(run), task)
    ev = EvalSet.from_checkpoint(ckpt, split, limit)
    spec = PreprocessSpec.from_dict(ckpt["preprocess"])
    x, _ = preprocess(read_image(ev.images[0]), spec)
    x = x[None]  # (1, 3, H, W) uint8
    threads_all = os.cpu_count() or 1
    out: dict[str, dict] = {}
    if not is_adopted(ckpt):  # an adopted model has no torch weights here
        out["torch"] = bench_torch(ckpt, ev, x, warmup, repeats)
    preds = {}
    variants = onnx_variants(task, RunDir.of(run))
    lat = {f"{n}t": interleaved_latency({v: _runner(OrtModel(p, threads=n), x) for v, p in variants}, warmup, repeats)
           for n in (1, threads_all)}
    for variant, path in variants:
        m = OrtModel(path, threads=threads_all)
        c = m.contract
        preds[variant] = ev.predict(m.infer, lambda img, c=c: preprocess(img, c.preprocess), c.postprocess)
        out[variant] = {**ev.score_predictions(preds[variant]), "latency_ms": {t: v[variant] for t, v in lat.items()},
                        "peak_memory_mb": peak_memory_mb(path), "size_mb": path.stat().st_size / 2**20,
                        "file": str(path.relative_to(run))}
    out.update(tensorrt_variants(task, run, ev, x, warmup, repeats))
    if ev.is_train:
        out["note"] = {"split": f"the {split} split is the training images: figures measure quantization "
                                "fidelity, not generalisation"}
    for variant in [v for v in preds if v != "fp32" and "fp32" in preds]:
        # quantization fidelity without labels: each variant scored against the fp32 model's own predictions
        agree = ev.score_predictions(preds[variant], reference=preds["fp32"])
        out[variant]["agreement"] = agree["map50"] if task == "detector" else agree["miou"]
        for t in out[variant]["latency_ms"]:
            out[variant][f"speedup_{t}"] = out["fp32"]["latency_ms"][t]["p50"] / out[variant]["latency_ms"][t]["p50"]
        out[variant]["size_ratio"] = out[variant]["size_mb"] / out["fp32"]["size_mb"]
    return out


def tensorrt_variants(task: str, run: Path, ev: EvalSet, x, warmup: int, repeats: int) -> dict:
    """TensorRT FP16 / INT8 engines where TensorRT and a GPU are present; nothing (and a note) elsewhere."""
    from deploy.trt_engine import TensorRTUnavailable, import_tensorrt

    try:
        import_tensorrt()
    except TensorRTUnavailable as e:
        return {"tensorrt": {"skipped": str(e)}}
    return {"tensorrt": {"skipped": "engine timing runs in `python -m export.tensorrt`; the bench's TensorRT "
                                    "runner comes with the runtime's TensorRT backend"}}


def make_plots(report: dict, out: Path) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for task, metric in PRIMARY.items():
        if task in report:
            variants = {k: v for k, v in report[task].items() if isinstance(v, dict) and "latency_ms" in v}
            files.append(plot_pareto(task, variants, metric, "1t", out).name)
    if "detector" in report:  # precision at COCO's 101 recall points, IoU 0.5, mean over classes
        curves = {k: (np.linspace(0, 1, 101), np.array(v["pr50"])) for k, v in report["detector"].items()
                  if isinstance(v, dict) and "pr50" in v}
        files.append(plot_pr("detector", curves, "detector: precision-recall at IoU 0.5", out).name)
    if "segmenter" in report:  # thin-class pixels over the ODS threshold sweep
        curves = {f"{k} {c}": (np.array(r["pr"]["recall"]), np.array(r["pr"]["precision"]))
                  for k, v in report["segmenter"].items() if isinstance(v, dict) for c, r in v.get("ods", {}).items()}
        if curves:
            files.append(plot_pr("segmenter", curves, "segmenter: thin-class pixels, threshold sweep", out).name)
    return files


def machine() -> dict:
    """The fingerprint (deploy.hardware: CPU, kernel class, ONNX Runtime) and the workstation's versions."""
    return {**fingerprint(), "python": platform.python_version(), "torch": torch.__version__}


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    run = Path(args.run)
    try:
        report = {"machine": machine(), "split": args.split}
        print(f"bench: {describe(report['machine'])}", flush=True)
        for task in RunDir.of(run).tasks():
            print(f"bench: {task} ...", flush=True)
            report[task] = bench_model(task, run, args.split, args.warmup, args.repeats, args.limit)
        if not any(k in report for k in ("detector", "segmenter")):
            raise CheckpointError(f"{run}: nothing to benchmark; run `make train` and `make export` first")
        report["plots"] = make_plots(report, RunDir.of(run).bench)
        write_report(run, report)
        print(render_markdown(report))
        return 0
    except (CheckpointError, DatasetError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
