"""python -m experiments.ablate_shift --config experiments/configs/ablate-shift.yaml --out runs/ablate-shift [--seeds N]

Does domain-shift augmentation pay? Trains the config's detector and segmenter twice on the same budget
(epochs, schedule, seed): with `train.augment: none` and with `shift` (the camera, lighting, weather and
season presets of datasets.augment), then scores both on the clean test split and on its domain-shifted
copies (test_lowlight, test_fog, ...) through the deploy preprocessing. Prints clean and shifted accuracy
side by side and writes <out>/results.json (with --seeds N, means over N seeds and "per_seed" lists):
  {"none": {"detector": {"clean": {..}, "shifted": {split: {..}}, "shifted_mean": {..}}, "segmenter": ..},
   "shift": {...}, "summary": {model: {metric: {"clean_delta", "shifted_delta"}}}, "setup": {...}}
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

from datasets.augment import SHIFT_P, closing_augment
from evaluate.robustness import METRICS, evaluate_model
from experiments.peer import write_results
from train.checkpoint import load_checkpoint
from train.config import ConfigError, load_config
from train.loop import fit
from train.run_dir import RunDir

ARMS = ("none", "shift")


def with_train(cfg, change):
    """The same experiment with every task's train section replaced by change(train)."""
    tasks = {k: dataclasses.replace(t, train=change(t.train))
             for k in ("detector", "segmenter") if (t := getattr(cfg, k)) is not None}
    return dataclasses.replace(cfg, **tasks)


def with_augment(cfg, augment: str):
    """train.augment replaced. Without shift presets the shift settings do nothing, so the 'none' arm takes
    their defaults: its config hash (and --reuse) ignores them."""
    plain = {"shift_p": SHIFT_P, "close_epochs": 0} if closing_augment(augment) == augment else {}
    return with_train(cfg, lambda t: dataclasses.replace(t, augment=augment, **plain))


def with_seed(cfg, offset: int):
    """train.seed moved by `offset` (0: the same config, the same hash)."""
    return with_train(cfg, lambda t: dataclasses.replace(t, seed=t.seed + offset)) if offset else cfg


def mean_results(per_seed: list[dict]) -> dict:
    """Metric-wise means of arm_results over seeds (same structure)."""
    def avg(dicts):
        return {m: round(float(np.mean([d[m] for d in dicts])), 4) for m in dicts[0]}
    first = per_seed[0]
    return {"clean": avg([r["clean"] for r in per_seed]),
            "shifted": {sp: avg([r["shifted"][sp] for r in per_seed]) for sp in first["shifted"]},
            "shifted_mean": avg([r["shifted_mean"] for r in per_seed]) if first["shifted_mean"] else {}}


def arm_results(run: Path, task: str, split: str, limit: int | None) -> dict:
    r = evaluate_model(task, run, "torch", split, limit, corruptions=())
    shifted = {sp: {k: v for k, v in m.items() if k != "drop"} for sp, m in r["shifted"].items()}
    mean = {k: round(float(np.mean([m[k] for m in shifted.values()])), 4) for k in r["metrics"]} if shifted else {}
    return {"clean": r["clean"], "shifted": shifted, "shifted_mean": mean}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.ablate_shift", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="experiments/configs/ablate-shift.yaml")
    p.add_argument("--out", default="runs/ablate-shift")
    p.add_argument("--split", default="test", help="clean split; its shifted copies are <split>_<shift>")
    p.add_argument("--limit", type=int, default=None, help="score only the first N images of each split")
    p.add_argument("--seeds", type=int, default=1,
                   help="train each arm with seeds seed..seed+N-1 (runs <arm>-seed<k>/) and report the means")
    p.add_argument("--reuse", action="store_true",
                   help="keep an arm's model already in --out when it was trained from the same config")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        base = load_config(args.config)
        if args.seeds < 1:
            raise ConfigError(f"--seeds {args.seeds}: train at least one seed per arm")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    tasks = [k for k in ("detector", "segmenter") if getattr(base, k) is not None]
    results: dict = {}
    for arm in ARMS:
        results[arm] = {}
        for task in tasks:
            per_seed = []
            for k in range(args.seeds):
                cfg = with_seed(with_augment(base, arm), k)
                task_cfg, run = getattr(cfg, task), out / (arm if k == 0 else f"{arm}-seed{k}")
                best = RunDir.of(run).checkpoint(task)
                if args.reuse and best.is_file() and load_checkpoint(best)["config_hash"] == cfg.hash():
                    print(f"{arm}: reusing the {task} in {best} (same config)", flush=True)
                else:
                    s = task_cfg.train
                    print(f"{arm}: training the {task}, {s.epochs} epochs, seed {s.seed}", flush=True)
                    fit(task, task_cfg, cfg, RunDir.of(run).task_dir(task))
                per_seed.append(arm_results(run, task, args.split, args.limit))
            results[arm][task] = {**mean_results(per_seed), "per_seed": per_seed} if args.seeds > 1 else per_seed[0]
    summary = {task: {m: {"clean_delta": round(results["shift"][task]["clean"][m] - results["none"][task]["clean"][m],
                                               4),
                          "shifted_delta": round(results["shift"][task]["shifted_mean"][m]
                                                 - results["none"][task]["shifted_mean"][m], 4)}
                      for m in METRICS[task]} for task in tasks if results["none"][task]["shifted_mean"]}
    results["summary"] = summary
    setup = {"config": args.config, "split": args.split, "arms": list(ARMS), "seeds": args.seeds,
             "epochs": {k: getattr(base, k).train.epochs for k in tasks}}
    write_results(out, "ablate-shift", results, setup)
    print(f"\n{'model':<10} {'metric':<9} {'clean none':>11} {'clean shift':>12} {'shifted none':>13} "
          f"{'shifted shift':>14}   (shifted = mean over {args.split}_* splits)")
    for task in tasks:
        n, s = results["none"][task], results["shift"][task]
        for m in METRICS[task]:
            print(f"{task:<10} {m:<9} {n['clean'][m]:>11.4f} {s['clean'][m]:>12.4f} "
                  f"{n['shifted_mean'].get(m, float('nan')):>13.4f} {s['shifted_mean'].get(m, float('nan')):>14.4f}")
        if args.seeds > 1:
            print("  clean per seed    " + "  ".join(
                f"{m} {[x['clean'][m] for x in n['per_seed']]} -> {[x['clean'][m] for x in s['per_seed']]}"
                for m in METRICS[task]))
        for sp in n["shifted"]:
            print(f"  {sp:<17} " + "  ".join(f"{m} {n['shifted'][sp][m]:.4f} -> {s['shifted'][sp][m]:.4f}"
                                            for m in METRICS[task]))
    print(f"results: {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
