"""Self-describing checkpoints: tensors and plain data only, loadable with torch.load(weights_only=True).

A checkpoint carries what rebuilds and deploys the model without the config file: the task, the model's
constructor arguments, class names, the preprocessing spec, postprocess settings, the config and its hash.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from deploy.atomic import atomic_path
from deploy.errors import EdgeVisionError
from train.models import build_model
from train.run_dir import RunDir

FORMAT = "edge-vision/2"
ADOPTED_FORMAT = "edge-vision-adopted/1"  # export.adopt's record: a checkpoint's keys without the weights


class CheckpointError(EdgeVisionError, ValueError):
    pass


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict, **extra) -> None:
    """Atomic write: a kill during save leaves the previous checkpoint intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = {"format": FORMAT, **meta, "state_dict": model.state_dict(), **extra}
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; run `make train` first")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle / zip errors from a truncated or foreign file
        raise CheckpointError(f"{path}: not a loadable edge-vision checkpoint ({type(e).__name__}); retrain") from None
    if isinstance(ckpt, dict) and ckpt.get("format") == "edge-vision/1":  # said "kind" for what is now "task"
        ckpt["format"], ckpt["task"] = FORMAT, ckpt.pop("kind")
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        what = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: not an edge-vision checkpoint ({what!r})")
    return ckpt


def load_model_record(run: RunDir, task: str) -> dict:
    """The task's best checkpoint, or, for a model trained elsewhere and brought in by `python -m export.adopt`,
    its record: the keys export, bench and gate read from a checkpoint (task, config, preprocess, class_names,
    config_hash, postprocess), no weights; `is_adopted` tells them apart."""
    path = run.adopted(task)
    if run.checkpoint(task).is_file() or not path.is_file():
        return load_checkpoint(run.checkpoint(task))
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable ({type(e).__name__}); run `python -m export.adopt` again") from None
    if not isinstance(record, dict) or record.get("format") != ADOPTED_FORMAT or record.get("task") != task:
        raise CheckpointError(f"{path}: not an adopted {task} record; run `python -m export.adopt` again")
    return record


def is_adopted(ckpt: dict) -> bool:
    return ckpt.get("format") == ADOPTED_FORMAT


def check_compatible(ckpt: dict, meta: dict, path: str | Path) -> None:
    """Refuse a checkpoint of another architecture or class list (e.g. --resume into the wrong run dir)."""
    strip = lambda a: {k: v for k, v in (a or {}).items() if k != "backbone_weights"}  # noqa: E731
    if ckpt.get("task") != meta["task"] or strip(ckpt.get("model_args")) != strip(meta["model_args"]):
        raise CheckpointError(
            f"{path}: holds a {ckpt.get('task')} {strip(ckpt.get('model_args'))}, but the config builds a "
            f"{meta['task']} {strip(meta['model_args'])}; use a new --out or the matching config"
        )
    if list(ckpt.get("class_names", [])) != list(meta["class_names"]):
        raise CheckpointError(
            f"{path}: trained for classes {ckpt.get('class_names')}, the dataset has {meta['class_names']}; "
            "use a new --out or the matching dataset"
        )


def model_from_checkpoint(ckpt: dict) -> nn.Module:
    args = dict(ckpt["model_args"])
    args.pop("backbone_weights", None)  # the trained weights replace the ImageNet init
    model = build_model(ckpt["task"], args)
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def torch_runner(model: nn.Module):
    """A torch model as a scoring runner: (B, 3, H, W) uint8 numpy -> list of numpy outputs, no grad."""
    def run(x: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            out = model(torch.from_numpy(x))
        return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]
    return run
