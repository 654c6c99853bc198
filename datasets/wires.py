"""Generated aerial scenes with 1-px power lines, in the layout of the power-line sets (PLDU, Mendeley):
`images/NNNNNN.jpg` beside `masks/NNNNNN.png` (0 background, 255 wire), split by the dataset config's
`random_split`. For building and testing a wire recipe where no real wire photos are at hand; not a stand-in
for them.

A scene is seen from above: fields, tree rows, roads and roofs as textured patches, and one to three spans of
2-4 parallel conductors crossing it nearly straight (a catenary seen from above is a line), drawn antialiased
at 1-2 px with low contrast against what lies beneath; the label is each conductor's 1-px centreline, as the
power-line benchmarks label them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np

from datasets.synthetic import _rng


def _ground(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Fields, tree rows, roads and roofs: float32 BGR."""
    img = np.empty((h, w, 3), np.float32)
    img[:] = rng.uniform([40, 80, 60], [110, 160, 140])  # grass / crop base
    for _ in range(rng.integers(3, 8)):  # field patches at random angles
        c = (rng.uniform(0, w), rng.uniform(0, h))
        size = (rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h)
        box = cv2.boxPoints((c, size, rng.uniform(0, 180))).astype(np.int32)
        cv2.fillPoly(img, [box], tuple(float(v) for v in rng.uniform([30, 60, 50], [140, 180, 170])))
    for _ in range(rng.integers(0, 3)):  # roads
        p0, p1 = rng.uniform([0, 0], [w, h]), rng.uniform([0, 0], [w, h])
        g = float(rng.uniform(90, 170))
        cv2.line(img, tuple(int(v) for v in p0), tuple(int(v) for v in p1), (g, g, g), int(rng.integers(4, 14)))
    for _ in range(rng.integers(0, 6)):  # roofs
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        bw, bh = rng.uniform(8, 40, 2)
        col = tuple(float(v) for v in rng.uniform([40, 40, 90], [160, 160, 200]))
        cv2.rectangle(img, (int(x), int(y)), (int(x + bw), int(y + bh)), col, -1)
    for _ in range(rng.integers(0, 40)):  # trees: dark blobs
        cv2.circle(img, (int(rng.uniform(0, w)), int(rng.uniform(0, h))), int(rng.integers(2, 7)),
                   tuple(float(v) for v in rng.uniform([20, 40, 20], [50, 90, 60])), -1)
    noise = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), rng.uniform(1, 4))
    img += (noise * rng.uniform(8, 20))[..., None]  # low-frequency texture
    img += rng.normal(0, 4, (h, w, 1)).astype(np.float32)  # sensor noise
    return img


def _span(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray) -> None:
    """2-4 parallel conductors across the image, each drawn 1-2 px wide and labelled as its 1-px centreline."""
    h, w = mask.shape
    angle = rng.uniform(0, np.pi)
    d = np.array([np.cos(angle), np.sin(angle)])
    n = np.array([-d[1], d[0]])
    centre = rng.uniform([0.1 * w, 0.1 * h], [0.9 * w, 0.9 * h])
    spacing = rng.uniform(4, 14)
    bend = rng.uniform(-3, 3)  # a little of the catenary survives the top-down view
    t = np.linspace(-1.5 * max(h, w), 1.5 * max(h, w), 200)
    dark = rng.random() < 0.6
    for k in range(int(rng.integers(2, 5))):
        offset = (k - 1.5) * spacing
        pts = centre + t[:, None] * d + (offset + bend * (1 - (t / t.max()) ** 2))[:, None] * n
        pts = np.round(pts * 16).astype(np.int32)  # 4 fractional bits for antialiased drawing
        below = float(img[int(np.clip(centre[1], 0, h - 1)), int(np.clip(centre[0], 0, w - 1))].mean())
        level = below * rng.uniform(0.45, 0.8) if dark else min(255.0, below * rng.uniform(1.2, 1.6))
        cv2.polylines(img, [pts], False, (level, level, level), int(rng.choice([1, 1, 2])), cv2.LINE_AA, shift=4)
        cv2.polylines(mask, [pts], False, 255, 1, cv2.LINE_8, shift=4)


def make_wire_scene(seed: int, index: int, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """-> (uint8 BGR image, uint8 mask: 255 on each conductor's 1-px centreline, 0 elsewhere)."""
    rng = _rng(seed, "wires", index)
    h, w = hw
    img = _ground(rng, h, w)
    mask = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        _span(rng, img, mask)
    return img.clip(0, 255).astype(np.uint8), mask


def generate_wires(root: str | Path, seed: int, count: int, hw: tuple[int, int]) -> None:
    """Write `count` scenes under root (images/, masks/); a partial earlier run is replaced, never mixed in."""
    root = Path(root)
    tmp = root.with_name(root.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for d in ("images", "masks"):
        (tmp / d).mkdir(parents=True)
    for i in range(count):
        img, mask = make_wire_scene(seed, i, hw)
        cv2.imwrite(str(tmp / "images" / f"{i:06d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
        cv2.imwrite(str(tmp / "masks" / f"{i:06d}.png"), mask)
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
