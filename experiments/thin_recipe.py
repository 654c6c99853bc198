"""python -m experiments.thin_recipe --config configs/wires.yaml --out runs/wire-recipe [--seeds 3]

A thin-structure recipe over seeds (1-px power lines by default): trains the config's segmenter once per seed
(seed, seed+1, ...) through `fit`, and scores each best checkpoint on val at both match distances power-line
and crack papers use: 2 px, and BSDS's 0.0075 x the image diagonal (`match_tolerance: bsds`). ODS / OIS are
BSDS's definitions without one-to-one matching or thinning (datasets/thin_metrics.py): on thick predictions
the more lenient of the two. Writes <out>/results.json and prints a row per seed and their mean.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

from datasets.metrics import EvalSet
from deploy.errors import EdgeVisionError
from deploy.preprocess import PreprocessSpec, preprocess
from experiments.peer import config_with, write_results
from train.checkpoint import load_checkpoint, model_from_checkpoint, torch_runner
from train.config import ConfigError
from train.loop import fit

TOLERANCES = (2, "bsds")
KEYS = ("thin_iou", "boundary_f1", "recall_1px", "recall_1_2px")


def score(run: Path, ev: EvalSet) -> dict:
    """One trained segmenter on val: thin IoU etc. once, ODS / OIS at each tolerance."""
    ckpt = load_checkpoint(run / "best.pt")
    model, spec = model_from_checkpoint(ckpt).eval(), PreprocessSpec(**ckpt["preprocess"])
    with torch.no_grad():
        preds = ev.predict(torch_runner(model), lambda im: preprocess(im, spec), {})
    seg, out = ev.seg, {}
    for tol in TOLERANCES:
        ev.seg = dataclasses.replace(seg, match_tolerance=tol)
        r = ev.score_predictions(preds)
        out.update({k: r.get(k) for k in KEYS if k in r})
        out[f"ods_f1@{tol}"], out[f"ois_f1@{tol}"] = r.get("ods_f1"), r.get("ois_f1")
    ev.seg = seg
    return out


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.thin_recipe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3, help="train with seeds seed..seed+N-1")
    p.add_argument("--config", default="configs/wires.yaml")
    p.add_argument("--out", default="runs/wire-recipe")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        if args.seeds < 1:
            raise ConfigError(f"--seeds {args.seeds}: train at least one seed")
        cfg = config_with(args.config, "segmenter")
        ev = EvalSet("segmenter", cfg.dataset(), "val")
        out, rows = Path(args.out), []
        for k in range(args.seeds):
            seeded = config_with(args.config, "segmenter")  # its checkpoint records (and hashes) its own seed
            task_cfg = seeded.segmenter
            task_cfg.train.seed += k
            run = out / f"seed{task_cfg.train.seed}" / "segmenter"
            print(f"seed {task_cfg.train.seed}: training {task_cfg.train.epochs} epochs", flush=True)
            t0 = time.time()
            fit("segmenter", task_cfg, seeded, run)
            rows.append({"seed": task_cfg.train.seed, **score(run, ev), "seconds": round(time.time() - t0)})
    except EdgeVisionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    keys = [k for k in rows[0] if k not in ("seed", "seconds")]
    mean = {k: float(np.mean([r[k] for r in rows])) for k in keys if all(r[k] is not None for r in rows)}
    d = cfg.dataset()
    setup = {"config": args.config, "seeds": args.seeds, "epochs": cfg.segmenter.train.epochs,
             "input_size": list(cfg.segmenter.input_size), "tolerances": list(TOLERANCES),
             "data": d.source, "generated": bool(d.synthetic), "split": "val", "images": len(ev)}
    write_results(out, "thin-recipe", {"seeds": rows, "mean": mean}, setup)
    print(f"\n{'seed':>5} " + " ".join(f"{k:>13}" for k in keys))
    for r in rows + [{"seed": "mean", **mean}]:
        print(f"{r['seed']:>5} " + " ".join(f"{r[k]:>13.4f}" if r.get(k) is not None else f"{'-':>13}" for k in keys))
    print(f"results: {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
