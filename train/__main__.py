"""python -m train --config configs/demo.yaml --out runs/demo [--task detector|segmenter|all]"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from datasets.config import DatasetError
from deploy.preprocess import ImageReadError
from train.checkpoint import CheckpointError
from train.config import ConfigError, load_config
from train.loop import fit


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train", description=__doc__)
    p.add_argument("--config", required=True, help="experiment YAML (configs/*.yaml)")
    p.add_argument("--out", required=True, help="run directory, e.g. runs/demo")
    p.add_argument("--task", default="all", choices=["all", "detector", "segmenter"])
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        cfg = load_config(args.config)
        out = Path(args.out)
        summary = {}
        for kind in ("detector", "segmenter"):
            task = getattr(cfg, kind)
            if task is None or args.task not in ("all", kind):
                continue
            best = fit(kind, task, cfg, out / kind)
            summary[kind] = {k: v for k, v in best.items() if not isinstance(v, dict)}
            print(f"{kind}: best val " + ", ".join(f"{k} {v:.4f}" for k, v in summary[kind].items()), flush=True)
        if not summary:
            raise ConfigError(f"{args.config}: no `detector:` or `segmenter:` section to train")
        (out / "train_summary.json").write_text(json.dumps(summary, indent=2))
        return 0
    except (ConfigError, DatasetError, CheckpointError, ImageReadError, FloatingPointError,
            FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
