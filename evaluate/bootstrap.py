"""Paired bootstrap over images: a confidence interval for each of the gate's deltas.

A drop of a few boxes on 100 images is within the noise of the set (a benign JPEG re-encode at quality 95 cost
the demo detector 0.69 map50 points, above a 0.5-point limit). Every cell is scored on the same RESAMPLES
resamples of the images (drawn with replacement, fixed seed), so each delta has RESAMPLES paired values and a
percentile interval; the gate fails a drop check, and blames its stage, only when the whole interval is past
the limit (evaluate.checks).

Resampling never re-runs a model or a matcher: the detector's boxes are matched to the truth once per cell
(pycocotools' COCOeval.evaluate), and each resample's AP is accumulated from those per-image matches the way
COCOeval.accumulate does (101 recall points, precision made monotone, classes without truth left out); the
segmenter's metrics come from per-image confusion matrices. Other metrics (ODS / OIS, clDice, ...) get no
interval and are judged on their value alone.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
from pycocotools.cocoeval import COCOeval

from datasets.metrics import EvalSet, MaskPrediction, SegMeter, coco_gt, pseudo_gt

RESAMPLES, LEVEL, SEED = 200, 0.95, 0
RECALLS = np.linspace(0.0, 1.0, 101)
INTERVAL_CELLS = ("reference/fp32", "reference/int8", "deployed/fp32", "deployed/int8", "runtime/reference",
                  "runtime/integer", "runtime/deployed")


class DetectionTable:
    """What COCOeval matched, per class and image: the AP of any multiset of the images, without re-matching."""

    def __init__(self, ev: EvalSet, preds: dict, reference: dict | None = None):
        gt = coco_gt(ev.coco) if reference is None else pseudo_gt(ev.coco, reference)
        res = [{"image_id": i, "category_id": ev.coco.category_ids[c], "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                "score": s} for i, d in preds.items()
               for b, s, c in zip(d.boxes.tolist(), d.scores.tolist(), d.labels.tolist(), strict=True)]
        self.image_ids = sorted(preds)
        n, k = len(self.image_ids), len(ev.coco.category_ids)
        self.scores = [[np.zeros(0)] * n for _ in range(k)]
        self.tps = [[np.zeros((10, 0), bool)] * n for _ in range(k)]
        self.fps = [[np.zeros((10, 0), bool)] * n for _ in range(k)]
        self.npig = np.zeros((k, n), np.int64)
        if not res:
            return
        with contextlib.redirect_stdout(io.StringIO()):
            coco_eval = COCOeval(gt, gt.loadRes(res), "bbox")
            coco_eval.params.imgIds = self.image_ids
            coco_eval.evaluate()
        n_area, max_det = len(coco_eval.params.areaRng), coco_eval.params.maxDets[-1]
        for ki in range(k):
            for ii in range(n):
                e = coco_eval.evalImgs[ki * n_area * n + ii]  # area "all"
                if e is None:
                    continue
                ignore = e["dtIgnore"][:, :max_det].astype(bool)
                match = e["dtMatches"][:, :max_det] > 0
                self.scores[ki][ii] = np.asarray(e["dtScores"][:max_det], np.float64)
                self.tps[ki][ii], self.fps[ki][ii] = match & ~ignore, ~match & ~ignore
                self.npig[ki, ii] = int(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0))

    def metric(self, idx: np.ndarray, name: str) -> float:
        """map (IoU .50:.95) or map50 of the images `idx` (indices, repeats allowed)."""
        ious = slice(None) if name == "map" else slice(0, 1)
        per_class = []
        for ki in range(len(self.scores)):
            npig = int(self.npig[ki, idx].sum())
            if npig == 0:
                continue
            scores = np.concatenate([self.scores[ki][i] for i in idx])
            order = np.argsort(-scores, kind="mergesort")
            tp = np.cumsum(np.concatenate([self.tps[ki][i] for i in idx], axis=1)[ious, order], axis=1)
            fp = np.cumsum(np.concatenate([self.fps[ki][i] for i in idx], axis=1)[ious, order], axis=1)
            if tp.shape[1] == 0:
                per_class.append(np.zeros(tp.shape[0]))
                continue
            recall = tp / npig
            precision = np.maximum.accumulate((tp / (tp + fp + np.spacing(1)))[:, ::-1], axis=1)[:, ::-1]
            ap = []
            for r, p in zip(recall, precision, strict=True):
                at = np.searchsorted(r, RECALLS, side="left")
                ap.append(np.where(at < len(p), p[np.minimum(at, len(p) - 1)], 0.0).mean())
            per_class.append(np.asarray(ap))
        return float(np.mean(per_class)) if per_class else 0.0


class MaskTable:
    """Per-image confusion matrices: mIoU / thin IoU of any multiset of the images."""

    def __init__(self, ev: EvalSet, preds: list, truths: list):
        self.meter = SegMeter(ev.seg.classes, ev.seg.thin_classes)
        self.cms = []
        for p, t in zip(preds, truths, strict=True):
            self.meter.cm[:] = 0
            self.meter.update(p.mask if isinstance(p, MaskPrediction) else p, t)
            self.cms.append(self.meter.cm.copy())
        self.cms = np.stack(self.cms)  # (N, K, K)

    def metric(self, idx: np.ndarray, name: str) -> float:
        self.meter.cm = self.cms[idx].sum(0)
        return self.meter.compute()[name]


def table(ev: EvalSet, preds, reference, metric: str):
    """The resampling table of one cell, or None where `metric` has no per-image decomposition here."""
    if ev.task == "detector":
        return DetectionTable(ev, preds, reference) if metric in ("map", "map50") else None
    if metric not in ("miou", "thin_iou"):
        return None
    truths = ev.truths if reference is None else [r.mask if isinstance(r, MaskPrediction) else r for r in reference]
    return MaskTable(ev, preds, truths)


def delta_intervals(ev: EvalSet, preds: dict, metric: str, labels: bool) -> dict[str, list[float]] | None:
    """{delta: [low, high]} at LEVEL for the gate's deltas (evaluate.attribution.deltas, and the runtime's
    `kernels` part: runtime/integer - runtime/deployed), over paired resamples of the images; None when the
    metric has no per-image decomposition."""
    reference = None if labels else preds["reference/fp32"]
    tables = {c: table(ev, preds[c], reference, metric) for c in INTERVAL_CELLS if c in preds}
    if any(t is None for t in tables.values()):
        return None
    n = len(ev.images)
    draws = np.random.default_rng(SEED).integers(0, n, size=(RESAMPLES, n))
    values = {c: np.array([t.metric(idx, metric) for idx in draws]) for c, t in tables.items()}
    ref, q = values["reference/fp32"], values["reference/fp32"] - values["reference/int8"]
    p = ref - values["deployed/fp32"]
    samples = {"quantization": q, "preprocessing": p, "interaction": ref - values["deployed/int8"] - q - p}
    if "runtime/deployed" in values:
        samples["runtime"] = values["runtime/reference"] - values["runtime/deployed"]
        if "runtime/integer" in values:
            samples["kernels"] = values["runtime/integer"] - values["runtime/deployed"]
    tail = 100 * (1 - LEVEL) / 2
    return {k: [float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))] for k, v in samples.items()}
