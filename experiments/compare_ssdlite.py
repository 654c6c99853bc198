"""python -m experiments.compare_ssdlite --config configs/demo.yaml --out runs/compare-ssdlite

Trains our detector and torchvision's ssdlite320_mobilenet_v3_large (no weights) on the same data, input
size, epoch budget and schedule; scores both with the same pycocotools code and times both with the same
ONNX Runtime benchmark; prints one table and writes <out>/results.json.

Both train through the same `train.loop.fit` (data, augmentation, schedule, EMA, best-on-val checkpoint).
Fairness notes: SSDLite keeps its own box coder, matcher and loss, and its own score threshold (0.001,
more low-confidence boxes for COCOeval). Its latency is the network alone (backbone + head, exported to
ONNX); anchor decoding and NMS are left out, while ours includes box decoding. Both are generous to SSDLite.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.models.detection import ssdlite320_mobilenet_v3_large
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_iou

from datasets.metrics import EvalSet
from deploy.contract import Contract
from deploy.postprocess import Detections
from deploy.preprocess import boxes_to_image, preprocess, read_image
from experiments.peer import config_with, export_and_time, fit_ours, fit_peer, write_results
from train.checkpoint import torch_runner
from train.config import ConfigError


class SSDLiteNet(nn.Module):
    """SSDLite's network on uint8 input: its own normalisation, backbone and head, no decode/NMS."""

    def __init__(self, ssd: nn.Module):
        super().__init__()
        self.ssd = ssd

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (x.float() / 255.0 - 0.5) / 0.5  # GeneralizedRCNNTransform's mean/std for SSDLite
        out = self.ssd.head(list(self.ssd.backbone(x).values()))
        return out["cls_logits"], out["bbox_regression"]


class SSDLiteLoss(nn.Module):
    """SSDLite's own matcher, box coder and loss (hard negative mining) on SSDLiteNet's outputs, so it trains
    through the same loop as ours. Anchors depend on the input size only: computed once."""

    def __init__(self, ssd: nn.Module, input_hw: tuple[int, int]):
        super().__init__()
        self.ssd = ssd
        x = torch.zeros(1, 3, *input_hw)
        with torch.no_grad():  # eval: a probe for shapes must not touch BatchNorm's running statistics
            features = list(ssd.backbone.eval()(x).values())
        self.register_buffer("anchors", ssd.anchor_generator(ImageList(x, [tuple(input_hw)]), features)[0])

    def forward(self, cls_logits: torch.Tensor, bbox_regression: torch.Tensor, targets: list[dict]) -> dict:
        tg = [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in targets]  # 0 is SSD's background
        matched = [self.ssd.proposal_matcher(box_iou(t["boxes"], self.anchors)) if len(t["boxes"])
                   else torch.full((len(self.anchors),), -1, dtype=torch.int64, device=self.anchors.device)
                   for t in tg]
        losses = self.ssd.compute_loss(tg, {"cls_logits": cls_logits, "bbox_regression": bbox_regression},
                                       [self.anchors] * len(tg), matched)
        return {"loss": losses["bbox_regression"] + losses["classification"], **losses}


def train_ssdlite(cfg, out: Path) -> nn.Module:
    """SSDLite through `fit`: the same data, augmentation, schedule, EMA and best-on-val checkpoint as ours,
    with its own matcher, loss and decode."""
    spec = cfg.detector.preprocess_spec()
    ev = EvalSet("detector", cfg.dataset(), "val")
    num_classes = len(ev.coco.class_names) + 1  # + background
    return fit_peer("ssdlite320_mobilenet_v3_large", "detector", cfg, out,
                    lambda: SSDLiteNet(ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                                     num_classes=num_classes)),
                    lambda net: {"criterion": SSDLiteLoss(net.ssd, spec.input_size),
                                 "evaluator": lambda m: eval_ssdlite(m.ssd.eval(), ev, spec)})


def eval_ssdlite(ssd: nn.Module, ev: EvalSet, spec) -> dict:
    """SSDLite keeps its own decode + NMS; only the scoring is shared with ours."""
    preds = {}
    with torch.no_grad():
        for rec in ev.coco.records:
            tensor, lb = preprocess(read_image(rec.path), spec)
            out = ssd([torch.from_numpy(tensor).float() / 255.0])[0]
            preds[rec.image_id] = Detections(boxes_to_image(out["boxes"].numpy(), lb), out["scores"].numpy(),
                                             out["labels"].numpy().astype(np.int64) - 1)
    return ev.score_predictions(preds)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.compare_ssdlite", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--out", default="runs/compare-ssdlite")
    p.add_argument("--epochs", type=int, default=None, help="override the config's detector epochs (both models)")
    p.add_argument("--repeats", type=int, default=100)
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        cfg = config_with(args.config, "detector")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.epochs:
        cfg.detector.train.epochs = args.epochs
    epochs = cfg.detector.train.epochs
    out = Path(args.out)
    ours, ckpt = fit_ours("detector", cfg, out / "ours" / "detector")
    net = train_ssdlite(cfg, out / "ssdlite" / "detector")
    spec = cfg.detector.preprocess_spec()
    ev = EvalSet("detector", cfg.dataset(), "val")
    results = {"ours": ev.score(torch_runner(ours), lambda im: preprocess(im, spec), ckpt["postprocess"]),
               "ssdlite": eval_ssdlite(net.ssd, ev, spec)}
    x = preprocess(read_image(ev.images[0]), spec)[0][None]
    dummy = Contract("detector", spec, ev.coco.class_names, "compare", ["cls_logits", "boxes"])
    for name, cost in export_and_time({"ours": ours, "ssdlite": net}, dummy, x, args.repeats).items():
        results[name].update(cost)
    setup = {"config": args.config, "epochs": epochs, "input_size": list(spec.input_size), "split": "val"}
    write_results(out, "compare-ssdlite", results, setup)
    print(f"\n{'model':<9} {'mAP':>6} {'mAP50':>6} {'ORT 1t ms':>10} {'ORT 2t ms':>10} {'params M':>9} {'GFLOPs':>7}")
    for name in ("ours", "ssdlite"):
        r = results[name]
        print(f"{name:<9} {r['map']:>6.3f} {r['map50']:>6.3f} {r['latency_ms']['1t']:>10.2f} "
              f"{r['latency_ms']['2t']:>10.2f} {r['params'] / 1e6:>9.2f} {r['gflops']:>7.2f}")
    o, s = results["ours"], results["ssdlite"]
    print(f"latency ratio ours/ssdlite: 1t {o['latency_ms']['1t'] / s['latency_ms']['1t']:.2f}, "
          f"2t {o['latency_ms']['2t'] / s['latency_ms']['2t']:.2f}; mAP ours - ssdlite {o['map'] - s['map']:+.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
