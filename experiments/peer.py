"""The pattern every comparison shares: train ours and a peer through `fit`, export both to ONNX, time them
side by side with ONNX Runtime, and write results.json with the machine it ran on.

Scoring stays with each comparison (a peer may keep its own decode); everything else is here once, so two
comparisons cannot differ in how they train, export, time or record.
"""

from __future__ import annotations

import datetime
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
from torch import nn

from deploy.contract import Contract
from deploy.preprocess import PreprocessSpec
from deploy.runtime import session_options
from evaluate.bench import interleaved_latency, machine
from export.onnx_export import export_onnx
from train.checkpoint import load_checkpoint, model_from_checkpoint
from train.config import ConfigError, ExperimentConfig, load_config
from train.loop import fit, model_cost, set_seed

THREADS = (1, 2)


def config_with(path: str, task: str) -> ExperimentConfig:
    """The experiment config at `path`, which must have a `task:` section to compare (ConfigError if not)."""
    cfg = load_config(path)
    if getattr(cfg, task) is None:
        raise ConfigError(f"{path}: no `{task}:` section to compare")
    return cfg


def fit_ours(task: str, cfg: ExperimentConfig, out: Path) -> tuple[nn.Module, dict]:
    """Our model for `task` through `fit` into `out` -> (best model in eval mode, its checkpoint)."""
    task_cfg = getattr(cfg, task)
    print(f"ours: training {task_cfg.train.epochs} epochs", flush=True)
    fit(task, task_cfg, cfg, out)
    ckpt = load_checkpoint(out / "best.pt")
    return model_from_checkpoint(ckpt).eval(), ckpt


def fit_peer(name: str, task: str, cfg: ExperimentConfig, out: Path, build: Callable[[], nn.Module],
             fit_kwargs: Callable[[nn.Module], dict] | None = None) -> nn.Module:
    """A peer built by `build()` through the same `fit` as ours (data, augmentation, schedule, EMA,
    best-on-val checkpoint) -> its best weights, eval mode. `fit_kwargs(model)`: its own criterion and
    evaluator, when it keeps them."""
    task_cfg = getattr(cfg, task)
    print(f"{name}: training {task_cfg.train.epochs} epochs", flush=True)
    set_seed(task_cfg.train.seed)  # fit seeds again after building; this makes the initial weights reproducible
    model = build()
    fit(task, task_cfg, cfg, out, model=model, **(fit_kwargs(model) if fit_kwargs else {}))
    model.load_state_dict(load_checkpoint(out / "best.pt")["state_dict"])
    return model.eval()


def export_detector(ckpt: dict, path: Path) -> tuple[Path, nn.Module, PreprocessSpec]:
    """A detector checkpoint -> its fp32 ONNX at `path` (contract from the checkpoint), the model, its spec."""
    model, spec = model_from_checkpoint(ckpt), PreprocessSpec(**ckpt["preprocess"])
    contract = Contract("detector", spec, ckpt["class_names"], ckpt["config_hash"], ["cls_logits", "boxes"])
    return export_onnx(model, contract, path), model, spec


def ort_runner(path: str | Path, threads: int) -> Callable[[np.ndarray], list]:
    """ONNX Runtime session -> fn(input) -> outputs."""
    sess = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})


def time_side_by_side(files: dict[str, tuple[str | Path, np.ndarray]], repeats: int) -> dict[str, dict]:
    """{name: (onnx, input)} -> {name: {"1t": p50 ms, "2t": p50 ms}}: fp32, batch 1, every model and thread
    count in alternating rounds, so a slow moment of the machine falls on all of them alike."""
    runners = {}
    for name, (path, x) in files.items():
        for t in THREADS:
            run = ort_runner(path, t)
            runners[(name, t)] = lambda f=run, a=x: f(a)
    times = interleaved_latency(runners, 10, repeats)
    return {name: {f"{t}t": times[(name, t)]["p50"] for t in THREADS} for name in files}


def export_and_time(models: dict[str, nn.Module], contract: Contract, x: np.ndarray,
                    repeats: int) -> dict[str, dict]:
    """Torch models -> {name: {"latency_ms", "params", "gflops", "size_mb"}}: each exported to fp32 ONNX with
    the same contract, timed side by side on the same uint8 input `x` (1, 3, H, W)."""
    hw = tuple(x.shape[-2:])
    with tempfile.TemporaryDirectory() as tmp:
        paths = {n: export_onnx(m, contract, Path(tmp) / f"{n}.onnx") for n, m in models.items()}
        times = time_side_by_side({n: (p, x) for n, p in paths.items()}, repeats)
        out = {}
        for n, m in models.items():
            params, gflops = model_cost(m, hw)
            out[n] = {"latency_ms": times[n], "params": params, "gflops": gflops,
                      "size_mb": os.path.getsize(paths[n]) / 2**20}
    return out


def write_results(out: Path, experiment: str, results: dict, setup: dict) -> Path:
    """results + setup (with the experiment's name, the date and the machine, which every figure needs) ->
    <out>/results.json, whole or not at all. `python -m experiments.results --take` files it for the doc."""
    results = {**results, "setup": {"experiment": experiment, **setup, "date": datetime.date.today().isoformat(),
                                    "machine": machine()}}
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    part = path.with_name(path.name + ".part")
    part.write_text(json.dumps(results, indent=2))
    part.replace(path)
    return path
