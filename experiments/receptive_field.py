"""python -m experiments.receptive_field --config configs/demo.yaml [--checkpoint runs/demo/detector/best.pt]

Per FPN level of the detector: stride, theoretical receptive field and the training boxes the level is
responsible for. Warns when the largest objects exceed the coarsest level's receptive field (the model
cannot see them whole) or the smallest fall under the finest stride (they may fall between locations).

The receptive field is measured, not tabulated: the support of d(output at the level's centre)/d(input) on
a copy of the model with positive weights, so the FPN's top-down paths and the head towers are included.
Squeeze-excitation's global pooling is left out (it would make every field "the whole image").
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.ops.misc import SqueezeExcitation

from datasets.coco import read_split
from datasets.config import DatasetError
from deploy.preprocess import compute_letterbox
from train.checkpoint import load_checkpoint
from train.config import ConfigError, load_config
from train.loop import model_args
from train.models import Detector, build_model


def _positive_copy(model: Detector) -> Detector:
    m = copy.deepcopy(model).eval()
    for mod in list(m.modules()):
        for cname, child in mod.named_children():
            if isinstance(child, SqueezeExcitation):
                setattr(mod, cname, nn.Identity())
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.Conv2d):
                mod.weight.fill_(1.0 / mod.weight[0].numel())
                if mod.bias is not None:
                    mod.bias.zero_()
            elif isinstance(mod, nn.BatchNorm2d):
                mod.reset_parameters()
                mod.reset_running_stats()
    return m


def receptive_fields(model: Detector, size: int = 1024) -> list[dict]:
    """Per level: stride and receptive field (px) of the classification output at the map's centre."""
    m = _positive_copy(model)
    stem = next(mod for mod in m.backbone.modules() if isinstance(mod, nn.Conv2d))
    # positive everywhere so ReLU/hard-swish pass gradients; as many channels as the stem takes (3, or 4)
    x = torch.ones(1, stem.in_channels, size, size, requires_grad=True)
    feats = m.fpn(m.backbone(x))
    out = []
    for f, s in zip(feats, m.strides, strict=True):
        y = m.cls_tower(f)
        h, w = y.shape[-2:]
        (g,) = torch.autograd.grad(y[0, :, h // 2, w // 2].sum(), x, retain_graph=True)
        rows = torch.nonzero(g[0].abs().sum(0).sum(1) > 0)
        cols = torch.nonzero(g[0].abs().sum(0).sum(0) > 0)
        rf = int(max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1))
        out.append({"stride": s, "receptive_field": rf, "clipped": rf >= size})
    return out


def box_sizes(cfg) -> np.ndarray:
    """(M, 2) box width/height of the training split, in model-input pixels (after the letterbox)."""
    data = cfg.dataset()
    coco = read_split(data, "train")
    spec = cfg.detector.preprocess_spec()
    sizes = []
    for r in coco.records:
        lb = compute_letterbox((r.height, r.width), spec)
        wh = r.boxes[~r.crowd, 2:] - r.boxes[~r.crowd, :2]
        sizes.append(wh * np.array([lb.scale_x, lb.scale_y], np.float32))
    return np.concatenate(sizes) if sizes else np.zeros((0, 2), np.float32)


def report(levels: list[dict], sizes: np.ndarray) -> tuple[list[dict], list[str]]:
    longest, shortest = sizes.max(1), sizes.min(1)
    strides = [lv["stride"] for lv in levels]
    rows = []
    for i, lv in enumerate(levels):
        s = lv["stride"]
        lo = 0 if i == 0 else 4 * s  # the assigner's ranges: half-size reach 2s..4s -> box side ~4s..8s
        hi = np.inf if i == len(levels) - 1 else 8 * s
        n = int(((longest >= lo) & (longest < hi)).sum())
        rows.append({**lv, "box_side_range": [lo, None if np.isinf(hi) else hi], "boxes": n})
    warnings = []
    if len(sizes):
        big, small = float(np.percentile(longest, 99)), float(np.percentile(shortest, 1))
        if big > levels[-1]["receptive_field"]:
            warnings.append(f"largest objects (99th pct side {big:.0f} px) exceed the coarsest level's receptive "
                            f"field ({levels[-1]['receptive_field']} px): add a level or a larger-kernel head")
        if small < strides[0]:
            warnings.append(f"smallest objects (1st pct side {small:.1f} px) are under the finest stride "
                            f"({strides[0]} px): they can fall between locations; add a stride-{strides[0] // 2} "
                            "level or raise the input size")
    return rows, warnings


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.receptive_field", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--checkpoint", default=None, help="take the architecture from a trained detector")
    p.add_argument("--json", default=None, help="also write the report here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        cfg = load_config(args.config)
        if cfg.detector is None:
            raise ConfigError(f"{args.config}: no detector section")
        t = cfg.detector
        if args.checkpoint:
            ck = load_checkpoint(args.checkpoint)
            model = build_model("detector", {**ck["model_args"], "backbone_weights": None})
        else:
            model = build_model("detector", {**model_args(t, 1), "backbone_weights": None})
        sizes = box_sizes(cfg)
        rows, warnings = report(receptive_fields(model), sizes)
    except (ConfigError, DatasetError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{t.model.backbone} x{t.model.width_mult}, input {t.input_size[0]}x{t.input_size[1]}, "
          f"{len(sizes)} training boxes (side in input px: min {sizes.min():.0f}, median "
          f"{np.median(sizes.max(1)):.0f}, max {sizes.max():.0f})")
    print(f"{'stride':>6} {'recept. field px':>16} {'assigned box side px':>21} {'boxes':>6}")
    for r in rows:
        lo, hi = r["box_side_range"]
        rf = f"{r['receptive_field']}{'+' if r['clipped'] else ''}"
        print(f"{r['stride']:>6} {rf:>16} {f'{lo}-{hi if hi else chr(8734)}':>21} {r['boxes']:>6}")
    for w in warnings:
        print(f"warning: {w}")
    if args.json:
        Path(args.json).write_text(json.dumps({"levels": rows, "warnings": warnings}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
