"""python -m experiments.compare_lraspp --config configs/demo.yaml --out runs/compare-lraspp

Trains our segmenter and torchvision's lraspp_mobilenet_v3_large (no weights) on the same data, input
size, epoch budget, schedule, loss (cross-entropy + Dice with the config's class weights) and EMA; scores
both with the same metrics (mIoU, thin IoU, clDice, boundary F1 at 2 px, recall by structure width) and
times both with the same ONNX Runtime benchmark (fp32, batch 1, alternating rounds). Writes
<out>/results.json as {"ours": {...}, "lraspp": {...}, "setup": {...}} and prints one table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn
from torchvision.models.segmentation import lraspp_mobilenet_v3_large

from datasets.metrics import METRICS, EvalSet
from deploy.contract import Contract
from deploy.preprocess import preprocess, read_image
from experiments.peer import config_with, export_and_time, fit_ours, fit_peer, write_results
from train.checkpoint import torch_runner
from train.config import ConfigError
from train.models import InputNormalize

KEYS = METRICS["segmenter"]


class LRASPPNet(nn.Module):
    """torchvision LR-ASPP on uint8 input (ImageNet normalisation as its first layer, like ours)."""

    def __init__(self, num_classes: int, channel_order: str):
        super().__init__()
        self.normalize = InputNormalize(channel_order)
        self.net = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))["out"]  # (B, K, H, W)


def train_lraspp(cfg, out: Path) -> nn.Module:
    """LR-ASPP through `fit`: the same data, augmentation, loss, schedule, EMA and best-on-val checkpoint."""
    classes = len(cfg.dataset().segmentation.classes)
    return fit_peer("lraspp_mobilenet_v3_large", "segmenter", cfg, out,
                    lambda: LRASPPNet(classes, cfg.segmenter.channel_order))


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.compare_lraspp", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--out", default="runs/compare-lraspp")
    p.add_argument("--repeats", type=int, default=200)
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        cfg = config_with(args.config, "segmenter")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    task_cfg = cfg.segmenter
    models = {"ours": fit_ours("segmenter", cfg, out / "ours" / "segmenter")[0],
              "lraspp": train_lraspp(cfg, out / "lraspp" / "segmenter")}  # its best.pt is kept for re-scoring
    spec = task_cfg.preprocess_spec()
    ev = EvalSet("segmenter", cfg.dataset(), "val")
    results = {}
    for name, m in models.items():
        with torch.no_grad():
            r = ev.score(torch_runner(m), lambda im: preprocess(im, spec), {})
        results[name] = {k: r.get(k) for k in KEYS}
    x = preprocess(read_image(ev.images[0]), spec)[0][None]
    dummy = Contract("segmenter", spec, list(cfg.dataset().segmentation.classes), "compare", ["logits"])
    for n, cost in export_and_time(models, dummy, x, args.repeats).items():
        results[n].update(cost)
    setup = {"config": args.config, "epochs": task_cfg.train.epochs, "input_size": list(task_cfg.input_size),
             "split": "val", "loss": "cross-entropy + Dice, same weights"}
    write_results(out, "compare-lraspp", results, setup)
    head = " ".join(f"{k:>12}" for k in KEYS)
    print(f"\n{'model':<7} {head} {'ORT 1t ms':>10} {'ORT 2t ms':>10} {'params M':>9}")
    for n in ("ours", "lraspp"):
        r = results[n]
        print(f"{n:<7} " + " ".join(f"{r[k]:>12.4f}" if r[k] is not None else f"{'-':>12}" for k in KEYS)
              + f" {r['latency_ms']['1t']:>10.2f} {r['latency_ms']['2t']:>10.2f} {r['params'] / 1e6:>9.2f}")
    o, lr = results["ours"], results["lraspp"]
    print(f"latency ratio ours/lraspp: 1t {o['latency_ms']['1t'] / lr['latency_ms']['1t']:.2f}, "
          f"2t {o['latency_ms']['2t'] / lr['latency_ms']['2t']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
