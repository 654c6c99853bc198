"""python -m train --config configs/demo.yaml --out runs/demo [--task detector|segmenter|all] [--resume]
                   [--init RUN_OR_CHECKPOINT] [--backbone-weights IMAGENET_STATE_DICT]

Multi-GPU / multi-process: torchrun --nproc_per_node=N -m train --config ... --out ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from datasets.config import DatasetError
from deploy.preprocess import ImageReadError
from train import distributed
from train.checkpoint import CheckpointError
from train.config import ConfigError, load_config
from train.finetune import init_checkpoint, init_task
from train.loop import train_run
from train.run_dir import RunDir


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train", description=__doc__)
    p.add_argument("--config", required=True, help="experiment YAML (configs/*.yaml)")
    p.add_argument("--out", required=True, help="run directory, e.g. runs/demo")
    p.add_argument("--task", default="all", choices=["all", "detector", "segmenter"])
    p.add_argument("--resume", action="store_true", help="continue from <out>/<task>/last.pt exactly")
    p.add_argument("--init", default=None, metavar="RUN_OR_CHECKPOINT",
                   help="start from a trained model of ours (a run folder or a best.pt): matching tensors loaded, "
                        "the classification head rebuilt when the classes differ")
    p.add_argument("--backbone-weights", default=None, metavar="PATH",
                   help="local torchvision MobileNetV3 ImageNet state dict (never downloaded)")
    return p


def set_init(cfg, args) -> None:
    """--init onto the config: a run folder starts every task it has; a checkpoint file starts its own task."""
    if args.resume:
        raise ConfigError("--init starts a new run from trained weights; --resume continues one: give one of them")
    tasks = [t for t in ("detector", "segmenter") if getattr(cfg, t) is not None and args.task in ("all", t)]
    if Path(args.init).is_file():
        task = init_task(args.init)
        if task not in tasks:
            raise ConfigError(f"--init {args.init}: a {task} checkpoint, and this run trains {' and '.join(tasks)}")
        tasks = [task]
    else:
        tasks = [t for t in tasks if RunDir.of(args.init).checkpoint(t).is_file()] or tasks  # none: say which
    for task in tasks:
        getattr(cfg, task).model.init = str(init_checkpoint(args.init, task))


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        cfg = load_config(args.config)
        if args.backbone_weights:
            if not Path(args.backbone_weights).is_file():
                raise FileNotFoundError(f"{args.backbone_weights}: backbone checkpoint not found")
            for task_cfg in (cfg.detector, cfg.segmenter):
                if task_cfg is not None:
                    task_cfg.model.backbone_weights = args.backbone_weights
        if args.init:
            set_init(cfg, args)
        train_run(cfg, RunDir.of(args.out), args.task, args.resume)
        return 0
    except (ConfigError, DatasetError, CheckpointError, ImageReadError, FloatingPointError,
            FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        distributed.cleanup()


if __name__ == "__main__":
    sys.exit(main())
