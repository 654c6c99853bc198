"""python -m evaluate.gate --run runs/demo --config configs/gate.yaml [--deployed-preprocess mod:fn]

Accuracy in the 2x2 design (reference | deployed preprocessing) x (fp32 | int8), so a drop is blamed on
the stage that caused it:
  quantization  = ref/fp32 - ref/int8     (same inputs, different weights/activations precision)
  preprocessing = ref/fp32 - deployed/fp32 (same model, different input tensors)
  interaction   = (ref/fp32 - deployed/int8) - quantization - preprocessing
Reference preprocessing is the training data path (the checkpoint's spec through deploy.preprocess);
deployed preprocessing is the contract read from the ONNX file through the runtime's code, or any
`module:function(img_bgr, spec) -> (tensor, letterbox)` given on the command line.
Exit code: 0 pass, 1 fail, 2 could not run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import yaml

from datasets.config import DatasetError
from deploy.contract import ContractError
from deploy.preprocess import PreprocessSpec, preprocess, read_image
from deploy.runtime import ModelLoadError, OrtModel
from evaluate.bench import latency_ms
from evaluate.metrics import EvalSet
from evaluate.report import write_report
from train.checkpoint import CheckpointError, load_checkpoint

PRIMARY = {"detector": "map50", "segmenter": "thin_iou"}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evaluate.gate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True)
    p.add_argument("--config", default="configs/gate.yaml", help="thresholds")
    p.add_argument("--split", default="val")
    p.add_argument("--deployed-preprocess", default=None,
                   help="module:function(img_bgr, spec) -> (tensor, letterbox) used as the deployed path")
    p.add_argument("--limit", type=int, default=None, help="score only the first N images")
    return p


def load_function(ref: str):
    mod, _, fn = ref.partition(":")
    if not fn:
        raise ValueError(f"--deployed-preprocess {ref!r}: expected module:function")
    return getattr(importlib.import_module(mod), fn)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def tensor_evidence(ref_fn, dep_fn, images: list[Path], n: int = 8) -> dict:
    """Input-tensor difference between reference and deployed preprocessing on the first n images."""
    worst_abs, worst_psnr, worst_img = 0, float("inf"), None
    for p in images[:n]:
        img = read_image(p)
        a, b = ref_fn(img)[0], dep_fn(img)[0]
        if a.shape != b.shape:
            return {"max_abs": 255, "min_psnr": 0.0, "worst_image": str(p), "note": f"shape {a.shape} vs {b.shape}"}
        d = int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())
        q = psnr(a, b)
        if q < worst_psnr:
            worst_psnr, worst_img = q, str(p)
        worst_abs = max(worst_abs, d)
    return {"max_abs": worst_abs, "min_psnr": worst_psnr if np.isfinite(worst_psnr) else None,
            "worst_image": worst_img}


def gate_model(kind: str, run: Path, limits: dict, split: str, deployed_fn, limit: int | None) -> dict:
    ckpt = load_checkpoint(run / kind / "best.pt")
    ev = EvalSet.from_checkpoint(ckpt, split, limit)
    train_spec = PreprocessSpec.from_dict(ckpt["preprocess"])
    fp32 = OrtModel(run / "export" / f"{kind}.onnx")
    int8 = OrtModel(run / "export" / f"{kind}.int8.onnx")
    if fp32.contract.config_hash != ckpt["config_hash"]:
        raise ContractError(f"{fp32.path}: config hash differs from the checkpoint's; re-run `make export`")
    dep_spec = fp32.contract.preprocess
    ref_fn = lambda img: preprocess(img, train_spec)  # noqa: E731
    dep_fn = (lambda img: deployed_fn(img, dep_spec)) if deployed_fn else (lambda img: preprocess(img, dep_spec))
    post = fp32.contract.postprocess
    metric = limits.get("metric", PRIMARY[kind])
    cells = {}
    for pname, pfn in (("reference", ref_fn), ("deployed", dep_fn)):
        for mname, m in (("fp32", fp32), ("int8", int8)):
            cells[f"{pname}/{mname}"] = ev.score(m.infer, pfn, post)[metric]
    q = cells["reference/fp32"] - cells["reference/int8"]
    p = cells["reference/fp32"] - cells["deployed/fp32"]
    deltas = {"quantization": q, "preprocessing": p,
              "interaction": (cells["reference/fp32"] - cells["deployed/int8"]) - q - p}
    images = ev.images
    evidence = tensor_evidence(ref_fn, dep_fn, images)
    x, _ = preprocess(read_image(images[0]), dep_spec)
    int8_1t = OrtModel(int8.path, threads=1)
    lat = latency_ms(lambda: int8_1t.infer(x), warmup=5, repeats=30)["p50"]
    checks = [
        ("quantization drop", q, limits["max_quantization_drop"]),
        ("preprocessing drop", p, limits["max_preprocessing_drop"]),
        (f"min {metric} (deployed int8)", cells["deployed/int8"], limits.get("min_accuracy")),
        ("int8 latency ms (cpu-1thread)", lat, limits.get("latency_ms", {}).get("cpu-1thread")),
        ("int8 size MB", int8.path.stat().st_size / 2**20, limits.get("max_size_mb")),
    ]
    out_checks = []
    for name, value, lim in checks:
        if lim is None:
            continue
        passed = value >= lim if name.startswith("min ") else value <= lim
        out_checks.append({"name": f"{kind}: {name}", "value": float(value), "limit": float(lim), "passed": passed})
    return {"metric": metric, "cells": cells, "deltas": deltas, "input_tensor": evidence, "checks": out_checks}


def blame(result: dict, limits: dict) -> str:
    d = result["deltas"]
    over = [k for k in ("quantization", "preprocessing") if d[k] > limits[f"max_{k}_drop"]]
    return " + ".join(over) if over else "none"


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    run = Path(args.run)
    try:
        cfg = yaml.safe_load(Path(args.config).read_text())
        deployed_fn = load_function(args.deployed_preprocess) if args.deployed_preprocess else None
        models = {}
        for kind in ("detector", "segmenter"):
            if (run / kind / "best.pt").is_file() and kind in cfg:
                models[kind] = gate_model(kind, run, cfg[kind], args.split, deployed_fn, args.limit)
                models[kind]["blame"] = blame(models[kind], cfg[kind])
        if not models:
            raise CheckpointError(f"{run}: no trained and exported model that {args.config} has limits for")
    except (CheckpointError, ContractError, ModelLoadError, DatasetError, FileNotFoundError, ValueError,
            KeyError, ImportError, AttributeError) as e:
        print(f"gate: could not run: {e}", file=sys.stderr)
        return 2
    checks = [c for m in models.values() for c in m["checks"]]
    verdict = "pass" if all(c["passed"] for c in checks) else "fail"
    gate = {"verdict": verdict, "config": args.config, "deployed_preprocess": args.deployed_preprocess or "runtime",
            "models": models, "checks": checks}
    out = run / "gate"
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "gate.json.tmp"
    tmp.write_text(json.dumps(gate, indent=2))
    os.replace(tmp, out / "gate.json")
    write_report(run, {"gate": gate})
    print_verdict(gate)
    return 0 if verdict == "pass" else 1


def print_verdict(gate: dict) -> None:
    print(f"{'model':<10} {'metric':<9} {'ref/fp32':>9} {'ref/int8':>9} {'dep/fp32':>9} {'dep/int8':>9} "
          f"{'quant':>7} {'preproc':>8} {'interact':>9}  blame")
    for kind, g in gate["models"].items():
        c, d = g["cells"], g["deltas"]
        print(f"{kind:<10} {g['metric']:<9} {c['reference/fp32']:>9.4f} {c['reference/int8']:>9.4f} "
              f"{c['deployed/fp32']:>9.4f} {c['deployed/int8']:>9.4f} {d['quantization']:>7.4f} "
              f"{d['preprocessing']:>8.4f} {d['interaction']:>9.4f}  {g['blame']}")
    for ch in gate["checks"]:
        print(f"  [{'pass' if ch['passed'] else 'FAIL'}] {ch['name']}: {ch['value']:.4g} (limit {ch['limit']:.4g})")
    print(f"gate: {gate['verdict'].upper()}")


if __name__ == "__main__":
    sys.exit(main())
