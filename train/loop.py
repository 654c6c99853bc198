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
from torch.utils.data import DataLoader, DistributedSampler
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from datasets.augment import build_augment, without_shift
from deploy.preprocess import PreprocessSpec, preprocess
from evaluate.metrics import EvalSet
from train import distributed
from train.checkpoint import CheckpointError, check_compatible, load_checkpoint, save_checkpoint
from train.config import ExperimentConfig, TaskConfig
from train.data import build_dataset, detection_collate, drift_reference
from train.ema import ModelEMA
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


def _to(targets, device: torch.device):
    if isinstance(targets, torch.Tensor):
        return targets.to(device, non_blocking=True)
    return [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in t.items()} for t in targets]


def train_one_epoch(model, criterion, loader, optimizer, scheduler, epoch: int, grad_clip: float,
                    device: torch.device, ema: ModelEMA | None = None, scaler=None) -> dict:
    model.train()
    sums: dict[str, float] = {}
    amp = device.type == "cuda"  # mixed precision on GPUs; losses are computed in float32 either way
    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, dynamic_ncols=True, disable=None)  # off when not a tty
    for it, (images, targets) in enumerate(bar):
        images, targets = images.to(device, non_blocking=True), _to(targets, device)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            out = model(images)
        losses = criterion(*out, targets) if isinstance(out, tuple) else criterion(out, targets)
        loss = losses["loss"]
        if not torch.isfinite(loss):
            parts = {k: float(v) for k, v in losses.items()}
            raise FloatingPointError(
                f"non-finite loss at epoch {epoch}, iteration {it} ({parts}); lower the lr or check the labels"
            )
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update(distributed.unwrap(model))
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
def evaluate(model: nn.Module, val: EvalSet, spec: PreprocessSpec, post: dict) -> dict:
    """Score a torch model through the deploy pre/post-processing (as the exported model will be)."""
    return val.score(torch_runner(model.eval()), lambda img: preprocess(img, spec), post)


def fit(kind: str, task: TaskConfig, cfg: ExperimentConfig, out_dir: Path, val_split: str = "val",
        resume: bool = False) -> dict:
    """Train one model; writes out_dir/{last,best}.pt, log.csv and tb/. Returns the best val metrics.

    Under torchrun each rank trains on its shard (DistributedSampler); rank 0 evaluates and writes.
    """
    s = task.train
    rank, world, device = distributed.init()
    set_seed(s.seed)
    if s.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    data, spec = cfg.dataset(), task.preprocess_spec()
    train_set = build_dataset(kind, data, "train", spec, s.augment, s.cache_images, s.augment_target, s.shift_p)
    val = EvalSet(kind, data, val_split)  # labels and truth masks read once, not every epoch
    names = train_set.class_names
    m = task.model
    model_args = dict(num_classes=len(names), backbone=m.backbone, width_mult=m.width_mult, channels=m.channels,
                      head_convs=m.head_convs, channel_order=task.channel_order, backbone_weights=m.backbone_weights)
    model = build_model(kind, model_args)
    params, gflops = model_cost(model, spec.input_size)
    if rank == 0:
        print(f"{kind}: {m.backbone} x{m.width_mult}, {params / 1e6:.2f} M parameters, {gflops:.2f} GFLOPs at "
              f"{spec.input_size[0]}x{spec.input_size[1]}, {len(train_set)} train / {len(val)} {val_split} "
              f"images" + (f", {world} processes" if world > 1 else ""), flush=True)
    gen = torch.Generator()
    sampler = None
    if world > 1:
        sampler = DistributedSampler(train_set, world, rank, shuffle=True, seed=s.seed, drop_last=True)
    loader = DataLoader(train_set, batch_size=s.batch_size, shuffle=sampler is None, sampler=sampler,
                        num_workers=s.workers, generator=gen, drop_last=len(train_set) > s.batch_size * world,
                        collate_fn=detection_collate if kind == "detector" else None)
    if kind == "detector":
        criterion = DetectionLoss(*model.points(spec.input_size), len(names), task.loss.box_weight)
    else:
        criterion = SegmentationLoss(len(names), task.loss.dice_weight, task.loss.class_weights,
                                 task.loss.cldice_weight)
    model, criterion = model.to(device), criterion.to(device)
    ema = ModelEMA(model, s.ema_decay) if s.ema_decay > 0 else None
    optimizer = build_optimizer(model, s.lr, s.weight_decay)
    total = s.epochs * len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(min(s.warmup_iters, total // 2), total))
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
    post = task.postprocess.for_classes(names) if kind == "detector" else {}
    meta = {"kind": kind, "model_args": model_args, "class_names": names, "preprocess": asdict(spec),
            "postprocess": post, "config": asdict(cfg), "config_hash": cfg.hash(),
            "params": params, "gflops": gflops}
    if kind == "segmenter":
        meta["thin_classes"] = list(data.segmentation.thin_classes)
    meta["drift_reference"] = drift_reference(train_set, spec)  # deploy.drift's reference statistics
    key, best, rows, start = BEST_METRIC[kind], None, [], 1
    if resume:
        ck = load_checkpoint(out_dir / "last.pt")
        check_compatible(ck, meta, out_dir / "last.pt")
        st = ck.get("train_state")
        if st is None:
            raise CheckpointError(f"{out_dir / 'last.pt'}: holds no optimizer/schedule state to resume from; "
                                  "train into a new --out")
        model.load_state_dict(st["model"])
        optimizer.load_state_dict(st["optimizer"])
        scheduler.load_state_dict(st["scheduler"])
        if ema is not None:
            ema.load_state_dict(st["ema"])
        if scaler is not None and st.get("scaler"):
            scaler.load_state_dict(st["scaler"])
        best, rows, start = st["best"], st["rows"], ck["epoch"] + 1
        if rank == 0:
            print(f"  resumed from {out_dir / 'last.pt'} after epoch {ck['epoch']}", flush=True)
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = _tensorboard(out_dir / "tb") if rank == 0 else None
    plain_augment = without_shift(s.augment)  # what the last shift_off_epochs train with,
    switch = s.epochs - s.shift_off_epochs + 1  # from this epoch on
    for epoch in range(start, s.epochs + 1):
        t0 = time.time()
        # every source of randomness is re-seeded from (seed, epoch): a resumed run replays the same epochs
        gen.manual_seed(s.seed * 1000 + epoch)
        torch.manual_seed(s.seed * 1000 + epoch)
        if sampler is not None:
            sampler.set_epoch(epoch)
        if epoch == max(start, switch) and plain_augment != s.augment:
            # the closing epochs see the training domain only (a resumed run lands here as well)
            train_set.augment = build_augment(plain_augment, kind, s.augment_target, s.shift_p)
            if epoch == switch:  # a run resumed later loads the moments reset here from its checkpoint
                # AdamW's second moments were sized by shifted batches, whose gradients are several times the
                # clean ones (8x measured on the ablation segmenter); with beta2 0.999 they would shrink the
                # clean epochs' steps for ~1000 iterations. Start the moments afresh on clean gradients.
                optimizer.state.clear()
            if rank == 0:
                reset = ", optimizer moments reset" if epoch == switch else ""
                print(f"  epochs {epoch}-{s.epochs}: augment {plain_augment!r} (shift presets off{reset})", flush=True)
        if getattr(train_set, "augment", None) is not None:
            train_set.augment.set_random_seed(s.seed * 1000 + epoch + 7919 * rank)
        losses = train_one_epoch(model, criterion, loader, optimizer, scheduler, epoch, s.grad_clip, device,
                                 ema, scaler)
        if rank == 0:
            final = ema.module if ema is not None else distributed.unwrap(model)
            metrics = evaluate(final.cpu(), val, spec, post)
            final.to(device)
            row = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"], **losses,
                   **{k: v for k, v in metrics.items() if not isinstance(v, dict | list)}, "seconds": time.time() - t0}
            rows.append(row)
            print("  " + "  ".join(f"{k} {_fmt(v)}" for k, v in row.items()), flush=True)
            if best is None or _score(metrics[key]) >= _score(best[key]):
                best = metrics
                save_checkpoint(out_dir / "best.pt", final, meta, epoch=epoch, metrics=metrics)
            state = {"model": distributed.unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "ema": ema.state_dict() if ema else None,
                     "scaler": scaler.state_dict() if scaler else None, "best": best, "rows": rows}
            save_checkpoint(out_dir / "last.pt", final, meta, epoch=epoch, metrics=metrics, train_state=state)
            _write_csv(out_dir / "log.csv", rows)
            for k, v in row.items():
                if k != "epoch" and v is not None:  # a metric without support (no truth pixels) stays missing
                    writer.add_scalar(f"{kind}/{k}", v, epoch)
        distributed.barrier()
    if writer is not None:
        writer.close()
    if world > 1:
        print(f"rank {rank}: final weights digest {distributed.weights_digest(model)}", flush=True)
    return best


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def _score(v: float | None) -> float:
    """A missing metric (no truth to score against) ranks below every measured one."""
    return -math.inf if v is None else v


def _tensorboard(path: Path):
    from torch.utils.tensorboard import SummaryWriter  # imported late: it is slow and only rank 0 logs

    return SummaryWriter(str(path))


def _write_csv(path: Path, rows: list[dict]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)
