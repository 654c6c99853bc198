"""COCO detection JSON reader that works on any dataset in that format (crowd regions, unlabeled images)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datasets.config import DatasetError


@dataclass
class ImageRecord:
    path: Path
    image_id: int
    width: int
    height: int
    boxes: np.ndarray  # (N, 4) float32 xyxy, source pixels
    labels: np.ndarray  # (N,) int64 contiguous class index
    crowd: np.ndarray  # (N,) bool; crowd regions are ignored in training and in COCOeval matching


class CocoDetection:
    """Reads instances_*.json. Category ids are mapped to contiguous indices in ascending id order."""

    def __init__(self, images_dir: str | Path, ann_file: str | Path):
        self.images_dir = Path(images_dir)
        self.ann_file = Path(ann_file)
        self.raw = _load_json(self.ann_file)
        cats = sorted(self.raw["categories"], key=lambda c: c["id"])
        self.category_ids = [int(c["id"]) for c in cats]  # contiguous index -> COCO category id
        self.class_names = [str(c["name"]) for c in cats]
        cat_index = {cid: i for i, cid in enumerate(self.category_ids)}

        per_image: dict[int, list[dict]] = {}
        for a in self.raw["annotations"]:
            per_image.setdefault(a["image_id"], []).append(a)
        self.records: list[ImageRecord] = []
        for im in sorted(self.raw["images"], key=lambda im: im["id"]):
            boxes, labels, crowd = [], [], []
            for a in per_image.get(im["id"], []):
                x, y, w, h = (float(v) for v in a["bbox"])
                if w <= 0 or h <= 0:
                    continue  # degenerate boxes occur in real sets; COCOeval ignores them too
                if a["category_id"] not in cat_index:
                    raise DatasetError(
                        f"{self.ann_file}: annotation {a.get('id')} has category_id {a['category_id']} "
                        "missing from `categories`; fix the JSON"
                    )
                boxes.append([x, y, x + w, y + h])
                labels.append(cat_index[a["category_id"]])
                crowd.append(bool(a.get("iscrowd", 0)))
            self.records.append(
                ImageRecord(
                    path=self.images_dir / im["file_name"],
                    image_id=int(im["id"]),
                    width=int(im["width"]),
                    height=int(im["height"]),
                    boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                    labels=np.asarray(labels, dtype=np.int64),
                    crowd=np.asarray(crowd, dtype=bool),
                )
            )

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
