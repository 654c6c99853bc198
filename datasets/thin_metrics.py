"""Thin-structure metrics: what overall mIoU hides. For the classes named thin (wires, lanes, cracks):

  cldice        centreline Dice (Shit et al. 2021): the predicted skeleton inside the truth and the true
                skeleton inside the prediction; skeletons by scikit-image;
  boundary_f1   F1 of boundary pixels matched within `tolerance` px (distance transform);
  recall_<w>px  fraction of true pixels predicted as their class, bucketed by the local structure width
                (1, 2, 3-4, 5-8, >8 px; width = 2 * distance-to-background at the nearest skeleton pixel - 1).

Counts are summed over images, then divided: a dataset score, not a mean of per-image ratios.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from skimage.morphology import skeletonize

from datasets.config import check_match_tolerance
from datasets.masks import IGNORE_INDEX

WIDTH_BUCKETS = (("1px", 1, 1), ("2px", 2, 2), ("3_4px", 3, 4), ("5_8px", 5, 8), ("gt8px", 9, 10**6))


def boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of a binary mask that touch the background (4-neighbourhood)."""
    m = mask.astype(np.uint8)
    return (m - cv2.erode(m, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)) > 0


def _dist_to(mask: np.ndarray) -> np.ndarray:
    """Distance (px) from every pixel to the nearest True pixel of mask (inf when mask is empty)."""
    if not mask.any():
        return np.full(mask.shape, np.inf, np.float32)
    return cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, 5)


def local_width(mask: np.ndarray) -> np.ndarray:
    """Per true pixel: the structure's width there (px), from its nearest skeleton pixel; 0 elsewhere."""
    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    inside = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    skel = skeletonize(mask)
    # nearest skeleton pixel for every pixel: labels of a distance transform to the skeleton
    _, labels = cv2.distanceTransformWithLabels((~skel).astype(np.uint8), cv2.DIST_L2, 5,
                                                labelType=cv2.DIST_LABEL_PIXEL)
    ys, xs = np.nonzero(skel)
    order = np.zeros(labels.max() + 1, np.float32)
    order[labels[ys, xs]] = inside[ys, xs]
    width = np.rint(2 * order[labels] - 1).clip(1).astype(np.int32)
    return np.where(mask, width, 0)


class ThinMeter:
    """Accumulates cldice, boundary F1 and width-bucketed recall over images, per thin class."""

    def __init__(self, class_names: Sequence[str], thin_classes: Sequence[str], tolerance: int = 2):
        self.classes = [(c, class_names.index(c)) for c in thin_classes]
        self.tol = tolerance
        # per class: skel(p) in t, skel(p), skel(t) in p, skel(t), boundary(p), matched, boundary(t), matched
        self.n = {c: np.zeros(8) for c, _ in self.classes}
        self.width = {c: {b: [0, 0] for b, *_ in WIDTH_BUCKETS} for c, _ in self.classes}

    def update(self, pred: np.ndarray, truth: np.ndarray) -> None:
        valid = truth != IGNORE_INDEX
        for name, k in self.classes:
            p, t = (pred == k) & valid, (truth == k) & valid
            sp, st = skeletonize(p), skeletonize(t)
            bp, bt = boundary(p), boundary(t)
            n = self.n[name]
            n[0] += (sp & t).sum()
            n[1] += sp.sum()
            n[2] += (st & p).sum()
            n[3] += st.sum()
            n[4] += bp.sum()
            n[5] += (bp & (_dist_to(bt) <= self.tol)).sum()
            n[6] += bt.sum()
            n[7] += (bt & (_dist_to(bp) <= self.tol)).sum()
            w = local_width(t)
            for b, lo, hi in WIDTH_BUCKETS:
                sel = (w >= lo) & (w <= hi)
                self.width[name][b][0] += int((sel & p).sum())
                self.width[name][b][1] += int(sel.sum())

    def compute(self) -> dict:
        """Means over thin classes (classes without truth skipped), like thin IoU, plus a per-class breakdown."""
        per = {}
        for name, _ in self.classes:
            n = self.n[name]
            tprec = n[0] / n[1] if n[1] else 0.0
            tsens = n[2] / n[3] if n[3] else None
            bprec = n[5] / n[4] if n[4] else 0.0
            brec = n[7] / n[6] if n[6] else None
            per[name] = {
                "cldice": None if tsens is None else _f1(tprec, tsens),
                "boundary_f1": None if brec is None else _f1(bprec, brec),
                **{f"recall_{b}": (hit / tot if tot else None) for b, (hit, tot) in self.width[name].items()},
            }
            hit = sum(self.width[name][b][0] for b in ("1px", "2px"))
            tot = sum(self.width[name][b][1] for b in ("1px", "2px"))
            per[name]["recall_1_2px"] = hit / tot if tot else None
        out = {k: _mean(v[k] for v in per.values()) for k in next(iter(per.values()), {})}
        out["thin"] = per
        return out


def _f1(p: float, r: float) -> float:
    return 0.0 if p + r == 0 else float(2 * p * r / (p + r))


def _mean(values) -> float | None:
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else None


# ODS / OIS: the F-measure of a thresholded foreground probability, as edge and crack benchmarks report it
THRESHOLDS = np.arange(1, 100) / 100  # BSDS's 99 thresholds
BSDS_MAX_DIST = 0.0075  # BSDS tolerance as a fraction of the image diagonal (the power-line benchmarks use it)


def tolerance_px(tolerance: float | str, shape: tuple[int, int]) -> float:
    """A match distance in pixels: a number as is, "bsds" as 0.0075 x the image diagonal."""
    check_match_tolerance(tolerance)
    return BSDS_MAX_DIST * float(np.hypot(*shape)) if tolerance == "bsds" else float(tolerance)


def disk(radius: float) -> np.ndarray:
    """Structuring element of the offsets within Euclidean distance `radius` (radius 0: the pixel itself)."""
    r = int(np.floor(radius))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (yy**2 + xx**2 <= radius**2 + 1e-9).astype(np.uint8)


def _at_or_above(values: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """For uint8 values: how many are >= each level (levels in 0..256)."""
    ge = np.cumsum(np.bincount(values.ravel(), minlength=256)[::-1])[::-1]
    return np.append(ge, 0)[levels]


class ODSMeter:
    """ODS and OIS F-measure of one thin class over THRESHOLDS, with a distance tolerance.

    prob is the class's softmax probability x 255 (uint8, deploy.postprocess.decode_probs). At threshold t a
    predicted pixel (prob >= t) is a true positive when a truth pixel lies within the tolerance, and a truth
    pixel is recalled when a predicted pixel lies within it: the rule of the crack benchmarks (CrackForest,
    DeepCrack). BSDS's benchmark also matches pixels one-to-one and thins the prediction first; this does
    neither, so on thick predictions it is the more lenient of the two.
      ODS  F at the one threshold best for the whole set (counts summed over images);
      OIS  counts summed at each image's own best threshold (BSDS's definition).
    """

    def __init__(self, tolerance: float | str = 2.0):
        self.tolerance = tolerance
        self.levels = np.ceil(THRESHOLDS * 255 - 1e-6).astype(np.int64)  # prob/255 >= t  <=>  prob >= level
        self.counts: list[np.ndarray] = []  # per image (4, T): matched predicted, predicted, recalled, truth

    def update(self, prob: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None) -> None:
        """prob (H, W) uint8, truth (H, W) bool, valid (H, W) bool (False: ignored pixels)."""
        if valid is not None:
            prob, truth = np.where(valid, prob, 0).astype(np.uint8), truth & valid
        k = disk(tolerance_px(self.tolerance, truth.shape))
        near_truth = cv2.dilate(truth.astype(np.uint8), k, borderType=cv2.BORDER_CONSTANT, borderValue=0) > 0
        best_near = cv2.dilate(prob, k, borderType=cv2.BORDER_CONSTANT, borderValue=0)  # max prob within reach
        self.counts.append(np.stack([
            _at_or_above(prob[near_truth], self.levels),
            _at_or_above(prob, self.levels),
            _at_or_above(best_near[truth], self.levels),
            np.full(len(self.levels), truth.sum()),
        ]).astype(np.float64))

    def compute(self) -> dict | None:
        """-> {"ods_f1", "ods_threshold", "ois_f1", "pr": {threshold, precision, recall}}; None without truth."""
        if not self.counts or not any(c[3, 0] for c in self.counts):
            return None
        c = np.stack(self.counts)  # (N, 4, T)
        p, r, f = _prf(c.sum(0))
        best = int(np.argmax(f))
        per_image = _prf(c)[2]  # (N, T); ties go to the highest threshold (fewest false positives)
        own = c.shape[2] - 1 - np.argmax(per_image[:, ::-1], axis=1)
        ois = _prf(c[np.arange(len(c)), :, own].sum(0)[:, None])[2][0]
        return {"ods_f1": float(f[best]), "ods_threshold": float(THRESHOLDS[best]), "ois_f1": float(ois),
                "pr": {"threshold": THRESHOLDS.round(2).tolist(), "precision": p.round(4).tolist(),
                       "recall": r.round(4).tolist()}}


def _prf(c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts (..., 4, T) -> precision, recall, F (..., T); no prediction: precision 0 (as BSDS)."""
    p = c[..., 0, :] / np.maximum(c[..., 1, :], 1)
    r = c[..., 2, :] / np.maximum(c[..., 3, :], 1)
    return p, r, np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0.0)
