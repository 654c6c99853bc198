"""train_one_epoch / evaluate / fit for the detector and the segmenter (and, through `fit`'s model and
criterion arguments, the models the comparison scripts train on the same terms)."""

from __future__ import annotations

import csv
import json
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from datasets.augment import build_augment, closing_augment, resolve_augment
from datasets.metrics import PRIMARY, EvalSet
from deploy.atomic import atomic_path
from deploy.preprocess import PreprocessSpec, preprocess
from train import distributed
from train.checkpoint import CheckpointError, check_compatible, load_checkpoint, save_checkpoint, torch_runner
from train.config import ConfigError, ExperimentConfig, ScheduleConfig, TaskConfig
from train.data import build_dataset, detection_collate, drift_reference, image_paths
from train.ema import ModelEMA
from train.finetune import init_from
from train.losses import DetectionLoss, SegmentationLoss
from train.models import build_model, count_params
from train.run_dir import RunDir


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


def model_latency_ms(model: nn.Module, input_hw: tuple[int, int], runs: int = 10) -> float:
    """Median CPU latency (ms) of one uint8 image through the eval-mode torch model on one thread: a quick
    figure at start-up; `make bench` times the exported ONNX with ONNX Runtime."""
    x = torch.zeros(1, 3, *input_hw, dtype=torch.uint8)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    times = []
    with torch.no_grad():
        for _ in range(runs + 3):
            t0 = time.perf_counter()
            model.eval()(x)
            times.append((time.perf_counter() - t0) * 1e3)
    torch.set_num_threads(threads)
    model.train()
    return float(np.median(times[3:]))


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


@torch.no_grad()
def evaluate(model: nn.Module, val: EvalSet, spec: PreprocessSpec, post: dict) -> dict:
    """Score a torch model through the deploy pre/post-processing (as the exported model will be)."""
    return val.score(torch_runner(model.eval()), lambda img: preprocess(img, spec), post)


@dataclass
class Training:
    """Everything one task's training run holds, built once by build_training and used by each epoch."""

    task: str
    task_cfg: TaskConfig
    spec: PreprocessSpec
    train_set: Dataset
    loader: DataLoader
    sampler: DistributedSampler | None
    gen: torch.Generator
    val: EvalSet
    model: nn.Module
    criterion: nn.Module
    ema: ModelEMA | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler | None
    meta: dict  # what every checkpoint of this run carries
    post: dict  # postprocess settings the validation decodes with
    device: torch.device
    rank: int
    world: int
    evaluator: Callable[[nn.Module], dict] | None = None  # metrics of a model; default: evaluate() on val


def build_training(task: str, task_cfg: TaskConfig, cfg: ExperimentConfig, val_split: str = "val",
                   model: nn.Module | None = None, criterion: nn.Module | None = None) -> Training:
    """Data, model, loss, optimizer and schedule for one task. `model` / `criterion` replace ours (the
    comparison scripts train torchvision's models this way, through the same loop)."""
    s = task_cfg.train
    rank, world, device = distributed.init()
    set_seed(s.seed)
    if s.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    data, spec = cfg.dataset(), task_cfg.preprocess_spec()
    train_set = build_dataset(task, data, "train", spec, s)
    val = EvalSet(task, data, val_split)  # labels and truth masks read once, not every epoch
    names = train_set.class_names
    args = model_args(task_cfg, len(names)) if model is None else None
    model = build_model(task, args) if model is None else model
    if args is not None and task_cfg.model.init:
        init_from(model, task_cfg.model.init, task, names)
    params, gflops = model_cost(model, spec.input_size)
    if rank == 0:
        augment = resolve_augment(s.augment, s.epochs)
        name = type(model).__name__ if args is None else f"{task_cfg.model.backbone} x{task_cfg.model.width_mult}"
        print(f"{task}: {name}, {params / 1e6:.2f} M parameters, {gflops:.2f} GFLOPs at "
              f"{spec.input_size[0]}x{spec.input_size[1]}, {model_latency_ms(model, spec.input_size):.1f} ms on one "
              f"CPU thread (torch), {len(image_paths(train_set))} train / {len(val)} {val_split} images"
              + (f", {len(train_set)} crops of {s.crop[0]}x{s.crop[1]} an epoch" if s.crop else "")
              + (f", augment {s.augment} -> {augment} for {s.epochs} epochs" if augment != s.augment else "")
              + (f", {world} processes" if world > 1 else ""), flush=True)
    loader, sampler, gen = build_loader(task, train_set, s, rank, world)
    criterion = (criterion or build_criterion(task, task_cfg, model, len(names))).to(device)
    model = model.to(device)
    optimizer = build_optimizer(model, s.lr, s.weight_decay)
    total = s.epochs * len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(min(s.warmup_iters, total // 2), total))
    post = task_cfg.postprocess.for_classes(names) if task == "detector" else {}
    meta = {"task": task, "model_args": args, "class_names": names, "preprocess": asdict(spec),
            "postprocess": post, "config": asdict(cfg), "config_hash": cfg.hash(), "params": params, "gflops": gflops,
            "drift_reference": drift_reference(train_set, spec)}  # deploy.drift's reference statistics
    if task == "segmenter":
        meta["thin_classes"] = list(data.segmentation.thin_classes)
    return Training(task, task_cfg, spec, train_set, loader, sampler, gen, val, model, criterion,
                    ModelEMA(model, s.ema_decay, s.ema_tau) if s.ema_decay > 0 else None, optimizer, scheduler,
                    torch.amp.GradScaler("cuda") if device.type == "cuda" else None, meta, post, device, rank, world)


def model_args(task_cfg: TaskConfig, num_classes: int) -> dict:
    """Our model's constructor arguments, as the checkpoint stores them."""
    m = task_cfg.model
    # unset options are not stored, so older checkpoints' arguments match
    optional = {k: v for k, v in (("decoder", m.decoder), ("fused_blocks", m.fused_blocks),
                                  ("box_bins", m.box_bins)) if v}
    return dict(num_classes=num_classes, backbone=m.backbone, width_mult=m.width_mult, channels=m.channels,
                head_convs=m.head_convs, channel_order=task_cfg.channel_order, backbone_weights=m.backbone_weights,
                **optional)


def build_loader(task: str, train_set: Dataset, s: ScheduleConfig, rank: int,
                 world: int) -> tuple[DataLoader, DistributedSampler | None, torch.Generator]:
    """Under torchrun each rank trains on its shard (DistributedSampler); `gen` is re-seeded every epoch."""
    gen = torch.Generator()
    sampler = None
    if world > 1:
        sampler = DistributedSampler(train_set, world, rank, shuffle=True, seed=s.seed, drop_last=True)
    loader = DataLoader(train_set, batch_size=s.batch_size, shuffle=sampler is None, sampler=sampler,
                        num_workers=s.workers, generator=gen, drop_last=len(train_set) > s.batch_size * world,
                        collate_fn=detection_collate if task == "detector" else None)
    return loader, sampler, gen


def build_criterion(task: str, task_cfg: TaskConfig, model: nn.Module, num_classes: int) -> nn.Module:
    loss = task_cfg.loss
    if task == "detector":
        dfl = {} if loss.dfl_weight is None else {"dfl_weight": loss.dfl_weight}
        return DetectionLoss(*model.points(tuple(task_cfg.input_size)), num_classes, loss.box_weight,
                             loss.assigner, loss.cls_loss, loss.tal_topk, **dfl)
    return SegmentationLoss(num_classes, loss.dice_weight, loss.class_weights, loss.cldice_weight,
                            loss.lovasz_weight)


def restore(tr: Training, path: Path) -> tuple[dict | None, list[dict], int]:
    """Model, optimizer, schedule, EMA and scaler from `last.pt` -> (best metrics, log rows, next epoch)."""
    ck = load_checkpoint(path)
    check_compatible(ck, tr.meta, path)
    st = ck.get("train_state")
    if st is None:
        raise CheckpointError(f"{path}: holds no optimizer/schedule state to resume from; train into a new --out")
    tr.model.load_state_dict(st["model"])
    tr.optimizer.load_state_dict(st["optimizer"])
    tr.scheduler.load_state_dict(st["scheduler"])
    if tr.ema is not None:
        tr.ema.load_state_dict(st["ema"])
    if tr.scaler is not None and st.get("scaler"):
        tr.scaler.load_state_dict(st["scaler"])
    if tr.rank == 0:
        print(f"  resumed from {path} after epoch {ck['epoch']}", flush=True)
    return st["best"], st["rows"], ck["epoch"] + 1


def start_epoch(tr: Training, epoch: int, start: int) -> None:
    """Re-seed every source of randomness from (seed, epoch), so a resumed run replays the same epochs, and
    switch the domain-shift, mosaic and scale presets off for the closing `close_epochs`."""
    s = tr.task_cfg.train
    tr.gen.manual_seed(s.seed * 1000 + epoch)
    torch.manual_seed(s.seed * 1000 + epoch)
    if tr.sampler is not None:
        tr.sampler.set_epoch(epoch)
    augment = resolve_augment(s.augment, s.epochs)
    plain_augment = closing_augment(augment)  # what the last close_epochs train with,
    switch = s.epochs - s.close_epochs + 1  # from this epoch on
    if epoch == max(start, switch) and plain_augment != augment:
        # the closing epochs see the training domain only (a resumed run lands here as well)
        tr.train_set.augment = build_augment(plain_augment, tr.task, s.augment_target, s.shift_p,
                                             tr.spec.input_size, tr.spec.pad_value)
        if epoch == switch:  # a run resumed later loads the moments reset here from its checkpoint
            # AdamW's second moments were sized by shifted batches, whose gradients are several times the
            # clean ones (8x measured on the ablation segmenter); with beta2 0.999 they would shrink the
            # clean epochs' steps for ~1000 iterations. Start the moments afresh on clean gradients.
            tr.optimizer.state.clear()
        if tr.rank == 0:
            reset = ", optimizer moments reset" if epoch == switch else ""
            print(f"  epochs {epoch}-{s.epochs}: augment {plain_augment!r} (shift, mosaic and scale presets off"
                  f"{reset})", flush=True)
    tr.train_set.set_random_seed(s.seed * 1000 + epoch + 7919 * tr.rank)


def end_epoch(tr: Training, out_dir: Path, epoch: int, losses: dict, best: dict | None, rows: list[dict],
              writer, seconds: float) -> dict:
    """Rank 0: validate the EMA weights, log the row, write best.pt / last.pt / log.csv -> the best metrics."""
    final = tr.ema.module if tr.ema is not None else distributed.unwrap(tr.model)
    metrics = tr.evaluator(final.cpu()) if tr.evaluator else evaluate(final.cpu(), tr.val, tr.spec, tr.post)
    final.to(tr.device)
    row = {"epoch": epoch, "lr": tr.optimizer.param_groups[0]["lr"], **losses,
           **{k: v for k, v in metrics.items() if not isinstance(v, dict | list)}, "seconds": seconds}
    rows.append(row)
    print("  " + "  ".join(f"{k} {_fmt(v)}" for k, v in row.items()), flush=True)
    key = PRIMARY[tr.task]
    if best is None or _score(metrics[key]) >= _score(best[key]):
        best = metrics
        save_checkpoint(out_dir / "best.pt", final, tr.meta, epoch=epoch, metrics=metrics)
    state = {"model": distributed.unwrap(tr.model).state_dict(), "optimizer": tr.optimizer.state_dict(),
             "scheduler": tr.scheduler.state_dict(), "ema": tr.ema.state_dict() if tr.ema else None,
             "scaler": tr.scaler.state_dict() if tr.scaler else None, "best": best, "rows": rows}
    save_checkpoint(out_dir / "last.pt", final, tr.meta, epoch=epoch, metrics=metrics, train_state=state)
    _write_csv(out_dir / "log.csv", rows)
    for k, v in row.items():
        if k != "epoch" and v is not None:  # a metric without support (no truth pixels) stays missing
            writer.add_scalar(f"{tr.task}/{k}", v, epoch)
    return best


def fit(task: str, task_cfg: TaskConfig, cfg: ExperimentConfig, out_dir: Path, val_split: str = "val",
        resume: bool = False, model: nn.Module | None = None, criterion: nn.Module | None = None,
        evaluator: Callable[[nn.Module], dict] | None = None) -> dict:
    """Train one task; writes out_dir/{last,best}.pt, log.csv and tb/. Returns the best val metrics.

    `model`, `criterion` and `evaluator` replace ours (comparisons); the loop, schedule, augmentation, EMA
    and checkpoints are the same. Under torchrun rank 0 evaluates and writes.
    """
    tr = build_training(task, task_cfg, cfg, val_split, model, criterion)
    tr.evaluator = evaluator
    best, rows, start = restore(tr, out_dir / "last.pt") if resume else (None, [], 1)
    if tr.world > 1:
        device_ids = [tr.device.index] if tr.device.type == "cuda" else None
        tr.model = nn.parallel.DistributedDataParallel(tr.model, device_ids=device_ids)
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = _tensorboard(out_dir / "tb") if tr.rank == 0 else None
    s = task_cfg.train
    for epoch in range(start, s.epochs + 1):
        t0 = time.time()
        start_epoch(tr, epoch, start)
        losses = train_one_epoch(tr.model, tr.criterion, tr.loader, tr.optimizer, tr.scheduler, epoch, s.grad_clip,
                                 tr.device, tr.ema, tr.scaler)
        if tr.rank == 0:
            best = end_epoch(tr, out_dir, epoch, losses, best, rows, writer, time.time() - t0)
        distributed.barrier()
    if writer is not None:
        writer.close()
    if tr.world > 1:
        # one write, newline included: under PYTHONUNBUFFERED print() writes text and "\n" apart, and the
        # ranks share one stdout pipe, so two ranks' lines could splice into each other
        sys.stdout.write(f"rank {tr.rank}: final weights digest {distributed.weights_digest(tr.model)}\n")
        sys.stdout.flush()
    return best


def train_run(cfg: ExperimentConfig, run: RunDir, task: str = "all", resume: bool = False) -> dict:
    """Train the config's tasks (or one) into `run` -> best val metrics per task (rank 0; {} elsewhere)."""
    summary = {}
    for name in ("detector", "segmenter"):
        task_cfg = getattr(cfg, name)
        if task_cfg is None or task not in ("all", name):
            continue
        best = fit(name, task_cfg, cfg, run.task_dir(name), resume=resume and run.checkpoint(name, "last").is_file())
        if distributed.is_main():
            summary[name] = {k: v for k, v in best.items() if isinstance(v, int | float)}
            print(f"{name}: best val " + ", ".join(f"{k} {v:.4f}" for k, v in summary[name].items()), flush=True)
    if distributed.is_main():
        if not summary:
            raise ConfigError(f"{cfg.name}: no `detector:` or `segmenter:` section to train")
        (run.root / "train_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


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
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
