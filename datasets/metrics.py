"""Accuracy metrics and the one evaluation loop shared by training, export, bench and gate.

The scoring core lives in datasets/ (beside the label readers it scores against) so that training and
export use it without importing from evaluate/.

The loop takes a `runner` (uint8 batch -> list of numpy outputs: torch or any ONNX variant) and a
`preprocess_fn` (BGR frame -> (tensor, letterbox)), so the same code scores every cell of the gate.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from datasets.coco import CocoDetection, read_split
from datasets.config import DatasetConfig, SegmentationConfig, load_dataset_config
from datasets.formats import yolo_files
from datasets.masks import IGNORE_INDEX, read_mask, value_lut
from datasets.thin_metrics import ODSMeter, ThinMeter
from deploy.postprocess import Detections, decode_detector, decode_mask, decode_probs, logits_to_input
from deploy.preprocess import Letterbox, read_image

Runner = Callable[[np.ndarray], list[np.ndarray]]
PreprocessFn = Callable[[np.ndarray], tuple[np.ndarray, Letterbox]]

# The one metric table. METRICS: what each task reports (bench, report, robustness, comparisons); the
# threshold-sweep and skeleton ones (THIN_EXTRA_METRICS) are computed only with thin_metrics=True. PRIMARY:
# what training keeps best.pt by, export's INT8 budget is measured in and the gate judges where its config
# names no `metric:`.
METRICS = {"detector": ("map", "map50"),
           "segmenter": ("miou", "thin_iou", "ods_f1", "ois_f1", "cldice", "boundary_f1", "recall_1_2px")}
THIN_EXTRA_METRICS = ("ods_f1", "ois_f1", "cldice", "boundary_f1", "recall_1_2px")
PRIMARY = {"detector": "map", "segmenter": "thin_iou"}


def coco_gt(coco: CocoDetection) -> COCO:
    """pycocotools COCO built from the parsed JSON, filling optional fields real files sometimes omit."""
    ds = {k: v for k, v in coco.raw.items() if k in ("images", "categories", "info", "licenses")}
    anns = []
    for i, a in enumerate(coco.raw["annotations"]):
        a = dict(a)
        a.setdefault("id", i + 1)
        a.setdefault("iscrowd", 0)
        a.setdefault("area", float(a["bbox"][2]) * float(a["bbox"][3]))
        anns.append(a)
    ds["annotations"] = anns
    gt = COCO()
    gt.dataset = ds
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def coco_map(coco: CocoDetection, preds: dict[int, Detections], gt: COCO | None = None) -> dict:
    """preds: image_id -> Detections (contiguous labels).

    -> {"map": mAP@[.5:.95], "map50": mAP@.5, "pr50": precision at recall 0, .01, ..., 1 (IoU .5, mean
    over the classes that have ground truth)}.
    """
    gt = gt or coco_gt(coco)
    res = []
    for image_id, d in preds.items():
        xywh = d.boxes.copy()
        xywh[:, 2:] -= xywh[:, :2]
        for b, s, c in zip(xywh.tolist(), d.scores.tolist(), d.labels.tolist(), strict=True):
            res.append({"image_id": image_id, "category_id": coco.category_ids[c], "bbox": b, "score": s})
    if not res:
        return {"map": 0.0, "map50": 0.0, "pr50": [0.0] * 101}
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(res)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = sorted(preds)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    prec = ev.eval["precision"][0, :, :, 0, -1]  # (R=101, K) at IoU .5, all areas, maxDets 100; -1 = no GT
    valid = (prec > -1).any(0)
    pr50 = prec[:, valid].clip(0).mean(1) if valid.any() else np.zeros(101)
    return {"map": float(max(ev.stats[0], 0.0)), "map50": float(max(ev.stats[1], 0.0)),
            "pr50": [round(float(v), 4) for v in pr50]}


def pseudo_gt(coco: CocoDetection, reference: dict[int, Detections], min_score: float = 0.3) -> COCO:
    """Ground truth made of reference predictions (score >= min_score): label-free fidelity checks."""
    anns = []
    for image_id, d in reference.items():
        keep = d.scores >= min_score
        for b, c in zip(d.boxes[keep].tolist(), d.labels[keep].tolist(), strict=True):
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": coco.category_ids[c],
                         "bbox": [b[0], b[1], w, h], "area": w * h, "iscrowd": 0})
    gt = COCO()
    gt.dataset = {"images": coco.raw["images"], "categories": coco.raw["categories"], "annotations": anns}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def agreement_map(coco: CocoDetection, reference: dict[int, Detections], candidate: dict[int, Detections],
                  min_score: float = 0.3) -> dict:
    """mAP of `candidate` scored against `reference`'s confident boxes (e.g. INT8 against fp32)."""
    return coco_map(coco, candidate, pseudo_gt(coco, reference, min_score))


class SegMeter:
    """Confusion-matrix IoU. thin_iou = mean IoU over the thin-structure classes."""

    def __init__(self, class_names: Sequence[str], thin_classes: Sequence[str]):
        self.names = list(class_names)
        self.thin = [self.names.index(c) for c in thin_classes]
        self.k = len(self.names)
        self.cm = np.zeros((self.k, self.k), dtype=np.int64)  # rows: truth, cols: prediction

    def update(self, pred: np.ndarray, truth: np.ndarray) -> None:
        valid = truth != IGNORE_INDEX
        idx = truth[valid].astype(np.int64) * self.k + pred[valid].astype(np.int64)
        self.cm += np.bincount(idx, minlength=self.k * self.k).reshape(self.k, self.k)

    def compute(self) -> dict:
        tp = np.diag(self.cm).astype(np.float64)
        union = self.cm.sum(0) + self.cm.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(union > 0, tp / union, np.nan)
        thin = iou[self.thin] if self.thin else iou[1:]
        return {
            "miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else 0.0,
            "thin_iou": float(np.nanmean(thin)) if np.isfinite(thin).any() else 0.0,
            "iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(self.names, iou, strict=True)},
        }


def predict_detections(runner: Runner, coco: CocoDetection, preprocess_fn: PreprocessFn, post: dict,
                       limit: int | None = None) -> dict[int, Detections]:
    preds = {}
    for rec in coco.records[:limit]:
        tensor, lb = preprocess_fn(read_image(rec.path))
        outs = runner(tensor[None])
        preds[rec.image_id] = decode_detector(outs, lb, **post)
    return preds


class MaskPrediction(NamedTuple):
    mask: np.ndarray  # (H, W) uint8 class index in source pixels
    thin_prob: np.ndarray  # (T, H, W) uint8 probability x 255 of each thin class, for ODS / OIS


def predict_masks(runner: Runner, pairs: Sequence[tuple[Path, Path]], preprocess_fn: PreprocessFn,
                  thin: Sequence[int] = (), limit: int | None = None) -> list[MaskPrediction]:
    """Class masks and the thin classes' (indices `thin`) probabilities, one per image."""
    out = []
    for img_path, _ in list(pairs)[:limit]:
        tensor, lb = preprocess_fn(read_image(img_path))
        logits = logits_to_input(runner(tensor[None])[0], lb)  # once for both decodes
        out.append(MaskPrediction(decode_mask(logits, lb), decode_probs(logits, lb, thin)))
    return out


def score_masks(preds: Sequence[MaskPrediction | np.ndarray], truths: Sequence[np.ndarray], class_names,
                thin_classes, thin_metrics: bool = True, tolerance: float | str = 2.0) -> dict:
    """mIoU / per-class IoU / thin IoU; with thin_metrics also clDice, boundary F1 (2 px), width-bucketed recall
    and, from MaskPredictions' probabilities, ODS / OIS F1 within `tolerance` px."""
    names, thin_classes = list(class_names), list(thin_classes)
    meter = SegMeter(names, thin_classes)
    thin = ThinMeter(names, thin_classes) if thin_metrics and thin_classes else None
    with_probs = thin is not None and bool(preds) and isinstance(preds[0], MaskPrediction)
    ods = {c: ODSMeter(tolerance) for c in thin_classes} if with_probs else {}
    for p, t in zip(preds, truths, strict=True):
        mask = p.mask if isinstance(p, MaskPrediction) else p
        meter.update(mask, t)
        if thin is not None:
            thin.update(mask, t)
        for i, c in enumerate(ods):
            ods[c].update(p.thin_prob[i], t == names.index(c), t != IGNORE_INDEX)
    return {**meter.compute(), **(thin.compute() if thin is not None else {}), **ods_summary(ods)}


def ods_summary(meters: dict[str, ODSMeter]) -> dict:
    """ODS / OIS means over the thin classes with truth (like thin IoU), and each class's figures and PR curve."""
    if not meters:
        return {}
    per = {c: r for c, m in meters.items() if (r := m.compute()) is not None}
    mean = {k: float(np.mean([r[k] for r in per.values()])) if per else None for k in ("ods_f1", "ois_f1")}
    return {**mean, "ods": per}


def load_truth_masks(pairs: Sequence[tuple[Path, Path]], lut: np.ndarray, limit: int | None = None):
    return [read_mask(m, lut) for _, m in list(pairs)[:limit]]


def same_files_as_train(data: DatasetConfig, split: str) -> bool:
    """A detection split that is the training images, not a held-out part of them. A YOLO data.yaml names
    each split's images under the split's own key, so there the listed files are compared."""
    s = data.detection_split(split)
    if s.val_count is not None or s != data.detection.get("train"):
        return False
    if s.format != "yolo":
        return True
    data_yaml = data.path(s.annotations)
    return yolo_files(data_yaml, split) == yolo_files(data_yaml, "train")


class EvalSet:
    """A labelled split, read once (annotations, truth masks), scored for any runner and preprocessing.

    Training's per-epoch validation, bench, gate and export's INT8 budget all score through this.
    """

    def __init__(self, task: str, data: DatasetConfig, split: str, limit: int | None = None):
        self.task, self.limit = task, limit
        if task == "detector":
            self.coco = read_split(data, split)
            self.images = [r.path for r in self.coco.records[:limit]]
            self.is_train = split == "train" or same_files_as_train(data, split)
        else:
            self.seg = data.segmentation
            self.pairs = data.segmentation_pairs(split)[:limit]
            self.truths = load_truth_masks(self.pairs, value_lut(self.seg))
            self.images = [img for img, _ in self.pairs]
            self.is_train = self.pairs == data.segmentation_pairs("train")[:limit]

    @classmethod
    def from_checkpoint(cls, ckpt: dict, split: str, limit: int | None = None) -> EvalSet:
        return cls(ckpt["task"], load_dataset_config(ckpt["config"]["data"]), split, limit)

    @classmethod
    def unlabeled(cls, task: str, images: Sequence[Path], work_dir: Path, class_names: Sequence[str],
                  thin_classes: Sequence[str] = ()) -> EvalSet:
        """Frames without labels (e.g. device captures): only agreement scoring (`reference=`) applies.

        For the detector a COCO file with the images and the dataset's categories, and no annotations, is
        written to work_dir, so the same pycocotools path scores agreement.
        """
        ev = cls.__new__(cls)
        ev.task, ev.limit, ev.is_train, ev.images = task, None, False, [Path(p) for p in images]
        if task == "detector":
            root = Path(os.path.commonpath([str(p.parent) for p in ev.images]))
            cats = [{"id": i + 1, "name": n} for i, n in enumerate(class_names)]
            entries = []
            for i, p in enumerate(ev.images):
                h, w = read_image(p).shape[:2]
                entries.append({"id": i + 1, "file_name": str(p.relative_to(root)), "height": h, "width": w})
            work_dir.mkdir(parents=True, exist_ok=True)
            ann = work_dir / "unlabeled.json"
            ann.write_text(json.dumps({"images": entries, "categories": cats, "annotations": []}))
            ev.coco = CocoDetection(root, ann)
        else:
            ev.seg = SegmentationConfig(list(class_names), list(thin_classes))
            ev.pairs = [(p, None) for p in ev.images]
            ev.truths = None
        return ev

    def __len__(self) -> int:
        return len(self.images)

    @property
    def thin_idx(self) -> list[int]:
        """Class indices of the segmenter's thin classes."""
        return [self.seg.classes.index(c) for c in self.seg.thin_classes]

    def predict(self, runner: Runner, preprocess_fn: PreprocessFn, post: dict):
        """Detections per image id (detector) or MaskPredictions in split order (segmenter)."""
        if self.task == "detector":
            return predict_detections(runner, self.coco, preprocess_fn, post, self.limit)
        return predict_masks(runner, self.pairs, preprocess_fn, self.thin_idx)

    def score_predictions(self, preds, reference=None, thin_metrics: bool = True) -> dict:
        """Against the labels, or against `reference` predictions (label-free agreement) when given.
        `thin_metrics=False` skips THIN_EXTRA_METRICS (skeletons are the slow part)."""
        if self.task == "detector":
            return coco_map(self.coco, preds) if reference is None else agreement_map(self.coco, reference, preds)
        truths = self.truths if reference is None else [r.mask for r in reference]
        return score_masks(preds, truths, self.seg.classes, self.seg.thin_classes, thin_metrics,
                           self.seg.match_tolerance)

    def score(self, runner: Runner, preprocess_fn: PreprocessFn, post: dict, thin_metrics: bool = True) -> dict:
        return self.score_predictions(self.predict(runner, preprocess_fn, post), thin_metrics=thin_metrics)

