"""Self-describing checkpoints: tensors and plain data only, loadable with torch.load(weights_only=True).

A checkpoint carries what rebuilds and deploys the model without the config file: the task, the model's
constructor arguments, class names, the preprocessing spec, postprocess settings, the config and its hash.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from deploy.atomic import atomic_path
from deploy.errors import EdgeVisionError
from train.models import build_model

FORMAT = "edge-vision/2"


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
