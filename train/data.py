"""Training data path: reader -> (augmentation in source pixels) -> deploy.preprocess -> tensors.

Geometry and colour order come only from deploy.preprocess, so with augmentation off a sample is exactly
the tensor the runtime feeds the model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from datasets.augment import Augment, build_augment
from datasets.coco import CocoDetection
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


class DetectionDataset(Dataset):
    """-> (image (3, H, W) uint8, {"boxes": (M, 4) float32 input px, "labels": (M,) int64, "image_id"})."""

    def __init__(self, data: DatasetConfig, split: str, spec: PreprocessSpec, augment: Augment | None = None,
                 cache_images: bool = False):
        s = data.detection_split(split)
        self.coco = CocoDetection(data.path(s.images), data.path(s.annotations))
        self.class_names = self.coco.class_names
        self.spec = spec
        self.augment = augment
        self.cache = _ImageCache(cache_images)

    def __len__(self) -> int:
        return len(self.coco)

    def __getitem__(self, i: int):
        rec = self.coco.records[i]
        img = self.cache.get(rec.path)
        keep = ~rec.crowd  # crowd regions carry no box targets
        boxes, labels = rec.boxes[keep], rec.labels[keep]
        if self.augment is not None:
            h, w = img.shape[:2]
            boxes = boxes.copy()
            boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
            boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
            ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            out = self.augment(image=img, bboxes=boxes[ok], labels=labels[ok])
            img = out["image"]
            boxes = np.asarray(out["bboxes"], np.float32).reshape(-1, 4)
            labels = np.asarray(out["labels"], np.int64)
        tensor, lb = preprocess(img, self.spec)
        target = {
            "boxes": torch.from_numpy(boxes_to_input(boxes, lb)),
            "labels": torch.from_numpy(labels.astype(np.int64)),
            "image_id": rec.image_id,
        }
        return torch.from_numpy(tensor), target


class SegmentationDataset(Dataset):
    """-> (image (3, H, W) uint8, mask (H, W) int64 class index, IGNORE_INDEX on padding/unmapped)."""

    def __init__(self, data: DatasetConfig, split: str, spec: PreprocessSpec, augment: Augment | None = None,
                 cache_images: bool = False):
        self.pairs = data.segmentation_pairs(split)
        self.class_names = list(data.segmentation.classes)
        self.lut = value_lut(data.segmentation)
        self.spec = spec
        self.augment = augment
        self.cache = _ImageCache(cache_images)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int):
        img_path, mask_path = self.pairs[i]
        img = self.cache.get(img_path)
        mask = read_mask(mask_path, self.lut, img.shape[:2])
        if self.augment is not None:
            out = self.augment(image=img, mask=mask)
            img, mask = out["image"], out["mask"]
        tensor, _ = preprocess(img, self.spec)
        m = preprocess_mask(mask, self.spec, IGNORE_INDEX)
        return torch.from_numpy(tensor), torch.from_numpy(m.astype(np.int64))


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
    augment = build_augment(s.augment, task, s.augment_target, s.shift_p)
    if task == "detector":
        return DetectionDataset(data, split, spec, augment, s.cache_images)
    elif task == "segmenter":
        return SegmentationDataset(data, split, spec, augment, s.cache_images)
    raise ValueError(f"unknown task {task!r}")
