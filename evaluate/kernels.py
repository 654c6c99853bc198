"""python -m evaluate.kernels --run runs/demo [--profiles x86-avx2,arm64,...] [--limit N]

Accuracy of every INT8 CPU file (the .onnx, and the phones' .ort where exported) per CPU kernel class, on the
val split: fp32, the INT8 file under exact QDQ semantics (what no CPU changes), this machine's ONNX Runtime
kernels, and each emulated profile's kernels under QEMU (deploy.emulate: x86 classes with this .venv, phone
classes in the ARM64 userland of `make arm-env`; the same files and inputs). For the ARM profiles it also names
the integer kernels ONNX Runtime ran, read from the code QEMU translated (deploy.kernel_path). A class whose
kernels lose more than --max-drop against exact semantics is a runtime loss the gate would blame on `runtime`
there: re-export for it (`python -m export --target ...`). Emulated wall time is printed as the check's cost,
never as latency. A profile that cannot run here (no qemu-user-static, no ARM64 userland) is skipped with the
reason. Writes runs/<name>/kernels/kernels.json. Exit code: 0 every class within --max-drop, 1 one is not, 2 bad
input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from datasets.config import DatasetError
from datasets.metrics import PRIMARY, EvalSet
from deploy.atomic import write_atomic
from deploy.emulate import PROFILES, EmulatedModel, unavailable
from deploy.errors import EdgeVisionError
from deploy.hardware import describe, fingerprint, kernel_mismatch
from deploy.preprocess import preprocess
from deploy.runtime import OrtModel
from evaluate import arm_run
from train.checkpoint import load_model_record
from train.run_dir import RunDir

FORMATS = {"onnx": "int8", "ort": "int8.ort"}  # column -> RunDir variant


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evaluate.kernels", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True)
    p.add_argument("--split", default="val")
    p.add_argument("--profiles", default=",".join(PROFILES), help=f"emulated classes, of {list(PROFILES)}")
    p.add_argument("--limit", type=int, default=None, help="score only the first N images")
    p.add_argument("--max-drop", type=float, default=0.005, help="kernels vs exact semantics, metric units")
    p.add_argument("--run-frames", type=int, default=20,
                   help="frames of the val video `deploy run` processes in each ARM userland (0: skip that check)")
    return p


def score_kernels(task: str, run: Path, split: str, profiles: list[str], limit: int | None) -> dict:
    """fp32, exact, and per kernel class {kernels, stands_for, onnx|ort: {metric, vs_exact, seconds,
    kernel_path}} | {skipped} for one model's INT8 CPU files."""
    rd = RunDir.of(run)
    ev = EvalSet.from_checkpoint(load_model_record(rd, task), split, limit)
    metric = PRIMARY[task]
    files = {col: rd.model(task, variant) for col, variant in FORMATS.items() if rd.model(task, variant).is_file()}
    if "onnx" not in files:
        raise EdgeVisionError(f"{rd.model(task, 'int8')}: no INT8 file; run `make export`")
    exact = OrtModel(files["onnx"], exact=True)
    pre = lambda img: preprocess(img, exact.contract.preprocess)  # noqa: E731
    post = exact.contract.postprocess

    lock = threading.Lock()  # scoring (pycocotools) one at a time; the emulated workers run side by side

    def timed(runner) -> dict:
        t0 = time.perf_counter()
        preds = ev.predict(runner, pre, post)
        seconds = round(time.perf_counter() - t0, 1)
        with lock:
            return {metric: float(ev.score_predictions(preds, thin_metrics=False)[metric]), "seconds": seconds}

    def emulated(profile: str, path: Path) -> dict:
        m = EmulatedModel(path, profile, trace=PROFILES[profile].arm)
        try:
            cell = timed(m.infer)
        finally:
            m.close()
        return {**cell, "kernel_path": m.kernel_path} if m.kernel_path else cell

    out = {"files": {col: str(p.relative_to(rd.export)) for col, p in files.items()},
           "made_for": exact.contract.kernels or "unrecorded", "metric": metric, "images": len(ev.images),
           "fp32": timed(OrtModel(rd.model(task, "fp32")).infer)[metric], "exact": timed(exact.infer)[metric]}
    here = fingerprint()["kernel_class"]
    rows = {f"native {here}": {"kernels": here, "stands_for": "this machine",
                               **{col: timed(OrtModel(p).infer) for col, p in files.items()}}}
    jobs = {}
    with ThreadPoolExecutor(max_workers=max(1, min(2, os.cpu_count() or 1))) as pool:
        for profile in profiles:
            why = unavailable(profile)
            prof = PROFILES[profile]
            rows[f"qemu {profile}"] = {"skipped": why} if why else {"kernels": prof.kernels,
                                                                    "stands_for": prof.stands_for}
            jobs.update({(profile, col): pool.submit(emulated, profile, p) for col, p in files.items() if not why})
        for (profile, col), job in jobs.items():
            rows[f"qemu {profile}"][col] = job.result()
    for r in rows.values():
        for col in files:
            if col in r:
                r[col]["vs_exact"] = r[col][metric] - out["exact"]
        if "kernels" in r:
            r["mismatch"] = kernel_mismatch(exact.contract.kernels, r["kernels"])
    return {**out, "rows": rows}


def print_table(task: str, result: dict, max_drop: float) -> None:
    metric, files = result["metric"], result["files"]
    print(f"{task}: {metric} on {result['images']} images; fp32 {result['fp32']:.4f}, INT8 under exact semantics "
          f"{result['exact']:.4f}; {' and '.join(files.values())} (made for {result['made_for']} kernels)")
    head = "".join(f" {'.' + col:>8} {'vs exact':>9}" for col in files)
    print(f"  {'kernels':<22}{head} {'wall s':>7}  kernel path (ONNX Runtime's integer kernels)")
    for name, r in result["rows"].items():
        if "skipped" in r:
            print(f"  {name:<22} skipped: {r['skipped']}")
            continue
        cells = "".join(f" {r[c][metric]:>8.4f} {r[c]['vs_exact']:>+9.4f}" for c in files)
        paths = {r[c]["kernel_path"]["path"] for c in files if "kernel_path" in r[c]}
        flag = "  LOSES" if any(-r[c]["vs_exact"] > max_drop for c in files) else ""
        print(f"  {name:<22}{cells} {sum(r[c]['seconds'] for c in files):>7.1f}  {' / '.join(sorted(paths))}{flag}")
        if flag and r.get("mismatch"):
            print(f"    {r['mismatch']}")


def field_run(run: Path, tasks: list[str], split: str, profile: str, frames: int) -> dict:
    """`deploy run` with the INT8 CPU files on a video of the first val images, natively and in the ARM userland
    under `profile` (evaluate.arm_run), and whether their JSON lines agree."""
    rd = RunDir.of(run)
    models = [rd.model(t, "int8") for t in ("detector", "segmenter") if t in tasks]
    images = EvalSet.from_checkpoint(load_model_record(rd, tasks[0]), split, frames).images
    with tempfile.TemporaryDirectory(prefix="edge-vision-arm-run-") as tmp:
        r = arm_run.smoke(models[0], models[1] if len(models) > 1 else None, images, profile, Path(tmp))
    k = r["kernel_effect"]
    print(f"deploy run under {profile} (ARM64 userland) on {r['frames']} val frames: "
          + ("JSON lines as this machine's pipeline gives with the profile's kernel outputs" if r["agree"] else
             f"DIFFERS from this machine's pipeline with the profile's kernel outputs on frames "
             f"{r['disagreeing_frames']}")
          + f"; against the native run, {k['matched']} of its {k['confident_boxes']} boxes scoring >= 0.5 found, "
          f"scores moved by up to {k['max_score_change']:.3f}, boxes by {k['max_box_shift_px']:.1f} px, thin pixel "
          f"counts by {100 * k['max_thin_pixel_change']:.1f}%"
          f" ({r['seconds']['emulated']:.0f} s emulated)", flush=True)
    return r


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    run = Path(args.run)
    profiles = [p for p in args.profiles.split(",") if p]
    t0 = time.perf_counter()
    try:
        unknown = [p for p in profiles if p not in PROFILES]
        if unknown:
            raise EdgeVisionError(f"--profiles: unknown {unknown}; known: {list(PROFILES)}")
        tasks = RunDir.of(run).tasks()
        if not tasks:
            raise EdgeVisionError(f"{run}: no trained model; run `make train export` first")
        hw = fingerprint()
        print(f"kernels: {describe(hw)}; emulated (wall time is the check's cost, not latency):", flush=True)
        for p in profiles:
            print(f"  {p:<14} qemu -cpu {PROFILES[p].cpu:<12} {PROFILES[p].stands_for}")
        results = {"hardware": hw, "max_drop": args.max_drop,
                   "profiles": {p: PROFILES[p].stands_for for p in profiles}}
        for task in tasks:
            results[task] = score_kernels(task, run, args.split, profiles, args.limit)
            print_table(task, results[task], args.max_drop)
        # deploy run's --model is a detector: a run without one has no field run to check
        runnable = args.run_frames and "detector" in tasks
        arm = [p for p in profiles if PROFILES[p].arm and not unavailable(p)] if runnable else []
        results["deploy_run"] = {p: field_run(run, tasks, args.split, p, args.run_frames) for p in arm}
    except (EdgeVisionError, DatasetError) as e:
        print(f"kernels: could not run: {e}", file=sys.stderr)
        return 2
    results["wall_seconds"] = round(time.perf_counter() - t0, 1)
    out = RunDir.of(run).kernels
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "kernels.json", json.dumps(results, indent=2))
    losing = [f"{t} {k} .{c}" for t in tasks for k, r in results[t]["rows"].items() for c in results[t]["files"]
              if c in r and -r[c]["vs_exact"] > args.max_drop]
    losing += [f"deploy run under {p}" for p, r in results["deploy_run"].items() if not r["agree"]]
    print(f"kernels: {'every class within' if not losing else 'LOSS beyond'} {args.max_drop} of exact semantics"
          + (f": {', '.join(losing)}" if losing else "") + f" ({results['wall_seconds']:.0f} s)")
    return 1 if losing else 0


if __name__ == "__main__":
    sys.exit(main())
