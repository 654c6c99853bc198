"""python -m evaluate.kernels --run runs/demo [--profiles x86-avx2,x86-sse4] [--limit N]

Accuracy of every INT8 CPU file per CPU kernel class, on the val split: fp32, the INT8 file under exact QDQ
semantics (what no CPU changes), this machine's ONNX Runtime kernels, and each emulated class's kernels under QEMU
(deploy.emulate; the same .venv, the same file and inputs). A class whose kernels lose more than --max-drop
against exact semantics is a runtime loss the gate would blame on `runtime` there: re-export for it
(`python -m export --target ...`). Emulated wall time is printed as the check's cost, never as latency.
A profile that cannot run here (no qemu-user-static, another architecture) is skipped with the reason.
Writes runs/<name>/kernels/kernels.json. Exit code: 0 every class within --max-drop, 1 one is not, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from datasets.config import DatasetError
from datasets.metrics import PRIMARY, EvalSet
from deploy.atomic import write_atomic
from deploy.emulate import PROFILES, EmulatedModel, unavailable
from deploy.errors import EdgeVisionError
from deploy.hardware import describe, fingerprint, kernel_mismatch
from deploy.preprocess import preprocess
from deploy.runtime import OrtModel
from train.checkpoint import load_model_record
from train.run_dir import RunDir


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evaluate.kernels", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True)
    p.add_argument("--split", default="val")
    p.add_argument("--profiles", default=",".join(PROFILES), help=f"emulated classes, of {sorted(PROFILES)}")
    p.add_argument("--limit", type=int, default=None, help="score only the first N images")
    p.add_argument("--max-drop", type=float, default=0.005, help="kernels vs exact semantics, metric units")
    return p


def score_kernels(task: str, run: Path, split: str, profiles: list[str], limit: int | None) -> dict:
    """{kernels: {metric, vs_exact, seconds} | {skipped}} for one model's INT8 CPU file."""
    rd = RunDir.of(run)
    ev = EvalSet.from_checkpoint(load_model_record(rd, task), split, limit)
    metric = PRIMARY[task]
    fp32, int8 = OrtModel(rd.model(task, "fp32")), OrtModel(rd.model(task, "int8"), exact=True)
    pre = lambda img: preprocess(img, int8.contract.preprocess)  # noqa: E731
    post = int8.contract.postprocess

    def timed(runner) -> dict:
        t0 = time.perf_counter()
        value = ev.score(runner, pre, post, thin_metrics=False)[metric]
        return {metric: float(value), "seconds": round(time.perf_counter() - t0, 1)}

    here = fingerprint()["kernel_class"]
    rows = {"fp32": timed(fp32.infer), "exact": timed(int8.infer), f"native ({here})": timed(OrtModel(int8.path).infer)}
    rows[f"native ({here})"]["kernels"] = here
    for profile in profiles:
        why = unavailable(profile)
        if why:
            rows[f"qemu {profile}"] = {"skipped": why}
            continue
        m = EmulatedModel(int8.path, profile)
        try:
            rows[f"qemu {profile}"] = {**timed(m.infer), "kernels": profile}
        finally:
            m.close()
    for r in rows.values():
        if metric in r:
            r["vs_exact"] = r[metric] - rows["exact"][metric]
            r["vs_fp32"] = r[metric] - rows["fp32"][metric]
        if "kernels" in r:
            r["mismatch"] = kernel_mismatch(int8.contract.kernels, r["kernels"])
    return {"file": int8.path.name, "made_for": int8.contract.kernels or "unrecorded", "metric": metric,
            "images": len(ev.images), "rows": rows}


def print_table(task: str, result: dict, max_drop: float) -> None:
    metric = result["metric"]
    print(f"{task}: {result['file']} (made for {result['made_for']} kernels), {metric} on {result['images']} images")
    print(f"  {'kernels':<24} {metric:>9} {'vs fp32':>8} {'vs exact':>9} {'wall s':>7}")
    for name, r in result["rows"].items():
        if "skipped" in r:
            print(f"  {name:<24} skipped: {r['skipped']}")
            continue
        flag = "  LOSES" if -r["vs_exact"] > max_drop else ""
        print(f"  {name:<24} {r[metric]:>9.4f} {r['vs_fp32']:>+8.4f} {r['vs_exact']:>+9.4f} {r['seconds']:>7.1f}{flag}")
        if flag and r.get("mismatch"):
            print(f"    {r['mismatch']}")


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    run = Path(args.run)
    profiles = [p for p in args.profiles.split(",") if p]
    try:
        tasks = RunDir.of(run).tasks()
        if not tasks:
            raise EdgeVisionError(f"{run}: no trained model; run `make train export` first")
        hw = fingerprint()
        print(f"kernels: {describe(hw)}; emulated: {', '.join(profiles) or 'none'} (wall time is the check's cost, "
              "not latency)", flush=True)
        results = {"hardware": hw, "max_drop": args.max_drop}
        for task in tasks:
            results[task] = score_kernels(task, run, args.split, profiles, args.limit)
            print_table(task, results[task], args.max_drop)
    except (EdgeVisionError, DatasetError) as e:
        print(f"kernels: could not run: {e}", file=sys.stderr)
        return 2
    out = RunDir.of(run).kernels
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "kernels.json", json.dumps(results, indent=2))
    losing = [f"{t} {k}" for t in tasks for k, r in results[t]["rows"].items()
              if "vs_exact" in r and -r["vs_exact"] > args.max_drop]
    print(f"kernels: {'every class within' if not losing else 'LOSS beyond'} {args.max_drop} of exact semantics"
          + (f": {', '.join(losing)}" if losing else ""))
    return 1 if losing else 0


if __name__ == "__main__":
    sys.exit(main())
