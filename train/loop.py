"""train_one_epoch / evaluate / fit for the detector and the segmenter."""

from __future__ import annotations

import csv
import math
import random
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from datasets.config import DatasetConfig
from datasets.masks import value_lut
from deploy.preprocess import PreprocessSpec, preprocess
from evaluate.metrics import eval_detector, load_truth_masks, predict_masks, score_masks
from train.checkpoint import save_checkpoint
from train.config import ExperimentConfig, TaskConfig
from train.data import build_dataset, detection_collate
from train.losses import DetectionLoss, SegmentationLoss
from train.models import build_model, count_params

BEST_METRIC = {"detector": "map", "segmenter": "thin_iou"}


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def model_cost(model: nn.Module, input_hw: tuple[int, int]) -> tuple[int, float]:
    """(parameters, GFLOPs for one image; a multiply-add counts as 2 FLOPs)."""
    x = torch.zeros(1, 3, *input_hw, dtype=torch.uint8)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model.eval()(x)
    return count_params(model), fc.get_total_flops() / 1e9


def build_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]  # biases, BN: no weight decay
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr)


def warmup_cosine(warmup: int, total: int, floor: float = 0.05):
    def f(it: int) -> float:
        if it < warmup:
            return (it + 1) / warmup
        t = (it - warmup) / max(1, total - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    return f


def train_one_epoch(model, criterion, loader, optimizer, scheduler, epoch: int, grad_clip: float) -> dict:
    model.train()
    sums: dict[str, float] = {}
    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, dynamic_ncols=True, disable=None)  # off when not a tty
    for it, (images, targets) in enumerate(bar):
        out = model(images)
        losses = criterion(*out, targets) if isinstance(out, tuple) else criterion(out, targets)
        loss = losses["loss"]
        if not torch.isfinite(loss):
            parts = {k: float(v) for k, v in losses.items()}
            raise FloatingPointError(
                f"non-finite loss at epoch {epoch}, iteration {it} ({parts}); lower the lr or check the labels"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        scheduler.step()
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}", refresh=False)
    return {k: v / max(1, len(loader)) for k, v in sums.items()}


def torch_runner(model: nn.Module):
    def run(x: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            out = model(torch.from_numpy(x))
        return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]
    return run


@torch.no_grad()
def evaluate(model: nn.Module, kind: str, data: DatasetConfig, split: str, spec: PreprocessSpec,
             post: dict, val_set=None) -> dict:
    """Score a torch model through the deploy pre/post-processing (as the exported model will be)."""
    model.eval()
    run, prep = torch_runner(model), lambda img: preprocess(img, spec)
    if kind == "detector":
        coco = val_set.coco if val_set is not None else build_dataset(kind, data, split, spec).coco
        return eval_detector(run, coco, prep, post)
    pairs = data.segmentation_pairs(split)
    seg = data.segmentation
    truths = load_truth_masks(pairs, value_lut(seg))
    return score_masks(predict_masks(run, pairs, prep), truths, seg.classes, seg.thin_classes)


def fit(kind: str, task: TaskConfig, cfg: ExperimentConfig, out_dir: Path, val_split: str = "val") -> dict:
    """Train one model; writes out_dir/{last,best}.pt and out_dir/log.csv. Returns the best metrics."""
    s = task.train
    set_seed(s.seed)
    data, spec = cfg.dataset(), task.preprocess_spec()
    train_set = build_dataset(kind, data, "train", spec, s.augment, s.cache_images)
    val_set = build_dataset(kind, data, val_split, spec)
    names = train_set.class_names
    m = task.model
    model_args = dict(num_classes=len(names), backbone=m.backbone, width_mult=m.width_mult, channels=m.channels,
                      head_convs=m.head_convs, channel_order=task.channel_order, backbone_weights=m.backbone_weights)
    model = build_model(kind, model_args)
    params, gflops = model_cost(model, spec.input_size)
    print(f"{kind}: {m.backbone} x{m.width_mult}, {params / 1e6:.2f} M parameters, {gflops:.2f} GFLOPs "
          f"at {spec.input_size[0]}x{spec.input_size[1]}, {len(train_set)} train / {len(val_set)} {val_split} images")
    gen = torch.Generator().manual_seed(s.seed)
    collate = detection_collate if kind == "detector" else None
    loader = DataLoader(train_set, batch_size=s.batch_size, shuffle=True, num_workers=s.workers, generator=gen,
                        collate_fn=collate, drop_last=len(train_set) > s.batch_size)
    if kind == "detector":
        criterion = DetectionLoss(*model.points(spec.input_size), len(names), task.loss.box_weight)
    else:
        criterion = SegmentationLoss(len(names), task.loss.dice_weight, task.loss.class_weights)
    optimizer = build_optimizer(model, s.lr, s.weight_decay)
    total = s.epochs * len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(min(s.warmup_iters, total // 2), total))
    post = asdict(task.postprocess) if kind == "detector" else {}
    meta = {"kind": kind, "model_args": model_args, "class_names": names, "preprocess": asdict(spec),
            "postprocess": post, "config": asdict(cfg), "config_hash": cfg.hash(),
            "params": params, "gflops": gflops}
    if kind == "segmenter":
        meta["thin_classes"] = list(data.segmentation.thin_classes)
    out_dir.mkdir(parents=True, exist_ok=True)
    key, best, rows = BEST_METRIC[kind], None, []
    for epoch in range(1, s.epochs + 1):
        t0 = time.time()
        losses = train_one_epoch(model, criterion, loader, optimizer, scheduler, epoch, s.grad_clip)
        metrics = evaluate(model, kind, data, val_split, spec, post, val_set)
        row = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"], **losses,
               **{k: v for k, v in metrics.items() if not isinstance(v, dict)}, "seconds": time.time() - t0}
        rows.append(row)
        print("  " + "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()),
              flush=True)
        save_checkpoint(out_dir / "last.pt", model, meta, epoch=epoch, metrics=metrics)
        if best is None or metrics[key] >= best[key]:
            best = metrics
            save_checkpoint(out_dir / "best.pt", model, meta, epoch=epoch, metrics=metrics)
        _write_csv(out_dir / "log.csv", rows)
    return best


def _write_csv(path: Path, rows: list[dict]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)
