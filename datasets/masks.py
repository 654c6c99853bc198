"""Class-indexed PNG mask reader (any dataset: our synthetic masks, binary 0/255 masks via a value map)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from datasets.config import DatasetError, SegmentationConfig

IGNORE_INDEX = 255  # mask pixels that are not scored (letterbox padding, unmapped values)


def value_lut(seg: SegmentationConfig) -> np.ndarray:
    """256-entry lookup table from PNG value to class index; unmapped values become IGNORE_INDEX."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    if seg.mask_values is None:
        lut[: len(seg.classes)] = np.arange(len(seg.classes), dtype=np.uint8)
    else:
        for value, cls in seg.mask_values.items():
            if not 0 <= cls < len(seg.classes):
                raise DatasetError(f"mask_values maps {value} to class {cls}, but there are {len(seg.classes)}")
            lut[value] = cls
    return lut


def read_mask(path: str | Path, lut: np.ndarray, expect_hw: tuple[int, int] | None = None) -> np.ndarray:
    """PNG -> (H, W) uint8 class indices. Colour PNGs use their first channel."""
    path = Path(path)
    m = cv2.imread(str(path), cv2.IMREAD_UNCHANGED) if path.is_file() else None
    if m is None:
        raise DatasetError(f"{path}: missing or unreadable mask PNG; replace it or drop the image")
    if m.ndim == 3:
        m = m[..., 0]
    if m.dtype != np.uint8:
        raise DatasetError(f"{path}: mask must be 8-bit, got {m.dtype}; save class indices as uint8 PNG")
    if expect_hw is not None and m.shape != tuple(expect_hw):
        raise DatasetError(f"{path}: mask is {m.shape[1]}x{m.shape[0]} but its image is {expect_hw[1]}x{expect_hw[0]}")
    return lut[m]
