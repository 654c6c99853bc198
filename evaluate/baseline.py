"""The gate's committed baseline, one entry per run and CPU kernel class (deploy.hardware).

    {"demo": {"x86-avx512vnni": {"hardware": {...fingerprint}, "detector": {...}, "segmenter": {...}},
              "x86-avx2": {...}}}

Speed is a property of the CPU: the INT8 speed-up over fp32 (timed side by side in one run, so it survives a
busy machine) is compared only with the entry of this machine's kernel class, and a class without an entry is a
loud [skip] (exit 2 under --require-baseline). Accuracy and size are properties of the model: training is not
bit-reproducible across ISAs and the export runs wherever the model is trained, so they are compared with this
class's entry where there is one, else with the least favourable entry of any class.
"""

from __future__ import annotations

import json
from pathlib import Path

from datasets.metrics import PRIMARY
from deploy.atomic import write_atomic
from evaluate.checks import check, skipped_check
from evaluate.gate_config import BaselineTolerance, GateConfig, GateConfigError, ModelLimits


def load_baselines(cfg: GateConfig, config: str) -> tuple[dict, str | None]:
    """(baselines by run name, or {} with the reason none could be read)."""
    if cfg.baseline is None:
        return {}, f"no `baseline:` file in {config}"
    path = Path(cfg.baseline)
    if not path.is_file():
        return {}, f"{path} not found (write it with --update-baseline and commit it)"
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise GateConfigError(f"{path}: not a JSON baseline ({e}); restore it or rewrite it with "
                              "--update-baseline") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise GateConfigError(f"{path}: a baseline file is a JSON object keyed by run name, then kernel class")
    return data, None


def baseline_for(task: str, limits: ModelLimits, baselines: dict, reason: str | None, run: Path, path: str | None,
                 labels: bool) -> tuple[dict[str, dict], str | None]:
    """This task's committed figures by kernel class, or {} and why its regression checks cannot run."""
    if reason:
        return {}, reason
    if not labels:
        return {}, "no labels: the baseline holds labelled accuracy"
    if run.name not in baselines:  # keyed by run name: a demo baseline never judges another run
        return {}, (f"{path} has no entry for run {run.name!r} (has {sorted(baselines)}); baselines are keyed "
                    "by the run folder's name")
    out = {}
    for kclass, entry in baselines[run.name].items():
        if not isinstance(entry, dict) or "hardware" not in entry:
            raise GateConfigError(f"{path}: {run.name}.{kclass} is not a kernel-class entry with its hardware; "
                                  "rewrite it with --update-baseline")
        base = entry.get(task)
        if not isinstance(base, dict):
            continue
        missing = [k for k in ("metric", "accuracy", "size_mb") if k not in base]
        if missing:
            raise GateConfigError(f"{path}: {run.name}.{kclass}.{task} lacks {missing}; rewrite it with "
                                  "--update-baseline")
        if base["metric"] == (limits.metric or PRIMARY[task]):
            out[kclass] = base
    if not out:
        return {}, f"{path}: run {run.name!r} has no {task} figures on {limits.metric or PRIMARY[task]}"
    return out, None


def class_missing(bases: dict[str, dict], kclass: str, path: str | None) -> str | None:
    """Why the speed-up cannot be judged on this kernel class, or None."""
    if kclass in bases:
        return None
    return (f"{path} has no entry for kernel class {kclass} (has {sorted(bases)}): speed is compared only on "
            "the same class; write one on such a machine with --update-baseline and commit it")


def baseline_checks(task: str, result: dict, bases: dict[str, dict], kclass: str, path: str | None,
                    tol: BaselineTolerance) -> list[dict]:
    """Regression against the committed baseline: accuracy, INT8 speed-up and size may not get worse than tol.

    Speed is judged by the INT8 speed-up over fp32 timed side by side in this run, not by milliseconds: the
    same demo models measured 1.6 / 2.7 ms (detector / segmenter INT8, 1 thread) on one day and 3.0 / 7.7 ms
    on another on this project's shared 2-core machines, while their ratios moved far less.
    """
    same = bases.get(kclass)
    acc_class, acc = ((kclass, same) if same else min(bases.items(), key=lambda kv: kv[1]["accuracy"]))
    size_class, size = ((kclass, same) if same else max(bases.items(), key=lambda kv: kv[1]["size_mb"]))
    out = [check(task, f"baseline {result['metric']} (deployed int8, baseline {acc['accuracy']:.4f} on "
                       f"{acc_class})", result["accuracy"], acc["accuracy"] - tol.accuracy, "min")]
    why = class_missing(bases, kclass, path)
    if why:
        out.append(skipped_check(task, "baseline int8 speed-up over fp32 (cpu-1thread)", why))
    elif "cpu-1thread" in same.get("speedup", {}):
        ref = same["speedup"]["cpu-1thread"]
        out.append(check(task, f"baseline int8 speed-up over fp32 (cpu-1thread, baseline {ref:.2f}x on {kclass})",
                         result["speedup"]["cpu-1thread"], ref * tol.speedup_ratio, "min"))
    out.append(check(task, f"baseline size MB (baseline {size['size_mb']:.3f} on {size_class})", result["size_mb"],
                     size["size_mb"] * tol.size_ratio, "max"))
    return out


def update_baseline(cfg: GateConfig, baselines: dict, run: Path, models: dict, hardware: dict) -> None:
    """This run's figures as the entry of this machine's kernel class; other classes' entries stay."""
    entry = {k: {"metric": m["metric"], "accuracy": m["accuracy"], "latency_ms": m["latency_ms"],
                 "speedup": m["speedup"], "size_mb": m["size_mb"]} for k, m in models.items()}
    baselines.setdefault(run.name, {})[hardware["kernel_class"]] = {"hardware": hardware, **entry}
    write_atomic(Path(cfg.baseline), json.dumps(baselines, indent=2) + "\n")
    print(f"gate: baseline for {run.name} on {hardware['kernel_class']} written to {cfg.baseline}; commit it to "
          "accept these figures")
