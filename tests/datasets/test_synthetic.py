import json

import cv2
import numpy as np

from datasets.coco import CocoDetection
from datasets.config import load_dataset_config
from datasets.synthetic import DET_CLASSES, SEG_CLASSES, SHIFTS, make_scene


def test_scenes_are_deterministic_per_index():
    a = make_scene(3, "train", 5)
    b = make_scene(3, "train", 5)
    c = make_scene(3, "train", 6)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])


def test_scenes_have_boxes_inside_and_thin_structures_down_to_one_pixel():
    widths, labels = set(), set()
    for i in range(30):
        img, mask, boxes, lab = make_scene(0, "train", i)
        assert img.shape == (240, 320, 3) and mask.shape == (240, 320)
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 320).all() and (boxes[:, 3] <= 240).all()
        labels |= set(lab.tolist())
        for c in (1, 2, 3):
            m = (mask == c).astype(np.uint8)
            if m.any():  # local width: twice the distance to the nearest background pixel
                widths.add(int(cv2.distanceTransform(m, cv2.DIST_L2, 3).max() * 2))
    assert labels == set(range(len(DET_CLASSES)))
    assert min(widths) <= 2 and len(SEG_CLASSES) == 4


def test_generated_set_is_standard_coco_and_png(tiny_data):
    cfg = load_dataset_config(tiny_data)
    for split in ("train", "val", "test", *[f"test_{s}" for s in SHIFTS]):
        s = cfg.detection_split(split)
        coco = CocoDetection(cfg.path(s.images), cfg.path(s.annotations))
        assert len(coco) == {"train": 12, "val": 6}.get(split, 4)
        assert coco.class_names == DET_CLASSES
        assert all(r.path.is_file() for r in coco.records)
        pairs = cfg.segmentation_pairs(split)
        m = cv2.imread(str(pairs[0][1]), cv2.IMREAD_UNCHANGED)
        assert m.dtype == np.uint8 and m.ndim == 2 and m.max() < len(SEG_CLASSES)
    raw = json.loads(cfg.path("annotations/instances_test_fog.json").read_text())
    assert raw == json.loads(cfg.path("annotations/instances_test.json").read_text())
    clean = cv2.imread(str(cfg.path("images/test/000000.jpg")))
    fog = cv2.imread(str(cfg.path("images/test_fog/000000.jpg")))
    assert abs(float(clean.mean()) - float(fog.mean())) > 10
