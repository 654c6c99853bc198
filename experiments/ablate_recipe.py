"""python -m experiments.ablate_recipe --config experiments/configs/ablate-recipe.yaml --out runs/ablate-recipe
                                     [--seeds N]

What each part of the detector recipe gives: trains one detector per arm of the ablation file, each arm the
base experiment's `detector:` section with the file's and then the arm's keys on top (same data, epochs,
schedule and seed), scores each on val through the deploy pre/post-processing, times each distinct model
with ONNX Runtime (fp32, batch 1, 1 and 2 threads, alternating rounds) and writes <out>/results.json:
  {"arms": {name: {"map", "map50", "latency_ms": {"1t", "2t"}, "params", "gflops", "seconds",
                   "per_seed": [...]}}, "setup": {...}}
The ablation file (experiments/configs/ablate-recipe.yaml):
  base: configs/demo.yaml        # experiment config whose detector the arms change
  data: configs/data/X.yaml      # optional: train and score on this dataset instead of the base's
  detector: {preset: ...}        # optional: keys on top of the base's detector for every arm (below the arm's)
  arms: {name: {loss: {assigner: tal}, train: {augment: flip+mosaic}, ...}, ...}
Each arm's full config is written to <out>/<arm>/config.yaml; `--reuse` keeps an arm already trained from
the same config. `--peers yolo11n,yolo26n` times Ultralytics' models in the same rounds (latency only: each is
trained one epoch on the base experiment's data at its input size with its `yolo` command, so the timed
graph has the dataset's classes; the latency of a graph does not depend on its weights), so the arms'
milliseconds can be read against theirs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from datasets.config import read_yaml
from deploy.errors import EdgeVisionError
from experiments.compare_yolo import MODELS, latency_peers, model_input
from experiments.peer import export_detector, time_side_by_side, write_results
from train.checkpoint import load_checkpoint
from train.config import ConfigError, ExperimentConfig, load_config
from train.loop import fit


def merge(base: dict, change: dict) -> dict:
    """`base` with `change` on top, nested mappings merged key by key."""
    out = dict(base)
    for k, v in change.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def arm_configs(path: Path, out: Path) -> dict[str, Path]:
    """Write each arm's experiment config to <out>/<arm>/config.yaml (validated by load_config) -> paths."""
    spec = read_yaml(path, ConfigError, "ablation file")
    if not isinstance(spec, dict) or set(spec) - {"data", "detector"} != {"base", "arms"} \
            or not isinstance(spec["arms"], dict) or not isinstance(spec.get("detector", {}), dict):
        raise ConfigError(f"{path}: an ablation file has `base:` (an experiment config), `arms:` (name -> "
                          "detector keys) and optionally `data:` (a dataset config) and `detector:` (keys for "
                          "every arm)")
    base = read_yaml(Path(spec["base"]), ConfigError, "base config")
    if not isinstance(base, dict) or not isinstance(base.get("detector"), dict):
        raise ConfigError(f"{spec['base']}: the base config needs a `detector:` section")
    common = merge(base["detector"], spec.get("detector", {}))
    paths = {}
    for name, change in spec["arms"].items():
        raw = {**base, "name": f"{base.get('name', 'ablate')}-{name}", "data": spec.get("data", base.get("data")),
               "detector": merge(common, change or {})}
        raw.pop("segmenter", None)
        arm_dir = out / name
        arm_dir.mkdir(parents=True, exist_ok=True)
        paths[name] = arm_dir / "config.yaml"
        paths[name].write_text(yaml.safe_dump(raw, sort_keys=False))
        try:
            load_config(paths[name])
        except ConfigError as e:
            raise ConfigError(f"{path}: arm {name!r}: {e}") from None
    return paths


def with_seed(cfg: ExperimentConfig, offset: int) -> ExperimentConfig:
    cfg.detector.train.seed += offset
    return cfg


def train_arm(cfg: ExperimentConfig, run: Path, reuse: bool) -> float:
    """Train (or, with reuse and the same config, keep) one arm's detector -> training seconds."""
    best = run / "best.pt"
    if reuse and best.is_file() and load_checkpoint(best)["config_hash"] == cfg.hash():
        print(f"  reusing {best} (same config)", flush=True)
        return float(json.loads((run / "seconds.json").read_text())) if (run / "seconds.json").is_file() else 0.0
    t0 = time.time()
    fit("detector", cfg.detector, cfg, run)
    seconds = time.time() - t0
    (run / "seconds.json").write_text(json.dumps(seconds))
    return seconds


def latencies(models: dict[str, Path], repeats: int, peers: dict[str, dict] | None = None) -> dict[str, dict]:
    """ORT fp32 p50 per model (and per peer ONNX of `peers`, at its own input size) at 1 and 2 threads, all
    timed in alternating rounds."""
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for name, ckpt_path in models.items():
            onnx_path, _, spec = export_detector(load_checkpoint(ckpt_path), Path(tmp) / f"{name}.onnx")
            files[name] = (onnx_path, np.zeros((1, 3, *spec.input_size), np.uint8))
        for name, info in (peers or {}).items():
            files[name] = (info["onnx"], model_input(np.zeros((1, 3, *info["input_size"]), np.uint8), name))
        return time_side_by_side(files, repeats)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.ablate_recipe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="experiments/configs/ablate-recipe.yaml", help="ablation file")
    p.add_argument("--out", default="runs/ablate-recipe")
    p.add_argument("--arms", default=None, help="comma-separated subset of the arms to run")
    p.add_argument("--seeds", type=int, default=1, help="train each arm with seeds seed..seed+N-1; report means")
    p.add_argument("--repeats", type=int, default=100, help="timed runs per model and thread count")
    p.add_argument("--reuse", action="store_true", help="keep an arm already trained from the same config")
    p.add_argument("--peers", default="", help=f"comma-separated Ultralytics models ({','.join(MODELS[1:])}) to "
                                               "time beside the arms (latency only)")
    p.add_argument("--yolo", default=".venv-peers/bin/yolo", help="Ultralytics' `yolo` command, for --peers")
    return p


def run_arms(args, paths: dict[str, Path], out: Path) -> tuple[dict, dict]:
    """Train every arm (or reuse it) and time them with the peers -> (arms, peers)."""
    arms, best_models = {}, {}
    for name, path in paths.items():
        per_seed = []
        for k in range(args.seeds):
            cfg = with_seed(load_config(path), k)
            run = out / name / ("detector" if k == 0 else f"detector-seed{k}")
            s = cfg.detector.train
            print(f"{name}: {s.epochs} epochs, seed {s.seed}", flush=True)
            seconds = train_arm(cfg, run, args.reuse)
            ck = load_checkpoint(run / "best.pt")
            per_seed.append({"map": ck["metrics"]["map"], "map50": ck["metrics"]["map50"], "seconds": seconds})
            best_models[name] = run / "best.pt"
        arms[name] = {m: float(np.mean([r[m] for r in per_seed])) for m in ("map", "map50", "seconds")}
        arms[name].update(params=ck["params"], gflops=ck["gflops"], per_seed=per_seed)
    names = [n for n in args.peers.split(",") if n]
    # peers at the base experiment's input size and data: where they were trained for the comparisons
    base = load_config(read_yaml(Path(args.config), ConfigError, "ablation file")["base"]) if names else None
    peers = latency_peers(names, args.yolo, base, out / "peers") if names else {}
    for name, lat in latencies(best_models, args.repeats, peers).items():
        (arms[name] if name in arms else peers[name])["latency_ms"] = lat
    return arms, {n: {k: p[k] for k in ("latency_ms", "params", "gflops", "input_size")} for n, p in peers.items()}


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    out = Path(args.out)
    try:
        if args.seeds < 1:
            raise ConfigError(f"--seeds {args.seeds}: train at least one seed per arm")
        paths = arm_configs(Path(args.config), out)
        if args.arms:
            unknown = sorted(set(args.arms.split(",")) - set(paths))
            if unknown:
                raise ConfigError(f"--arms: {unknown} not in {args.config} (has {sorted(paths)})")
            paths = {k: v for k, v in paths.items() if k in args.arms.split(",")}
        arms, peers = run_arms(args, paths, out)
    except EdgeVisionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    setup = {"config": args.config, "seeds": args.seeds, **({"peers": sorted(peers)} if peers else {})}
    write_results(out, "ablate-recipe", {"arms": arms, **({"peers": peers} if peers else {})}, setup)
    print(f"\n{'arm':<24} {'mAP':>6} {'mAP50':>6} {'ORT 1t ms':>10} {'ORT 2t ms':>10} {'params M':>9} {'GFLOPs':>7}"
          f" {'train s':>8}")
    for name, r in arms.items():
        print(f"{name:<24} {r['map']:>6.3f} {r['map50']:>6.3f} {r['latency_ms']['1t']:>10.2f} "
              f"{r['latency_ms']['2t']:>10.2f} {r['params'] / 1e6:>9.2f} {r['gflops']:>7.2f} {r['seconds']:>8.0f}")
    for name, r in peers.items():
        print(f"{name + ' (latency only)':<24} {'-':>6} {'-':>6} {r['latency_ms']['1t']:>10.2f} "
              f"{r['latency_ms']['2t']:>10.2f}")
    print(f"results: {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
