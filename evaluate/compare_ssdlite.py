"""python -m evaluate.compare_ssdlite --config configs/demo.yaml --out runs/compare-ssdlite

Trains our detector and torchvision's ssdlite320_mobilenet_v3_large (no weights) on the same data, input
size, epoch budget and schedule; scores both with the same pycocotools code and times both with the same
ONNX Runtime benchmark; prints one table and writes <out>/results.json.

Fairness notes: SSDLite keeps its own box coder, matcher and loss, and its own score threshold (0.001,
more low-confidence boxes for COCOeval). Its latency is the network alone (backbone + head, exported to
ONNX); anchor decoding and NMS are left out, while ours includes box decoding. Both are generous to SSDLite.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision.models.detection import ssdlite320_mobilenet_v3_large

from deploy.contract import Contract
from deploy.postprocess import Detections
from deploy.preprocess import boxes_to_image, preprocess, read_image
from deploy.runtime import session_options
from evaluate.bench import latency_ms
from evaluate.metrics import EvalSet
from export.onnx_export import export_onnx
from train.checkpoint import load_checkpoint, model_from_checkpoint
from train.config import load_config
from train.data import build_dataset, detection_collate
from train.loop import build_optimizer, fit, model_cost, set_seed, torch_runner, warmup_cosine


class SSDLiteNet(nn.Module):
    """SSDLite's network on uint8 input: its own normalisation, backbone and head, no decode/NMS."""

    def __init__(self, ssd: nn.Module):
        super().__init__()
        self.ssd = ssd

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (x.float() / 255.0 - 0.5) / 0.5  # GeneralizedRCNNTransform's mean/std for SSDLite
        out = self.ssd.head(list(self.ssd.backbone(x).values()))
        return out["cls_logits"], out["bbox_regression"]


def train_ssdlite(cfg, epochs: int) -> nn.Module:
    task, s = cfg.detector, cfg.detector.train
    set_seed(s.seed)
    spec = task.preprocess_spec()
    data = cfg.dataset()
    train_set = build_dataset("detector", data, "train", spec, s.augment, s.cache_images)
    ssd = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None,
                                        num_classes=len(train_set.class_names) + 1)  # + background
    gen = torch.Generator().manual_seed(s.seed)
    loader = DataLoader(train_set, batch_size=s.batch_size, shuffle=True, generator=gen,
                        collate_fn=detection_collate, drop_last=True)
    opt = build_optimizer(ssd, s.lr, s.weight_decay)
    total = epochs * len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(min(s.warmup_iters, total // 2), total))
    for epoch in range(1, epochs + 1):
        ssd.train()
        t0, tot = time.time(), 0.0
        for images, targets in loader:
            imgs = [im.float() / 255.0 for im in images]
            tg = [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in targets]
            losses = ssd(imgs, tg)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"ssdlite: non-finite loss at epoch {epoch}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(ssd.parameters(), s.grad_clip)
            opt.step()
            sched.step()
            tot += float(loss.detach())
        print(f"  ssdlite epoch {epoch}  loss {tot / len(loader):.4g}  seconds {time.time() - t0:.1f}", flush=True)
    return ssd.eval()


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


def ort_latency(onnx_path: Path, x: np.ndarray, warmup: int, repeats: int) -> dict:
    out = {}
    for n in (1, 2):
        sess = ort.InferenceSession(str(onnx_path), session_options(n), providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        out[f"{n}t"] = latency_ms(lambda s=sess, nm=name: s.run(None, {nm: x}), warmup, repeats)["p50"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evaluate.compare_ssdlite", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--out", default="runs/compare-ssdlite")
    p.add_argument("--epochs", type=int, default=None, help="override the config's detector epochs (both models)")
    p.add_argument("--repeats", type=int, default=100)
    args = p.parse_args(argv)
    cfg = load_config(args.config)
    if cfg.detector is None:
        print(f"error: {args.config} has no detector section", file=sys.stderr)
        return 2
    if args.epochs:
        cfg.detector.train.epochs = args.epochs
    epochs = cfg.detector.train.epochs
    H, W = cfg.detector.input_size
    out = Path(args.out)
    print(f"ours: training {epochs} epochs", flush=True)
    fit("detector", cfg.detector, cfg, out / "ours" / "detector")
    ckpt = load_checkpoint(out / "ours" / "detector" / "best.pt")
    ours = model_from_checkpoint(ckpt)
    print(f"ssdlite320_mobilenet_v3_large: training {epochs} epochs", flush=True)
    ssd = train_ssdlite(cfg, epochs)
    spec = cfg.detector.preprocess_spec()
    ev = EvalSet("detector", cfg.dataset(), "val")
    results = {"ours": ev.score(torch_runner(ours), lambda im: preprocess(im, spec), ckpt["postprocess"]),
               "ssdlite": eval_ssdlite(ssd, ev, spec)}
    x = preprocess(read_image(ev.images[0]), spec)[0][None]
    net = SSDLiteNet(ssd).eval()
    with tempfile.TemporaryDirectory() as tmp:
        dummy = Contract("detector", spec, ["x"], "compare", ["cls_logits", "boxes"])
        paths = {"ours": export_onnx(ours, dummy, Path(tmp) / "ours.onnx"),
                 "ssdlite": export_onnx(net, dummy, Path(tmp) / "ssdlite.onnx")}
        for name, model in (("ours", ours), ("ssdlite", net)):
            params, gflops = model_cost(model, (H, W))
            results[name].update(latency_ms=ort_latency(paths[name], x, 10, args.repeats), params=params,
                                 gflops=gflops, size_mb=os.path.getsize(paths[name]) / 2**20)
    results["setup"] = {"config": args.config, "epochs": epochs, "input_size": [H, W], "cores": os.cpu_count(),
                        "split": "val"}
    (out / "results.json").write_text(json.dumps(results, indent=2))
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
