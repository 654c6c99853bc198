"""DistributedDataParallel plumbing for `torchrun --nproc_per_node=N -m train ...` (NCCL on GPUs, gloo on CPU)."""

from __future__ import annotations

import hashlib
import os

import torch
import torch.distributed as dist
from torch import nn


def init() -> tuple[int, int, torch.device]:
    """-> (rank, world size, device). A plain `python -m train` is world size 1 with no process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            dist.init_process_group("nccl")
        else:
            dist.init_process_group("gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    else:
        device = torch.device("cpu")
    return rank, world, device


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def broadcast(obj):
    """Send a picklable object from rank 0 to all ranks (e.g. the 'stop' decision after a NaN)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def weights_digest(model: nn.Module) -> str:
    """sha256 over the parameters (not BN buffers, which each rank updates from its own batches)."""
    h = hashlib.sha256()
    for name, p in sorted(unwrap(model).named_parameters()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
