"""python -m evaluate.gate --run runs/demo [--config configs/gate.yaml] [--deployed-preprocess mod:fn |
                         --capture DIR] [--no-labels] [--update-baseline | --require-baseline]

A release gate that says *why* accuracy moved. Accuracy is measured in the 2x2 design (reference |
deployed preprocessing) x (fp32 | int8 under exact QDQ semantics) (see evaluate.attribution), then the
runtime: the same INT8 file under exact semantics against the kernels that really run it (this machine's
ONNX Runtime CPU kernels by default, `--runtime`, or the outputs captures recorded). So a drop is blamed on
quantization, on preprocessing, on the runtime (a CPU's integer kernels among them), with tensor-level
evidence. Reference preprocessing is the training data
path (the checkpoint's spec); deployed preprocessing is the contract read from the ONNX file through the
runtime's code, a `module:function(img_bgr, spec) -> (tensor, letterbox)`, or the tensors a device
captured (`--capture DIR`, `DIR/<model>/<id>.png|npz`, label-free). Thresholds, latency budgets per
target, size caps and the committed baseline are in the YAML config (evaluate.gate_config: unknown keys and
wrong types are refused). Every trained model is judged unless the config lists it under `skip:`; a
regression check that cannot run (no baseline file, no entry for this run or this CPU kernel class) prints a
`[skip]` line, and `--require-baseline` (CI) makes that exit 2. The machine's fingerprint (deploy.hardware)
heads the report and keys the baseline (evaluate.baseline).
Writes runs/<name>/gate/gate.json, gate.junit.xml and worst/<model>/*.jpg, and the gate section of the
bench report. Exit code: 0 pass, 1 fail, 2 could not run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from xml.sax.saxutils import quoteattr

from datasets.config import load_dataset_config
from datasets.metrics import PRIMARY, EvalSet
from deploy.atomic import write_atomic
from deploy.capture import CaptureError, capture_frames, captured_preprocess
from deploy.contract import ContractError
from deploy.errors import EdgeVisionError
from deploy.hardware import describe, fingerprint, kernel_mismatch
from deploy.preprocess import PreprocessSpec, preprocess, read_image
from deploy.runtime import OrtModel
from evaluate import attribution as att
from evaluate import quant_split
from evaluate.baseline import baseline_checks, baseline_for, class_missing, load_baselines, update_baseline
from evaluate.bench import interleaved_latency
from evaluate.bootstrap import LEVEL, RESAMPLES, delta_intervals
from evaluate.checks import blame, check, skipped_check
from evaluate.gate_config import MEASURED_TARGETS, GateConfig, GateConfigError, ModelLimits, load_gate_config
from evaluate.report import write_report
from evaluate.runtime import (
    DeployedRuntime,
    integer_reference,
    load_function,
    native_runtime,
    recorded_runtime,
    resolve_runtime,
)
from train.checkpoint import CheckpointError, load_model_record
from train.run_dir import RunDir


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evaluate.gate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True)
    p.add_argument("--config", default="configs/gate.yaml", help="thresholds, budgets and baseline")
    p.add_argument("--split", default="val")
    p.add_argument("--deployed-preprocess", default=None,
                   help="module:function(img_bgr, spec) -> (tensor, letterbox) used as the deployed path")
    p.add_argument("--capture", default=None, help="device captures: DIR/<model>/<id>.png + <id>.npz (no labels)")
    p.add_argument("--runtime", default=None, help="the deployed runtime (evaluate.runtime), default this CPU's "
                                                   "kernels: ort:threads=N, ort:ep=cuda, qemu:PROFILE (x86 "
                                                   "x86-avx2|x86-sse4, phones arm64|arm64-dotprod|arm64-i8mm), "
                                                   "ort-mobile, trt:int8|fp16 or module:function")
    p.add_argument("--no-labels", action="store_true", help="score by agreement with fp32 on reference inputs")
    p.add_argument("--strict", action="store_true", help="fail a drop past its limit even when its 95%% interval "
                                                         "reaches the limit (within noise: a warning otherwise)")
    p.add_argument("--limit", type=int, default=None, help="score only the first N images")
    p.add_argument("--update-baseline", action="store_true", help="write this run's figures as the new baseline")
    p.add_argument("--require-baseline", action="store_true",
                   help="exit 2 when a regression check cannot run (no baseline file or no entry for this run)")
    return p


def gate_model(task: str, run: Path, limits: ModelLimits, split: str = "val", deployed_fn=None,
               max_images: int | None = None, labels: bool = True, capture: Path | None = None,
               int8_path: Path | None = None, evidence_dir: Path | None = None, runtime: str | None = None,
               strict: bool = False) -> dict:
    """Cells, deltas, their intervals, evidence and checks for one model. `int8_path` overrides the exported INT8
    file; `runtime` is a --runtime spec (evaluate.runtime); with captures that recorded outputs, those are the
    runtime. `strict`: a drop past its limit only within noise fails too."""
    rd = RunDir.of(run)
    ckpt = load_model_record(rd, task)
    fp32 = OrtModel(rd.model(task, "fp32"))
    int8 = OrtModel(int8_path or rd.model(task, "int8"), exact=True)  # the QDQ graph as written, on any CPU
    for m in (fp32, int8):
        if m.contract.config_hash != ckpt["config_hash"]:
            raise ContractError(f"{m.path}: config hash differs from the checkpoint's; re-run `make export`")
    train_spec = PreprocessSpec.from_dict(ckpt["preprocess"])
    dep_spec = fp32.contract.preprocess
    ref_fn = lambda img: preprocess(img, train_spec)  # noqa: E731
    dep_fn = (lambda img: deployed_fn(img, dep_spec)) if deployed_fn else (lambda img: preprocess(img, dep_spec))
    rt = resolve_runtime(runtime, task, run, int8.path) if runtime else None
    if capture is not None:
        frames = capture_frames(capture / task)
        dep_fn, labels = captured_preprocess(frames), False
        rt = rt or recorded_runtime(frames, run)
        data = load_dataset_config(ckpt["config"]["data"])
        thin = data.segmentation.thin_classes if task == "segmenter" and data.segmentation else ()
        ev = EvalSet.unlabeled(task, frames, (evidence_dir or rd.gate) / "work" / task,
                               fp32.contract.class_names, thin)
    else:
        ev = EvalSet.from_checkpoint(ckpt, split, max_images)
    rt = rt or native_runtime(int8.path)  # by default the deployed runtime is this CPU's ONNX Runtime kernels
    post = fp32.contract.postprocess
    metric = limits.metric or PRIMARY[task]
    preds = att.predict_cells(ev, {"fp32": fp32.infer, "int8": int8.infer}, {"reference": ref_fn, "deployed": dep_fn},
                              post)
    work = (evidence_dir or rd.gate) / "work" / task
    variants = quant_split.write_variants(fp32.path, int8.path, work)
    for part, path in variants.items():  # the same calibration, one part of quantization at a time
        preds[f"reference/int8-{part}"] = ev.predict(OrtModel(path, exact=True).infer, ref_fn, post)
    rt_exact, integer = predict_runtime(ev, rt, int8, dep_fn, post, preds)
    cells = att.score_cells(ev, preds, metric, labels)
    intervals = delta_intervals(ev, preds, metric, labels) or {}  # paired bootstrap over the images
    out_dir = (evidence_dir or rd.gate) / "worst" / task
    ranked = fp32.contract.ranked  # compared row by matched row
    evidence = {
        "input_tensor": att.input_evidence(ref_fn, dep_fn, ev.images),
        "output_sqnr_db": att.output_divergence(fp32.infer, int8.infer, ref_fn, ev.images, fp32.contract.outputs,
                                                ranked=ranked),
        "worst_layers": att.top_sqnr_layers(fp32.path, int8.path, ev.images[:8], train_spec),
        "worst_images": att.save_worst(ev, preds, out_dir),
    }
    d = att.deltas(cells)
    evidence["quantization_split"] = quant_split.evidence(cells, d["quantization"], fp32.path, variants["weights"],
                                                          evidence["worst_layers"])
    evidence["runtime"] = runtime_evidence(ev, rt, rt_exact, integer, cells, dep_fn, fp32.contract.outputs, ranked)
    x, _ = ref_fn(read_image(ev.images[0]))
    one = {name: OrtModel(m.path, threads=1) for name, m in (("fp32", fp32), ("int8", int8))}  # as deployed
    # 10 alternating rounds of 20 runs (about 1 s for the demo models): a busy spell of a shared host then moves a
    # few samples of both files, not the median of one of them (5 rounds of 10 read 1.32x where 1.78x holds)
    lat = interleaved_latency({name: (lambda m=m: m.infer(x[None])) for name, m in one.items()}, warmup=10,
                              repeats=200, rounds=10)
    measured = {"cpu-1thread": lat["int8"]["p50"]}
    speedup = {"cpu-1thread": lat["fp32"]["p50"] / lat["int8"]["p50"]}  # side by side: survives a busy machine
    size_mb = int8.path.stat().st_size / 2**20
    checks = [check(task, "quantization drop", d["quantization"], limits.max_quantization_drop, "max",
                    "quantization", intervals.get("quantization"), strict),
              check(task, "preprocessing drop", d["preprocessing"], limits.max_preprocessing_drop, "max",
                    "preprocessing", intervals.get("preprocessing"), strict),
              check(task, "input tensor PSNR dB (reference vs deployed)", evidence["input_tensor"]["min_psnr"],
                    limits.min_input_psnr, "min", "preprocessing")]
    rte = evidence["runtime"]
    pair = rt.name if rte["reference"] == rt.name else f"{rt.name} vs {rte['reference']}"
    rt_interval = intervals.get("runtime" if rte["rounding"] is None else "kernels")
    checks += [check(task, f"runtime drop ({pair})", rte["drop"], limits.max_runtime_drop, "max", "runtime",
                     rt_interval, strict),
               check(task, f"runtime output SQNR dB ({pair})",
                     min(rte["output_sqnr_db"].values()), limits.min_runtime_sqnr, "min", "runtime")]
    if labels:
        checks.append(check(task, f"{metric} (deployed int8, {rt.name})", cells["runtime/deployed"],
                            limits.min_accuracy, "min"))
    for target, budget in limits.latency_ms.items():
        if target in MEASURED_TARGETS:
            checks.append(check(task, f"int8 latency ms ({target})", measured[target], budget, "max"))
        else:  # e.g. jetson-orin: measured where TensorRT runs the engine (python -m export.tensorrt)
            checks.append({**check(task, f"int8 latency ms ({target})", None, budget, "max"),
                           "skipped": f"no {target} device here"})
    checks.append(check(task, "int8 size MB", size_mb, limits.max_size_mb, "max"))
    return {"metric": metric, "labels": labels, "cells": cells, "deltas": d, "intervals": intervals,
            "evidence": evidence,
            "accuracy": cells["runtime/deployed"],  # deployed inputs through the deployed runtime
            "latency_ms": measured, "speedup": speedup, "size_mb": size_mb, "images": len(ev.images),
            "checks": [c for c in checks if c["limit"] is not None]}  # limits the config leaves out are not checks


def predict_runtime(ev: EvalSet, rt: DeployedRuntime, int8: OrtModel, dep_fn, post: dict, preds: dict):
    """Add the runtime's cells to `preds`, all on the deployed inputs and the runtime's model file: under exact
    QDQ semantics (runtime/reference), through a correct integer runtime (runtime/integer, when one can run
    here: evaluate.runtime.integer_reference) and through the deployed runtime. -> (the exact model, the
    integer reference or None)."""
    exact = int8 if rt.model == int8.path else OrtModel(rt.model, exact=True)
    preds["runtime/reference"] = preds["deployed/int8"] if exact is int8 else ev.predict(exact.infer, dep_fn, post)
    preds["runtime/deployed"] = ev.predict(rt.runner, dep_fn, post)
    integer = integer_reference(rt.model, exact.contract.kernels, rt.kernels)
    if integer is not None:
        same = integer.name == rt.name  # the default: this machine's kernels, which cannot saturate on this file
        preds["runtime/integer"] = preds["runtime/deployed"] if same else ev.predict(integer.runner, dep_fn, post)
    return exact, integer


def runtime_evidence(ev: EvalSet, rt: DeployedRuntime, exact: OrtModel, integer: DeployedRuntime | None,
                     cells: dict, dep_fn, outputs: list[str], ranked: bool) -> dict:
    """runtime = rounding (exact semantics -> a correct integer runtime: what INT8 does on any CPU that computes
    it right) + kernels (that runtime -> the deployed one: the deployed runtime's own fault). The checks judge
    the second part; without an integer reference here, the whole."""
    ref = integer or DeployedRuntime("exact QDQ", rt.model, exact.infer)
    div = lambda a, b: att.output_divergence(a, b, dep_fn, ev.images, outputs, ranked=ranked)  # noqa: E731
    out = {"runtime": rt.name, "model": rt.model.name, "reference": ref.name, "kernels": rt.kernels,
           "file_kernels": exact.contract.kernels, "mismatch": kernel_mismatch(exact.contract.kernels, rt.kernels),
           "output_sqnr_db": {k: 99.0 for k in outputs} if ref.name == rt.name else div(ref.runner, rt.runner),
           "exact_sqnr_db": div(exact.infer, rt.runner)}
    total = cells["runtime/reference"] - cells["runtime/deployed"]
    if integer is None:
        return {**out, "drop": total, "rounding": None, "note": "no integer runtime that cannot saturate on this "
                "file runs here (install qemu-user-static): rounding is not separated from the runtime's fault"}
    rounding = cells["runtime/reference"] - cells["runtime/integer"]
    return {**out, "drop": total - rounding, "rounding": rounding}


def junit_xml(gate: dict) -> str:
    cases = []
    for c in gate["checks"]:
        body = ""
        if c.get("skipped"):
            body = f"<skipped message={quoteattr(c['skipped'])}/>"
        elif not c["passed"]:
            msg = f"{c['value']} vs limit {c['limit']}"
            body = f"<failure message={quoteattr(msg)}/>"
        cases.append(f"  <testcase classname=\"edge_vision.gate\" name={quoteattr(c['name'])}>{body}</testcase>")
    failures = sum(not c["passed"] for c in gate["checks"])
    skipped = sum(bool(c.get("skipped")) for c in gate["checks"])
    return (f'<?xml version="1.0" encoding="utf-8"?>\n<testsuite name="edge-vision gate" tests="{len(cases)}" '
            f'failures="{failures}" skipped="{skipped}">\n' + "\n".join(cases) + "\n</testsuite>\n")


def judged_tasks(run: Path, cfg: GateConfig, config: str, capture: Path | None) -> tuple[list[str], dict]:
    """The trained tasks this gate judges, and those the config skips (task -> reason). Every trained task
    must have limits or be listed under `skip:`: a typo in a section name may never mean "not judged"."""
    trained = RunDir.of(run).tasks()
    if not trained:
        raise CheckpointError(f"{run}: no trained model (no detector/best.pt or segmenter/best.pt); run `make train` "
                              "(or `python -m export.adopt` for a model trained elsewhere)")
    judged, skipped = [], {}
    for task in trained:
        if task in cfg.skip:
            skipped[task] = f"listed under skip: in {config}"
        elif cfg.limits(task) is None:
            raise GateConfigError(f"{config}: no `{task}:` section for the {task} trained in {run}; add its limits "
                                  "or list it under skip:")
        elif capture is not None and not (capture / task).is_dir():
            raise CaptureError(f"{capture / task}: no captured frames for the {task}; capture them with "
                               f"`deploy run --capture` or list it under skip: in {config}")
        else:
            judged.append(task)
    if not judged:
        raise GateConfigError(f"{config}: every model trained in {run} is listed under skip:; nothing to judge")
    return judged, skipped


def run_gate(args, cfg: GateConfig) -> dict:
    run = Path(args.run)
    deployed_fn = load_function(args.deployed_preprocess, "--deployed-preprocess") if args.deployed_preprocess else None
    capture = Path(args.capture) if args.capture else None
    labels = not args.no_labels and capture is None
    tasks, skipped = judged_tasks(run, cfg, args.config, capture)
    hardware = fingerprint()
    kclass = hardware["kernel_class"]
    baselines, why = load_baselines(cfg, args.config)
    bases = {t: baseline_for(t, cfg.limits(t), baselines, why, run, cfg.baseline, labels) for t in tasks}
    missing = {t: r or class_missing(b, kclass, cfg.baseline) for t, (b, r) in bases.items()}
    missing = {t: r for t, r in missing.items() if r}
    if args.update_baseline and (not labels or cfg.baseline is None):
        raise GateConfigError(f"--update-baseline needs labels and a `baseline:` path in {args.config}")
    if args.require_baseline and not args.update_baseline and missing:
        raise GateConfigError("--require-baseline: " + "; ".join(f"{t}: {r}" for t, r in missing.items()))
    models = {}
    for task in tasks:
        r = gate_model(task, run, cfg.limits(task), args.split, deployed_fn, args.limit, labels, capture,
                       runtime=args.runtime, strict=args.strict)
        base, reason = bases[task]
        if not args.update_baseline:
            r["checks"] += (baseline_checks(task, r, base, kclass, cfg.baseline, cfg.baseline_tolerance) if base
                            else [skipped_check(task, "baseline regression", reason)])
        r["blame"] = blame(r)
        models[task] = r
    checks = [c for m in models.values() for c in m["checks"]]
    gate = {"verdict": "pass" if all(c["passed"] for c in checks) else "fail", "config": args.config,
            "hardware": hardware,
            "deployed_preprocess": args.capture or args.deployed_preprocess or "runtime",
            "deployed_runtime": args.runtime or ("recorded in the captures" if args.capture else "ort"),
            "labels": all(m["labels"] for m in models.values()), "models": models, "skipped": skipped,
            "checks": checks}
    if args.update_baseline:
        update_baseline(cfg, baselines, run, models, hardware)
    return gate


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    run = Path(args.run)
    try:
        gate = run_gate(args, load_gate_config(args.config))
    except EdgeVisionError as e:  # bad input only: a bug in the gate is a traceback, not "could not run"
        print(f"gate: could not run: {e}", file=sys.stderr)
        return 2
    out = RunDir.of(run).gate
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "gate.json", json.dumps(gate, indent=2))
    write_atomic(out / "gate.junit.xml", junit_xml(gate))
    write_report(run, {"gate": gate})
    print_verdict(gate)
    return 0 if gate["verdict"] == "pass" else 1


def print_verdict(gate: dict) -> None:
    mode = "labels" if gate["labels"] else "no labels: agreement with fp32 on reference inputs"
    print(f"gate ({mode}; deployed preprocessing: {gate['deployed_preprocess']})")
    print(f"machine: {describe(gate['hardware'])}")
    print(f"{'model':<10} {'metric':<9} {'ref/fp32':>9} {'ref/int8':>9} {'dep/fp32':>9} {'dep/int8':>9} "
          f"{'quant':>7} {'preproc':>8} {'interact':>9} {'runtime':>8}  blame")
    for task, g in gate["models"].items():
        c, d = g["cells"], g["deltas"]
        print(f"{task:<10} {g['metric']:<9} {c['reference/fp32']:>9.4f} {c['reference/int8']:>9.4f} "
              f"{c['deployed/fp32']:>9.4f} {c['deployed/int8']:>9.4f} {d['quantization']:>7.4f} "
              f"{d['preprocessing']:>8.4f} {d['interaction']:>9.4f} {d['runtime']:>8.4f}  {g['blame']}")
        ev = g["evidence"]
        print(f"  {task}: input tensors max |diff| {ev['input_tensor']['max_abs']}, min PSNR "
              f"{ev['input_tensor']['min_psnr']:.1f} dB; int8 output SQNR "
              + ", ".join(f"{k} {v:.1f} dB" for k, v in ev["output_sqnr_db"].items())
              + "; worst layer " + (f"{ev['worst_layers'][0]['tensor']} ({ev['worst_layers'][0]['qdq_sqnr']:.1f} dB)"
                                    if ev["worst_layers"] else "-"))
        qs = ev["quantization_split"]
        print(f"  {task}: quantization = weights {qs['weights']:.4f} + activations {qs['activations']:.4f} + "
              f"interaction {qs['interaction']:.4f}; {qs['guilty']}: {qs['suggestion']}")
        rt = ev["runtime"]
        split = (f"rounding {rt['rounding']:.4f} (exact QDQ -> {rt['reference']}) + kernels {rt['drop']:.4f}"
                 if rt["rounding"] is not None else f"{rt['drop']:.4f} ({rt['note']})")
        print(f"  {task}: runtime {rt['runtime']} on {rt['model']} (made for {rt['file_kernels'] or 'unrecorded'} "
              f"kernels): runtime = {split}; output SQNR against {rt['reference']} "
              + ", ".join(f"{k} {v:.1f} dB" for k, v in rt["output_sqnr_db"].items()))
        if rt["mismatch"] and "runtime" in g["blame"]:
            print(f"  {task}: runtime: {rt['mismatch']}")
        ci = g.get("intervals") or {}
        print(f"  {task}: {int(100 * LEVEL)}% intervals (paired bootstrap, {RESAMPLES} resamples of the {g['images']} "
              "images): " + (", ".join(f"{k} [{lo:+.4f}, {hi:+.4f}]" for k, (lo, hi) in ci.items()) if ci else
                             f"none ({g['metric']} has no per-image decomposition)"))
    for task, reason in gate["skipped"].items():
        print(f"  [skip] {task}: not judged ({reason})")
    for ch in gate["checks"]:
        if ch.get("skipped") and ch["limit"] is None:
            print(f"  [skip] {ch['name']}: {ch['skipped']}")
            continue
        state = "skip" if ch.get("skipped") else ("pass" if ch["passed"] else "FAIL")
        state = "warn" if ch.get("within_noise") and ch["passed"] else state
        value = "-" if ch["value"] is None else f"{ch['value']:.4g}"
        ci = f" [{ch['interval'][0]:.4g}, {ch['interval'][1]:.4g}]" if "interval" in ch else ""
        noise = ": past the limit within noise (its interval reaches it)" if ch.get("within_noise") else ""
        print(f"  [{state}] {ch['name']}: {value}{ci} (limit {ch['limit']:.4g}){noise}")
    print(f"gate: {gate['verdict'].upper()}")


if __name__ == "__main__":
    sys.exit(main())
