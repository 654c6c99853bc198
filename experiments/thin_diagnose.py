"""python -m experiments.thin_diagnose --run runs/demo [--split val] [--ablate-augment]

Why does the segmenter miss thin structures? Answers with numbers, per thin class:
  (a) stride ceiling: IoU of the ground truth downsampled to the model's finest feature stride (nearest)
      and back: the best any model at that stride could do;
  (b) label-noise sensitivity: thin IoU against the ground truth dilated and eroded by 1 px; a big swing
      means the labels' 1 px placement dominates the score;
  (c) recall by structure width (1, 2, 3-4, 5-8, >8 px);
  (d) with --ablate-augment: the same budget trained without augmentation, thin IoU side by side.
Prints a short verdict naming the most likely cause and writes <run>/thin_diagnose.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from datasets.masks import IGNORE_INDEX
from datasets.metrics import EvalSet, score_masks
from datasets.thin_metrics import WIDTH_BUCKETS
from deploy.preprocess import PreprocessSpec, preprocess
from train.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, torch_runner
from train.run_dir import RunDir


def stride_ceiling(truths: list[np.ndarray], stride: int, names, thin) -> float:
    """Thin IoU of each truth mask taken down to 1/stride (nearest) and back up: what a label map at the
    model's finest stride keeps. A model can beat it (its logits place structures below the stride)."""
    back = []
    for t in truths:
        h, w = t.shape
        small = cv2.resize(t, (max(1, w // stride), max(1, h // stride)), interpolation=cv2.INTER_NEAREST)
        back.append(cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST))
    return score_masks(back, truths, names, thin, thin_metrics=False)["thin_iou"]


def morph(truths: list[np.ndarray], op: str) -> list[np.ndarray]:
    """Each thin class dilated or eroded by 1 px (ignore pixels kept)."""
    k = np.ones((3, 3), np.uint8)
    out = []
    for t in truths:
        m = t.copy()
        for c in [c for c in np.unique(t) if c not in (0, IGNORE_INDEX)]:
            layer = (t == c).astype(np.uint8)
            layer = cv2.dilate(layer, k) if op == "dilate" else cv2.erode(layer, k)
            m[(m == c) & (layer == 0)] = 0
            m[(layer == 1) & (m == 0)] = c
        out.append(m)
    return out


def verdict(d: dict) -> str:
    widths = d["recall_by_width"]
    def mean(keys):
        v = [widths[k] for k in keys if widths.get(k) is not None]
        return float(np.mean(v)) if v else float("nan")

    thin_r, wide_r = mean(("recall_1px", "recall_2px")), mean(("recall_5_8px", "recall_gt8px"))
    reasons = []
    if d["stride_ceiling"] < 0.9 and 0.85 * d["stride_ceiling"] <= d["thin_iou"] <= d["stride_ceiling"] + 0.02:
        reasons.append(f"stride: the finest feature stride ({d['stride']}) caps thin IoU at "
                       f"{d['stride_ceiling']:.2f}")
    shifted = max(d["thin_iou_dilated"], d["thin_iou_eroded"])
    if shifted > d["thin_iou"] + 0.02:  # predictions agree better with labels 1 px wider/thinner
        which = "dilated" if d["thin_iou_dilated"] >= d["thin_iou_eroded"] else "eroded"
        reasons.append(f"label width: predictions match the labels {which} by 1 px better ({shifted:.3f} vs "
                       f"{d['thin_iou']:.3f}); the annotation width disagrees with the images")
    if np.isfinite(thin_r) and np.isfinite(wide_r) and wide_r - thin_r > 0.2:
        reasons.append(f"fine-scale capacity / receptive field: recall {thin_r:.2f} on 1-2 px vs {wide_r:.2f} on "
                       ">4 px structures")
    ab = d.get("ablation")
    if ab and ab["no_augment_thin_iou"] - ab["thin_iou"] > 0.02:
        reasons.append(f"augmentation: without it thin IoU is {ab['no_augment_thin_iou']:.3f} vs "
                       f"{ab['thin_iou']:.3f}")
    if not reasons:
        return "no single cause stands out (stride, labels, widths and augmentation all fine)"
    return "; ".join(reasons)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.thin_diagnose", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True)
    p.add_argument("--split", default="val")
    p.add_argument("--ablate-augment", action="store_true", help="also train without augmentation (same budget)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    run = Path(args.run)
    try:
        ckpt = load_checkpoint(RunDir.of(run).checkpoint("segmenter"))
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ev = EvalSet.from_checkpoint(ckpt, args.split)
    names, thin = ev.seg.classes, ev.seg.thin_classes
    model = model_from_checkpoint(ckpt).eval()
    spec = PreprocessSpec.from_dict(ckpt["preprocess"])
    preds = ev.predict(torch_runner(model), lambda im: preprocess(im, spec), {})
    full = score_masks(preds, ev.truths, names, thin)
    stride = min(model.backbone.out_strides)
    d = {"stride": stride, "stride_ceiling": stride_ceiling(ev.truths, stride, names, thin),
         "thin_iou": full["thin_iou"],
         "thin_iou_dilated": score_masks(preds, morph(ev.truths, "dilate"), names, thin, False)["thin_iou"],
         "thin_iou_eroded": score_masks(preds, morph(ev.truths, "erode"), names, thin, False)["thin_iou"],
         "recall_by_width": {f"recall_{b}": full.get(f"recall_{b}") for b, *_ in WIDTH_BUCKETS}}
    if args.ablate_augment:
        from train.config import ExperimentConfig, build_dataclass
        from train.loop import fit

        cfg = build_dataclass(ExperimentConfig, ckpt["config"], f"{run}/segmenter/best.pt config")  # self-describing
        task_cfg = dataclasses.replace(cfg.segmenter, train=dataclasses.replace(cfg.segmenter.train, augment="none"))
        best = fit("segmenter", task_cfg, cfg, run / "thin_diagnose_noaug" / "segmenter")
        d["ablation"] = {"thin_iou": full["thin_iou"], "no_augment_thin_iou": best["thin_iou"]}
    d["verdict"] = verdict(d)
    (run / "thin_diagnose.json").write_text(json.dumps(d, indent=2))
    print(f"stride ceiling (stride {stride}): thin IoU {d['stride_ceiling']:.3f}")
    print(f"thin IoU {d['thin_iou']:.3f}; against labels dilated 1 px {d['thin_iou_dilated']:.3f}, "
          f"eroded 1 px {d['thin_iou_eroded']:.3f}")
    print("recall by width: " + ", ".join(f"{k[7:]} {v:.3f}" if v is not None else f"{k[7:]} -"
                                           for k, v in d["recall_by_width"].items()))
    if "ablation" in d:
        print(f"augmentation ablation: with {d['ablation']['thin_iou']:.3f}, without "
              f"{d['ablation']['no_augment_thin_iou']:.3f}")
    print(f"verdict: {d['verdict']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
