"""COCO detection JSON reader that works on any dataset in that format (crowd regions, unlabeled images)."""

from __future__ import annotations

import json
import math
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datasets.config import DatasetConfig, DatasetError
from datasets.formats import read_voc, read_yolo


@dataclass
class ImageRecord:
    path: Path
    image_id: int
    width: int
    height: int
    boxes: np.ndarray  # (N, 4) float32 xyxy, source pixels
    labels: np.ndarray  # (N,) int64 contiguous class index
    crowd: np.ndarray  # (N,) bool; crowd regions are ignored in training and in COCOeval matching


@dataclass(frozen=True)
class Holdout:
    """One side of a fixed-seed train/val split of one annotation file (for sets that ship unsplit): the
    image ids, sorted and shuffled with `seed`, give their first `val_count` to val and the rest to train."""

    val_count: int
    seed: int
    part: str  # "train" | "val"

    def select(self, raw: dict) -> dict:
        ids = sorted(int(im["id"]) for im in raw.get("images", []))
        random.Random(self.seed).shuffle(ids)
        val = set(ids[: self.val_count])
        keep = {i for i in ids if (i in val) == (self.part == "val")}
        return {**raw, "images": [im for im in raw["images"] if im["id"] in keep],
                "annotations": [a for a in raw.get("annotations", []) if a.get("image_id") in keep]}


def read_split(data: DatasetConfig, split: str) -> CocoDetection:
    """The detection split `split` of a dataset config, in its format (a fixed-seed part under random_split)."""
    s = data.detection_split(split)
    holdout = Holdout(s.val_count, s.seed, split) if s.val_count is not None else None
    if s.format == "yolo":
        root, raw = read_yolo(data.path(s.annotations), split)
        return CocoDetection(root, data.path(s.annotations), holdout, raw)
    if s.format == "voc":
        image_set = data.path(s.image_set) if s.image_set else None
        raw = read_voc(data.path(s.images), data.path(s.annotations), image_set)
        return CocoDetection(data.path(s.images), data.path(s.annotations), holdout, raw)
    return CocoDetection(data.path(s.images), data.path(s.annotations), holdout)


class CocoDetection:
    """Reads instances_*.json. Category ids are mapped to contiguous indices in ascending id order.

    Broken input is refused when the file is opened, in one line naming the file and the image or annotation
    id: duplicate image or annotation ids, a file_name outside the images folder, a missing image file, an
    annotation of an unknown image or category, a bbox that is not 4 finite numbers. Fixable boxes are fixed and
    counted, the counts printed once: boxes reaching outside their image are clipped to it, empty ones dropped.
    """

    def __init__(self, images_dir: str | Path, ann_file: str | Path, holdout: Holdout | None = None,
                 raw: dict | None = None):
        """`raw`: the COCO dict another format's reader made of `ann_file` (datasets.formats)."""
        self.images_dir = Path(images_dir)
        self.ann_file = Path(ann_file)
        self.raw = _load_json(self.ann_file) if raw is None else raw
        if holdout is not None:
            total = len(self.raw.get("images", []))
            self.raw = holdout.select(self.raw)
            if not self.raw["images"]:
                raise DatasetError(f"{self.ann_file}: random_split val_count {holdout.val_count} leaves no "
                                   f"{holdout.part} images of its {total}; choose a val_count between 1 and "
                                   f"{total - 1}")
        cats = sorted(self.raw["categories"], key=lambda c: c["id"])
        self.category_ids = [int(c["id"]) for c in cats]  # contiguous index -> COCO category id
        self.class_names = [str(c["name"]) for c in cats]
        self.fixed = {"clipped": 0, "dropped_empty": 0}  # boxes fixed on reading, printed once
        images = self._images()
        per_image: dict[int, list[dict]] = {}
        ann_images: dict = {}  # annotation id -> its image id: ids must be unique (COCOeval keys on them)
        for a in self.raw["annotations"]:
            if a.get("id") is not None and a["id"] in ann_images:
                raise DatasetError(f"{self.ann_file}: annotation id {a['id']} appears twice (images "
                                   f"{ann_images[a['id']]} and {a['image_id']}); give every annotation its own id")
            ann_images[a.get("id")] = a["image_id"]
            if a["image_id"] not in images:
                raise DatasetError(f"{self.ann_file}: annotation {a.get('id')} refers to image_id {a['image_id']}, "
                                   "which is not in `images`; fix the JSON")
            per_image.setdefault(a["image_id"], []).append(a)
        cat_index = {cid: i for i, cid in enumerate(self.category_ids)}
        self.records = [self._record(im, per_image.get(im["id"], []), cat_index)
                        for _, im in sorted(images.items())]
        if any(self.fixed.values()):
            print(f"{self.ann_file}: clipped {self.fixed['clipped']} box(es) to their image, dropped "
                  f"{self.fixed['dropped_empty']} empty box(es) (zero or negative width or height)",
                  file=sys.stderr, flush=True)

    def _images(self) -> dict[int, dict]:
        """image id -> entry; ids unique, files inside the images folder and present."""
        images: dict[int, dict] = {}
        missing = []
        for im in self.raw["images"]:
            if im["id"] in images:
                first = images[im["id"]]["file_name"]
                raise DatasetError(f"{self.ann_file}: image id {im['id']} appears twice ({first}, {im['file_name']}); "
                                   "give every image its own id")
            name = Path(str(im["file_name"]))
            if name.is_absolute() or ".." in name.parts:
                raise DatasetError(f"{self.ann_file}: image {im['id']} file_name {str(name)!r} points outside "
                                   f"{self.images_dir}; use a path relative to the images folder")
            if not (self.images_dir / name).is_file():
                missing.append(str(name))
            images[im["id"]] = im
        if missing:
            raise DatasetError(f"{self.images_dir}: {len(missing)} image file(s) of {self.ann_file.name} not found "
                               f"(e.g. {missing[0]}); check `images:` in the dataset config or the JSON")
        return images

    def _record(self, im: dict, anns: list[dict], cat_index: dict[int, int]) -> ImageRecord:
        W, H = float(im["width"]), float(im["height"])
        boxes, labels, crowd = [], [], []
        for a in anns:
            if a["category_id"] not in cat_index:
                raise DatasetError(f"{self.ann_file}: annotation {a.get('id')} has category_id {a['category_id']} "
                                   "missing from `categories`; fix the JSON")
            x, y, w, h = self._bbox(a)
            if w <= 0 or h <= 0:
                self.fixed["dropped_empty"] += 1  # COCOeval ignores them too
                continue
            box = [min(max(x, 0.0), W), min(max(y, 0.0), H), min(max(x + w, 0.0), W), min(max(y + h, 0.0), H)]
            if box != [x, y, x + w, y + h]:
                self.fixed["clipped"] += 1
                if box[2] <= box[0] or box[3] <= box[1]:  # entirely outside the image
                    self.fixed["dropped_empty"] += 1
                    continue
            boxes.append(box)
            labels.append(cat_index[a["category_id"]])
            crowd.append(bool(a.get("iscrowd", 0)))
        return ImageRecord(path=self.images_dir / im["file_name"], image_id=int(im["id"]), width=int(W),
                           height=int(H), boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                           labels=np.asarray(labels, dtype=np.int64), crowd=np.asarray(crowd, dtype=bool))

    def _bbox(self, a: dict) -> tuple[float, float, float, float]:
        b = a["bbox"]
        ok = isinstance(b, list) and len(b) == 4 and all(isinstance(v, int | float) and not isinstance(v, bool)
                                                          for v in b)
        if not ok or not all(math.isfinite(v) for v in b):
            raise DatasetError(f"{self.ann_file}: annotation {a.get('id')} of image {a['image_id']} has bbox {b!r}; "
                               "a COCO bbox is 4 finite numbers [x, y, width, height]")
        return tuple(float(v) for v in b)

    def __len__(self) -> int:
        return len(self.records)


def _load_json(path: Path) -> dict:
    try:
        with open(path) as f:
            raw = json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"{path}: annotation file not found; check the dataset config") from None
    except json.JSONDecodeError as e:
        raise DatasetError(
            f"{path}: malformed COCO JSON (line {e.lineno}, column {e.colno}: {e.msg}); fix or re-export it"
        ) from None
    if not isinstance(raw, dict):
        raise DatasetError(f"{path}: a COCO file is a JSON object with images/annotations/categories")
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(raw.get(k), list)]
    if missing:
        raise DatasetError(f"{path}: not COCO detection JSON, missing list(s) {missing}")
    for key, need in (("images", ("id", "file_name", "width", "height")), ("annotations", ("image_id", "bbox"))):
        for item in raw[key]:
            lack = [k for k in need if k not in item]
            if lack:
                raise DatasetError(f"{path}: an entry of `{key}` lacks {lack} ({str(item)[:60]}); fix the JSON")
    return raw
