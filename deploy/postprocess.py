"""Model outputs -> results in source-image pixels. Vectorised numpy/OpenCV, no per-box Python loops.

The same functions post-process torch outputs during evaluation and ONNX Runtime outputs on the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from deploy.preprocess import Letterbox, boxes_to_image, mask_to_image


@dataclass
class Detections:
    boxes: np.ndarray  # (K, 4) float32 xyxy in source pixels
    scores: np.ndarray  # (K,) float32
    labels: np.ndarray  # (K,) int64 class index into the contract's class_names

    def __len__(self) -> int:
        return len(self.scores)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_thres: float) -> np.ndarray:
    """Class-aware NMS (OpenCV C++), returns kept indices sorted by descending score."""
    if len(scores) == 0:
        return np.zeros(0, dtype=np.int64)
    xywh = boxes.astype(np.float64).copy()
    xywh[:, 2:] -= xywh[:, :2]
    keep = cv2.dnn.NMSBoxesBatched(xywh, scores.astype(np.float32), labels.astype(np.int32), 0.0, iou_thres)
    keep = np.asarray(keep, dtype=np.int64).reshape(-1)
    return keep[np.argsort(-scores[keep], kind="stable")]


def decode_detections(
    cls_logits: np.ndarray,
    boxes: np.ndarray,
    lb: Letterbox,
    conf_thres: float | Sequence[float] = 0.25,
    iou_thres: float = 0.5,
    max_det: int = 100,
    pre_nms_topk: int = 1000,
) -> Detections:
    """cls_logits (1, N, C) or (N, C), boxes (1, N, 4) xyxy in input pixels -> Detections in source pixels.

    Every (location, class) pair above conf_thres is a candidate (multi-label, as in torchvision);
    conf_thres is one value or one per class (the contract's per-class thresholds).
    """
    num_classes = cls_logits.shape[-1]
    logits = cls_logits.reshape(-1, num_classes)
    boxes = boxes.reshape(-1, 4)
    thres = np.clip(np.asarray(conf_thres, dtype=np.float32), 1e-6, 1 - 1e-6)  # () or (C,)
    logit_thres = np.log(thres / (1.0 - thres))  # compare logits, sigmoid only the survivors
    loc, cls = np.nonzero(logits > logit_thres)
    s = logits[loc, cls]
    if s.size > pre_nms_topk:
        top = np.argpartition(-s, pre_nms_topk)[:pre_nms_topk]
        loc, cls, s = loc[top], cls[top], s[top]
    scores = (1.0 / (1.0 + np.exp(-s.astype(np.float32)))).astype(np.float32)
    cand = boxes[loc].astype(np.float32)
    keep = batched_nms(cand, scores, cls, iou_thres)[:max_det]
    return Detections(boxes_to_image(cand[keep], lb), scores[keep], cls[keep].astype(np.int64))


def logits_to_input(logits: np.ndarray, lb: Letterbox) -> np.ndarray:
    """Segmenter logits (1, K, h, w) or (K, h, w) at the input size or a stride of it -> (K, in_h, in_w) float32.

    Our segmenter emits logits at stride 2: the bilinear upsampling (half-pixel centres, as torch's
    align_corners=False) is done here, on K channels, rather than in the graph, where ONNX Runtime pads
    them to 16 for its blocked layout.
    """
    z = logits.reshape(-1, *logits.shape[-2:]).astype(np.float32, copy=False)
    if lb.in_h and z.shape[1:] != (lb.in_h, lb.in_w):
        up = cv2.resize(np.moveaxis(z, 0, -1), (lb.in_w, lb.in_h), interpolation=cv2.INTER_LINEAR)
        z = np.moveaxis(up.reshape(lb.in_h, lb.in_w, -1), -1, 0)
    return z


def decode_mask(logits: np.ndarray, lb: Letterbox) -> np.ndarray:
    """Segmenter logits (1, K, h, w) or (K, h, w) -> (src_h, src_w) uint8 class-index mask."""
    mask = logits_to_input(logits, lb).argmax(axis=0).astype(np.uint8)  # (in_h, in_w)
    return mask_to_image(mask, lb)


def decode_probs(logits: np.ndarray, lb: Letterbox, classes: Sequence[int]) -> np.ndarray:
    """Segmenter logits (1, K, h, w) or (K, h, w) -> (len(classes), src_h, src_w) uint8: the softmax probability
    x 255 of each listed class in source pixels (bilinear), for threshold sweeps such as ODS / OIS."""
    if not classes:
        return np.zeros((0, lb.src_h, lb.src_w), np.uint8)
    z = logits_to_input(logits, lb)
    e = np.exp(z - z.max(axis=0, keepdims=True))
    p = e[list(classes)] / e.sum(axis=0)  # (T, in_h, in_w)
    src = mask_to_image(np.moveaxis(p, 0, -1), lb, cv2.INTER_LINEAR)  # (src_h, src_w, T)
    return np.ascontiguousarray(np.moveaxis(np.rint(src * 255).astype(np.uint8), -1, 0))


def decode_yolo(output: np.ndarray, lb: Letterbox, conf_thres: float | Sequence[float] = 0.25,
                iou_thres: float = 0.7, max_det: int = 300) -> Detections:
    """Ultralytics YOLOv8 / YOLO11 raw head (1, 4 + C, N) -> Detections in source pixels.

    Rows: cx, cy, w, h in input pixels, then C class probabilities (already sigmoid). Every (location, class)
    pair above conf_thres is a candidate, then class-aware NMS, as Ultralytics' validator does.
    """
    pred = output.reshape(output.shape[-2], output.shape[-1]).T  # (N, 4 + C)
    thres = np.asarray(conf_thres, dtype=np.float32)  # () or (C,)
    loc, cls = np.nonzero(pred[:, 4:] > thres)
    scores = pred[loc, 4 + cls].astype(np.float32)
    cxcy, wh = pred[loc, :2], pred[loc, 2:4]
    cand = np.concatenate([cxcy - wh / 2, cxcy + wh / 2], 1).astype(np.float32)
    keep = batched_nms(cand, scores, cls, iou_thres)[:max_det]
    return Detections(boxes_to_image(cand[keep], lb), scores[keep], cls[keep].astype(np.int64))


def decode_yolo_e2e(output: np.ndarray, lb: Letterbox, conf_thres: float | Sequence[float] = 0.25,
                    iou_thres: float = 0.7, max_det: int = 300) -> Detections:
    """YOLO26 end-to-end (NMS-free) output (1, K, 6): x1, y1, x2, y2, score, class, best first -> Detections.
    There is no NMS to run: iou_thres is accepted for a uniform signature and unused."""
    det = output.reshape(-1, 6)
    cls = det[:, 5].astype(np.int64)
    thres = np.asarray(conf_thres, dtype=np.float32)  # () or (C,)
    keep = np.flatnonzero(det[:, 4] > (thres[cls.clip(0, thres.size - 1)] if thres.ndim else thres))[:max_det]
    return Detections(boxes_to_image(det[keep, :4].astype(np.float32), lb), det[keep, 4].astype(np.float32),
                      cls[keep])


def decode_detector(outputs: Sequence[np.ndarray], lb: Letterbox, family: str = "edge-vision",
                    **post) -> Detections:
    """A detector's outputs, in contract order -> Detections, by the contract's postprocess family
    (deploy.contract.FAMILIES): ours, or an Ultralytics model brought in by `python -m export.adopt`."""
    if family == "yolo":
        return decode_yolo(outputs[0], lb, **post)
    if family == "yolo-e2e":
        return decode_yolo_e2e(outputs[0], lb, **post)
    return decode_detections(outputs[0], outputs[1], lb, **post)
