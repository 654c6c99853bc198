"""Input drift monitor: cheap per-frame statistics against the training set's, scored by PSI.

Per frame, on the model's input tensor (what the network actually sees, so the figures do not depend on
the camera's resolution) taken at every STRIDE-th pixel and without letterbox padding, five histograms:
  brightness  16 grey-level bins (brightness and contrast: low light, fog, over-exposure)
  b, g, r     16 bins per colour channel (white balance, colour casts, seasons)
  sharpness   16 log-spaced bins of the gradient magnitude (blur moves mass down, sensor noise up)
Histograms are summed over a rolling window of frames and compared with the training set's by the
population stability index, PSI = sum((a - e) * ln(a / e)); the drift score is the largest PSI and names
its statistic. By the usual PSI reading, < 0.1 is no shift and > 0.25 a significant one (the default
threshold). The reference is computed at training time (train.loop, over the training images through
deploy.preprocess) and travels in the ONNX metadata as `edge_vision.drift`.
numpy and OpenCV only: this runs on the device.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

import cv2
import numpy as np

from deploy.preprocess import Letterbox

STRIDE = 2  # every 2nd pixel: 1/4 of the work, and sharpness is still measured at the input's own scale
LOG_MAX = float(np.log(257.0))  # gradient magnitudes 0..256 grey levels, binned on ln(1 + |g|)
STATS = ("brightness", "b", "g", "r", "sharpness")
DEFAULT_THRESHOLD = 0.25
EPS = 1e-4  # floor on bin fractions: an empty bin must not make PSI infinite


def frame_histograms(chw: np.ndarray, channel_order: str, lb: Letterbox | None = None) -> np.ndarray:
    """(3, H, W) uint8 model input -> (5, 16) counts: brightness, b, g, r, sharpness."""
    if lb is not None:  # the image only, not the letterbox bars
        chw = chw[:, lb.pad_y : lb.pad_y + lb.new_h, lb.pad_x : lb.pad_x + lb.new_w]
    x = np.ascontiguousarray(chw[:, ::STRIDE, ::STRIDE])  # (3, h, w) uint8
    bi, ri = (2, 0) if channel_order == "RGB" else (0, 2)
    b, g, r = x[bi], x[1], x[ri]
    w = x.astype(np.uint16)  # 150 * a uint8 plane would wrap around in uint8
    grey16 = 29 * w[bi] + 150 * w[1] + 77 * w[ri]  # luma weights x 256
    grey = (grey16 >> 8).astype(np.uint8)
    fine = grey16.astype(np.float32)  # unrounded: the gradients of smooth (or blurred) regions are < 1 level
    gx = cv2.Sobel(fine, cv2.CV_32F, 1, 0, ksize=3, scale=0.125 / 256)  # grey levels per pixel
    gy = cv2.Sobel(fine, cv2.CV_32F, 0, 1, ksize=3, scale=0.125 / 256)
    log_mag = cv2.log(cv2.magnitude(gx, gy) + 1.0)  # log-spaced bins: equal steps from 0 to ln(LOG_MAX)
    levels = [cv2.calcHist([p], [0], None, [16], [0, 256]).ravel() for p in (grey, b, g, r)]
    sharp = cv2.calcHist([log_mag], [0], None, [16], [0, LOG_MAX]).ravel()
    sharp[-1] += (log_mag >= LOG_MAX).sum()  # calcHist drops values past the range: the top bin takes them
    return np.stack([*levels, sharp]).astype(np.float64)


def psi(actual: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """PSI per row of two (S, B) count (or fraction) arrays."""
    a = np.maximum(actual / actual.sum(1, keepdims=True), EPS)
    e = np.maximum(expected / expected.sum(1, keepdims=True), EPS)
    return ((a - e) * np.log(a / e)).sum(1)


def reference_from_tensors(tensors: Iterable[tuple[np.ndarray, Letterbox | None]], channel_order: str) -> dict:
    """The training set's statistics: pooled histogram fractions, as stored in the model metadata."""
    total = sum(frame_histograms(t, channel_order, lb) for t, lb in tensors)
    frac = total / total.sum(1, keepdims=True)
    return {"stats": list(STATS), "stride": STRIDE, "hist": np.round(frac, 6).tolist(),
            "threshold": DEFAULT_THRESHOLD}


class DriftMonitor:
    """Rolling-window PSI against the reference. update() -> {"score", "stat", "warning", "frames"}."""

    def __init__(self, reference: dict, channel_order: str, window: int = 100, min_frames: int = 10,
                 threshold: float | None = None, model: str = "detector"):
        if reference.get("stats") != list(STATS) or reference.get("stride") != STRIDE:
            raise ValueError(f"drift reference has stats {reference.get('stats')} / stride "
                             f"{reference.get('stride')}, this runtime computes {list(STATS)} / {STRIDE}; "
                             "re-export the model")
        self.expected = np.asarray(reference["hist"], np.float64)
        self.channel_order = channel_order
        self.model = model  # whose input tensor it watches (the runtime's prepared[model])
        self.threshold = float(threshold if threshold is not None else reference.get("threshold", DEFAULT_THRESHOLD))
        self.window, self.min_frames = window, min_frames
        self.frames: deque[np.ndarray] = deque()
        self.total = np.zeros_like(self.expected)
        self.last = self.score()  # the latest update()'s result, for frames between measurements

    def update(self, chw: np.ndarray, lb: Letterbox | None = None) -> dict:
        h = frame_histograms(chw, self.channel_order, lb)
        self.frames.append(h)
        self.total += h
        if len(self.frames) > self.window:
            self.total -= self.frames.popleft()
        self.last = self.score()
        return self.last

    def score(self) -> dict:
        n = len(self.frames)
        if n < self.min_frames:
            return {"score": None, "stat": None, "warning": False, "frames": n}
        per_stat = psi(self.total, self.expected)
        i = int(per_stat.argmax())
        return {"score": round(float(per_stat[i]), 4), "stat": STATS[i],
                "warning": bool(per_stat[i] > self.threshold), "frames": n}

