"""Training data path: reader -> (augmentation in source pixels) -> deploy.preprocess -> tensors.

Geometry and colour order come only from deploy.preprocess, so with augmentation off a sample is exactly
the tensor the runtime feeds the model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from datasets.augment import Augment, build_augment, resolve_augment
from datasets.coco import read_split
from datasets.config import DatasetConfig
from datasets.masks import IGNORE_INDEX, read_mask, value_lut
from deploy.drift import reference_from_tensors
from deploy.preprocess import PreprocessSpec, boxes_to_input, preprocess, preprocess_mask, read_image
from train.config import ScheduleConfig


class _ImageCache:
    def __init__(self, enabled: bool):
        self.enabled, self.store = enabled, {}

    def get(self, path) -> np.ndarray:
        if not self.enabled:
            return read_image(path)
        if path not in self.store:
            self.store[path] = read_image(path)
        return self.store[path]


class _SeededDataset(Dataset):
    """Its random draws (augmentation, crops) come from a seed the training loop sets every epoch."""

    augment: Augment | None
    seed: int = 0

    def set_random_seed(self, seed: int) -> None:
        self.seed = seed
        if self.augment is not None:
            self.augment.set_random_seed(seed)


class DetectionDataset(_SeededDataset):
    """-> (image (3, H, W) uint8, {"boxes": (M, 4) float32 input px, "labels": (M,) int64, "image_id"})."""

    def __init__(self, data: DatasetConfig, split: str, spec: PreprocessSpec, augment: Augment | None = None,
                 cache_images: bool = False):
        self.coco = read_split(data, split)
        self.class_names = self.coco.class_names
        self.spec = spec
        self.augment = augment
        self.cache = _ImageCache(cache_images)

    def __len__(self) -> int:
        return len(self.coco)

    def sample(self, i: int) -> dict:
        """Image i and its boxes clipped to the image (crowd regions carry no box targets), as the
        augmentation takes them."""
        rec = self.coco.records[i]
        img = self.cache.get(rec.path)
        keep = ~rec.crowd
        h, w = img.shape[:2]
        boxes = rec.boxes[keep].copy()
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
        ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return {"image": img, "bboxes": boxes[ok], "labels": rec.labels[keep][ok]}

    def __getitem__(self, i: int):
        out = self.sample(i)
        if self.augment is not None:
            out = self.augment(**out, partners=partners(self, i))
        boxes = np.asarray(out["bboxes"], np.float32).reshape(-1, 4)
        tensor, lb = preprocess(out["image"], self.spec)
        target = {
            "boxes": torch.from_numpy(boxes_to_input(boxes, lb)),
            "labels": torch.from_numpy(np.asarray(out["labels"], np.int64)),
            "image_id": self.coco.records[i].image_id,
        }
        return torch.from_numpy(tensor), target


class SegmentationDataset(_SeededDataset):
    """-> (image (3, H, W) uint8, mask (H, W) int64 class index, IGNORE_INDEX on padding/unmapped)."""

    def __init__(self, data: DatasetConfig, split: str, spec: PreprocessSpec, augment: Augment | None = None,
                 cache_images: bool = False, crop: tuple[int, int] | None = None, crop_fg: float = 0.5):
        self.pairs = data.segmentation_pairs(split)
        self.class_names = list(data.segmentation.classes)
        self.lut = value_lut(data.segmentation)
        self.spec = spec
        self.augment = augment
        self.cache = _ImageCache(cache_images)
        self.crop, self.crop_fg = crop, crop_fg
        # windows per image and epoch: an epoch of crops covers as many pixels as one of whole samples
        h, w = spec.input_size
        self.repeats = max(1, round(h * w / (crop[0] * crop[1]))) if crop else 1

    def __len__(self) -> int:
        return len(self.pairs) * self.repeats

    def sample(self, i: int) -> dict:
        img_path, mask_path = self.pairs[i % len(self.pairs)]  # with crops, each image comes `repeats` times
        img = self.cache.get(img_path)
        return {"image": img, "mask": read_mask(mask_path, self.lut, img.shape[:2])}

    def __getitem__(self, i: int):
        sample = self.sample(i)
        img, mask = sample["image"], sample["mask"]
        if self.augment is not None:
            out = self.augment(**sample, partners=partners(self, i))
            img, mask = out["image"], out["mask"]
        tensor, _ = preprocess(img, self.spec)
        m = preprocess_mask(mask, self.spec, IGNORE_INDEX)
        if self.crop:
            # drawn from (seed, i), as the mosaic partners are: a resumed epoch replays the same windows
            tensor, m = balanced_crop(tensor, m, self.crop, self.crop_fg, np.random.default_rng([self.seed, i]))
        return torch.from_numpy(np.ascontiguousarray(tensor)), torch.from_numpy(m.astype(np.int64))


def balanced_crop(image: np.ndarray, mask: np.ndarray, size: tuple[int, int], fg_p: float,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """An (h, w) window of a (3, H, W) input-size sample and its (H, W) mask, cut after the preprocessing, so
    1 px structures are never resampled. With probability fg_p (when the mask has foreground) the window
    is placed around a random foreground pixel, offset by up to a quarter of its size (class-balanced sampling
    of crops: uniform windows of a CrackForest photo, 1.6% crack pixels, would mostly hold road)."""
    h, w = size
    H, W = mask.shape
    fg = np.argwhere((mask > 0) & (mask != IGNORE_INDEX))  # (N, 2) rows, cols
    if len(fg) and rng.random() < fg_p:
        cy, cx = fg[rng.integers(len(fg))]
        y0 = int(np.clip(cy - h // 2 + rng.integers(-(h // 4), h // 4 + 1), 0, H - h))
        x0 = int(np.clip(cx - w // 2 + rng.integers(-(w // 4), w // 4 + 1), 0, W - w))
    else:
        y0, x0 = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
    return image[:, y0 : y0 + h, x0 : x0 + w], mask[y0 : y0 + h, x0 : x0 + w]


def partners(ds: DetectionDataset | SegmentationDataset, i: int) -> list[dict]:
    """The other samples a mosaic of sample i combines (none when the augmentation has no mosaic)."""
    if not ds.augment.needs_partners:
        return []
    return [ds.sample(j) for j in ds.augment.pick_partners(i, len(ds))]


def detection_collate(batch):
    images = torch.stack([b[0] for b in batch])  # (B, 3, H, W) uint8
    return images, [b[1] for b in batch]


def image_paths(ds: Dataset) -> list[Path]:
    """The image files of a DetectionDataset or SegmentationDataset, in dataset order."""
    if isinstance(ds, DetectionDataset):
        return [r.path for r in ds.coco.records]
    return [img for img, _ in ds.pairs]


def drift_reference(ds: Dataset, spec: PreprocessSpec, max_images: int = 200) -> dict:
    """Input statistics of the training images (un-augmented, through deploy.preprocess) for the runtime's
    drift monitor; the export writes them into the ONNX metadata."""
    paths = image_paths(ds)
    step = max(1, len(paths) // max_images)
    tensors = (preprocess(ds.cache.get(p), spec) for p in paths[::step])  # cached: training reuses them
    return reference_from_tensors(tensors, spec.channel_order)


def build_dataset(task: str, data: DatasetConfig, split: str, spec: PreprocessSpec,
                  schedule: ScheduleConfig | None = None) -> Dataset:
    """A split as training reads it under `schedule` (augmentation presets, shift_p, augment_target, image
    cache), or, without one, plain and uncached, as calibration reads it."""
    s = schedule or ScheduleConfig(augment="none", cache_images=False)
    augment = build_augment(resolve_augment(s.augment, s.epochs), task, s.augment_target, s.shift_p,
                            spec.input_size, spec.pad_value)
    if task == "detector":
        return DetectionDataset(data, split, spec, augment, s.cache_images)
    elif task == "segmenter":
        return SegmentationDataset(data, split, spec, augment, s.cache_images,
                                   tuple(s.crop) if s.crop else None, s.crop_fg)
    raise ValueError(f"unknown task {task!r}")
