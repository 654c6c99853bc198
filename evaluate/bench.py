"""python -m evaluate.bench --run runs/demo

Accuracy and latency of every variant of every exported model (torch fp32, ORT fp32, ORT INT8), measured
in one run so ratios are comparable. Writes runs/<name>/report.json (detector.fp32.map50, ...) and
report.md, and prints the table.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from datasets.config import DatasetError
from deploy.preprocess import PreprocessSpec, preprocess, read_image
from deploy.runtime import OrtModel
from evaluate.metrics import EvalSet
from evaluate.report import render_markdown, write_report
from train.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from train.loop import torch_runner

VARIANTS = ("torch", "fp32", "int8")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evaluate.bench", description=__doc__)
    p.add_argument("--run", required=True)
    p.add_argument("--split", default="val")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=50)
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
    return {"p50": float(np.percentile(times, 50)), "p90": float(np.percentile(times, 90)),
            "mean": float(times.mean())}


def bench_model(kind: str, run: Path, split: str, warmup: int, repeats: int, limit: int | None) -> dict:
    ckpt = load_checkpoint(run / kind / "best.pt")
    ev = EvalSet.from_checkpoint(ckpt, split, limit)
    spec = PreprocessSpec.from_dict(ckpt["preprocess"])
    x, _ = preprocess(read_image(ev.images[0]), spec)
    x = x[None]  # (1, 3, H, W) uint8
    threads_all = os.cpu_count() or 1
    out: dict[str, dict] = {}
    model = model_from_checkpoint(ckpt)
    run_torch = torch_runner(model)
    prev = torch.get_num_threads()
    lat = {}
    for n in (1, threads_all):
        torch.set_num_threads(n)
        lat[f"{n}t"] = latency_ms(lambda: run_torch(x), warmup, repeats)
    torch.set_num_threads(prev)
    out["torch"] = {**ev.score(run_torch, lambda img: preprocess(img, spec), ckpt["postprocess"]),
                    "latency_ms": lat, "size_mb": None, "params": ckpt.get("params"), "gflops": ckpt.get("gflops")}
    preds = {}
    for variant, fname in (("fp32", f"{kind}.onnx"), ("int8", f"{kind}.int8.onnx")):
        path = run / "export" / fname
        if not path.is_file():
            continue
        models = {n: OrtModel(path, threads=n) for n in (1, threads_all)}
        m = models[threads_all]
        c = m.contract
        lat = {f"{n}t": latency_ms(lambda mm=mm: mm.infer(x), warmup, repeats) for n, mm in models.items()}
        preds[variant] = ev.predict(m.infer, lambda img, c=c: preprocess(img, c.preprocess), c.postprocess)
        out[variant] = {**ev.score_predictions(preds[variant]), "latency_ms": lat,
                        "size_mb": path.stat().st_size / 2**20}
    if ev.is_train:
        out["note"] = {"split": f"the {split} split is the training images: figures measure quantization "
                                "fidelity, not generalisation"}
    if "fp32" in out and "int8" in out:
        # quantization fidelity without labels: INT8 scored against the fp32 model's own predictions
        agree = ev.score_predictions(preds["int8"], reference=preds["fp32"])
        out["int8"]["agreement"] = agree["map50"] if kind == "detector" else agree["miou"]
        for t in out["int8"]["latency_ms"]:
            out["int8"][f"speedup_{t}"] = out["fp32"]["latency_ms"][t]["p50"] / out["int8"]["latency_ms"][t]["p50"]
        out["int8"]["size_ratio"] = out["int8"]["size_mb"] / out["fp32"]["size_mb"]
    return out


def machine() -> dict:
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "python": platform.python_version(), "onnxruntime": __import__("onnxruntime").__version__,
            "torch": torch.__version__}


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    run = Path(args.run)
    try:
        report = {"machine": machine(), "split": args.split}
        for kind in ("detector", "segmenter"):
            if (run / kind / "best.pt").is_file():
                print(f"bench: {kind} ...", flush=True)
                report[kind] = bench_model(kind, run, args.split, args.warmup, args.repeats, args.limit)
        if not any(k in report for k in ("detector", "segmenter")):
            raise CheckpointError(f"{run}: nothing to benchmark; run `make train` and `make export` first")
        write_report(run, report)
        print(render_markdown(report))
        return 0
    except (CheckpointError, DatasetError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
