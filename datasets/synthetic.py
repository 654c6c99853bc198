"""Deterministic generator of road/utility scenes: objects with boxes, thin structures with masks.

Each image is drawn from its own seeded RNG (seed, split, index), so any image can be regenerated alone and
the set does not change when other splits grow. Writes standard formats: JPEG images, COCO detection JSON,
class-indexed PNG masks; domain-shifted copies of the test split share its labels.
"""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path

import cv2
import numpy as np

from datasets.config import DatasetError, load_dataset_config, read_yaml

DET_CLASSES = ["car", "pedestrian", "traffic_sign", "cone"]
SEG_CLASSES = ["background", "wire", "lane", "crack"]
SHIFTS = ("lowlight", "fog", "noise_blur", "colorcast")


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(split.encode()), index])


def _background(rng: np.random.Generator, h: int, w: int) -> tuple:
    """-> (float32 BGR image, horizon row, vanishing x, road grey, road (left, right) at the bottom)."""
    horizon = int(h * rng.uniform(0.35, 0.5))
    img = np.empty((h, w, 3), np.float32)
    top, bottom = rng.uniform([150, 90, 40], [255, 200, 140]), rng.uniform([200, 180, 150], [255, 240, 230])
    t = np.linspace(0, 1, horizon)[:, None, None]
    img[:horizon] = top * (1 - t) + bottom * t  # sky gradient (BGR)
    ground = rng.uniform([30, 70, 40], [90, 140, 110])
    img[horizon:] = ground
    vx = w * rng.uniform(0.35, 0.65)  # vanishing point
    road_col = rng.uniform(70, 130)
    left, right = -w * rng.uniform(0.0, 0.3), w * (1 + rng.uniform(0.0, 0.3))
    road = np.array([[vx - 4, horizon], [vx + 4, horizon], [right, h], [left, h]], np.int32)
    cv2.fillPoly(img, [road], (road_col, road_col, road_col + rng.uniform(-8, 8)))
    img += rng.normal(0, 6, (h, w, 1)).astype(np.float32)  # texture
    img.clip(0, 255, out=img)
    return img, horizon, vx, road_col, (left, right)


def _draw_thin(rng, img, mask, h, w, horizon, vx, road_col, road_lr) -> None:
    # wires (class 1): sagging curves across the sky, 1-4 px
    for _ in range(rng.integers(1, 4)):
        y0, y1 = rng.uniform(0.05, 0.9) * horizon, rng.uniform(0.05, 0.9) * horizon
        sag = rng.uniform(3, 25)
        xs = np.linspace(-5, w + 5, 60)
        ys = y0 + (y1 - y0) * xs / w + sag * (1 - ((xs - w / 2) / (w / 2)) ** 2)
        pts = np.stack([xs, ys], 1).round().astype(np.int32)
        t = int(rng.choice([1, 1, 2, 3]))
        col = tuple(float(c) for c in rng.uniform(10, 60, 3))
        cv2.polylines(img, [pts], False, col, t, cv2.LINE_8)
        cv2.polylines(mask, [pts], False, 1, t, cv2.LINE_8)
    # dashed lane markings (class 2), perspective: thin near the horizon, 3-4 px near the camera
    for off in rng.choice([-0.25, 0.0, 0.25], size=rng.integers(1, 3), replace=False):
        x_bottom = w / 2 + off * (road_lr[1] - road_lr[0])
        col = (235, 235, 235) if rng.random() < 0.7 else (40, 200, 230)
        n = 10
        for k in range(n):
            if k % 2:
                continue
            a, b = k / n, (k + 0.6) / n
            p0 = (vx + (x_bottom - vx) * a**1.5, horizon + (h - horizon) * a**1.5)
            p1 = (vx + (x_bottom - vx) * b**1.5, horizon + (h - horizon) * b**1.5)
            t = max(1, int(round(1 + 3 * b)))
            q0, q1 = tuple(int(round(v)) for v in p0), tuple(int(round(v)) for v in p1)
            cv2.line(img, q0, q1, col, t, cv2.LINE_8)
            cv2.line(mask, q0, q1, 2, t, cv2.LINE_8)
    # cracks (class 3): dark random walks on the road surface, 1-2 px
    for _ in range(rng.integers(0, 3)):
        x, y = rng.uniform(0.2, 0.8) * w, rng.uniform(horizon + 0.3 * (h - horizon), h - 5)
        ang = rng.uniform(0, 2 * np.pi)
        pts = [(x, y)]
        for _ in range(rng.integers(15, 40)):
            ang += rng.normal(0, 0.5)
            x, y = x + 2.5 * np.cos(ang), y + 2.5 * np.sin(ang)
            pts.append((x, y))
        pts = np.array(pts).round().astype(np.int32)
        t = int(rng.choice([1, 1, 2]))
        dark = road_col * rng.uniform(0.2, 0.45)
        cv2.polylines(img, [pts], False, (dark, dark, dark), t, cv2.LINE_8)
        cv2.polylines(mask, [pts], False, 3, t, cv2.LINE_8)


def _draw_object(rng, img, occ, cls: int, x0: int, y0: int, bw: int, bh: int) -> None:
    """Draw one object filling the box (x0, y0, bw, bh) onto img and its footprint onto occ."""
    x1, y1 = x0 + bw, y0 + bh
    for canvas, fg in ((img, None), (occ, 1)):
        def c(col, fg=fg):
            return fg if fg is not None else col
        if cls == 0:  # car: body, windows, wheels
            body = tuple(float(v) for v in rng.uniform(20, 230, 3)) if canvas is img else 1
            cv2.rectangle(canvas, (x0, y0 + bh // 3), (x1, y1 - bh // 6), c(body), -1)
            cv2.rectangle(canvas, (x0 + bw // 5, y0), (x1 - bw // 5, y0 + bh // 3), c(body), -1)
            cv2.rectangle(canvas, (x0 + bw // 4, y0 + bh // 10), (x1 - bw // 4, y0 + bh // 3), c((70, 50, 40)), -1)
            r = max(2, bh // 6)
            for cx in (x0 + bw // 4, x1 - bw // 4):
                cv2.circle(canvas, (cx, y1 - r), r, c((20, 20, 20)), -1)
        elif cls == 1:  # pedestrian: head, torso, legs
            shirt = tuple(float(v) for v in rng.uniform(30, 220, 3)) if canvas is img else 1
            r = max(2, bw // 3)
            cv2.circle(canvas, ((x0 + x1) // 2, y0 + r), r, c((90, 120, 170)), -1)
            cv2.rectangle(canvas, (x0, y0 + 2 * r), (x1, y0 + int(bh * 0.6)), c(shirt), -1)
            lw = max(1, bw // 4)
            cv2.rectangle(canvas, (x0 + lw // 2, y0 + int(bh * 0.6)), (x0 + lw // 2 + lw, y1), c((60, 40, 30)), -1)
            cv2.rectangle(canvas, (x1 - lw // 2 - lw, y0 + int(bh * 0.6)), (x1 - lw // 2, y1), c((60, 40, 30)), -1)
        elif cls == 2:  # traffic sign face: red rim, white disc, dark bar
            cx, cy, r = (x0 + x1) // 2, (y0 + y1) // 2, max(3, min(bw, bh) // 2)
            cv2.circle(canvas, (cx, cy), r, c((30, 30, 210)), -1)
            cv2.circle(canvas, (cx, cy), max(1, int(r * 0.7)), c((240, 240, 240)), -1)
            bar = max(1, r // 8)
            cv2.rectangle(canvas, (cx - r // 2, cy - bar), (cx + r // 2, cy + bar), c((20, 20, 20)), -1)
        else:  # cone: orange triangle with a white band
            tri = np.array([[(x0 + x1) // 2, y0], [x1, y1], [x0, y1]], np.int32)
            cv2.fillPoly(canvas, [tri], c((0, 120, 250)))
            yb = y0 + int(bh * 0.45)
            band = np.array([[x0 + bw * 0.28, yb], [x1 - bw * 0.28, yb], [x1 - bw * 0.22, yb + bh * 0.15],
                             [x0 + bw * 0.22, yb + bh * 0.15]]).round().astype(np.int32)
            cv2.fillPoly(canvas, [band], c((245, 245, 245)))


SIZE_RANGE = {0: (28, 110), 1: (22, 80), 2: (14, 44), 3: (12, 40)}  # height range in px at the bottom row
ASPECT = {0: (1.3, 2.0), 1: (0.3, 0.45), 2: (0.9, 1.1), 3: (0.6, 0.8)}  # w / h


def make_scene(seed: int, split: str, index: int, hw: tuple[int, int] = (240, 320)):
    """-> (BGR uint8 image, class mask uint8, boxes (N, 4) xyxy, labels (N,))."""
    rng = _rng(seed, split, index)
    h, w = hw
    img, horizon, vx, road_col, road_lr = _background(rng, h, w)
    mask = np.zeros((h, w), np.uint8)
    _draw_thin(rng, img, mask, h, w, horizon, vx, road_col, road_lr)
    occ = np.zeros((h, w), np.uint8)
    boxes, labels = [], []
    for _ in range(int(rng.integers(1, 7))):
        cls = int(rng.integers(0, len(DET_CLASSES)))
        for _try in range(10):
            y_bottom = rng.uniform(horizon + 0.15 * (h - horizon), h)
            depth = (y_bottom - horizon) / (h - horizon)  # 0 at horizon, 1 at the bottom row
            lo, hi = SIZE_RANGE[cls]
            bh = int(rng.uniform(lo, hi) * (0.35 + 0.65 * depth))
            bw = int(bh * rng.uniform(*ASPECT[cls]))
            if cls == 2:
                y_bottom = rng.uniform(horizon * 0.6, horizon + 0.4 * (h - horizon))  # signs stand up high
            x0, y0 = int(rng.uniform(0, w - bw)), int(y_bottom - bh)
            if bw < 6 or bh < 6 or y0 < 0:
                continue
            cand = np.array([x0, y0, x0 + bw, y0 + bh], np.float32)
            if boxes and _max_iou(cand, np.array(boxes)) > 0.2:
                continue
            _draw_object(rng, img, occ, cls, x0, y0, bw, bh)
            boxes.append(cand)
            labels.append(cls)
            break
    mask[occ > 0] = 0  # objects occlude wires, markings and cracks
    img += rng.normal(0, rng.uniform(1, 5), img.shape).astype(np.float32)  # sensor noise
    img = (img * rng.uniform(0.8, 1.15)).clip(0, 255).astype(np.uint8)
    return img, mask, np.array(boxes, np.float32).reshape(-1, 4), np.array(labels, np.int64)


def _max_iou(box: np.ndarray, others: np.ndarray) -> float:
    lt, rb = np.maximum(box[:2], others[:, :2]), np.minimum(box[2:], others[:, 2:])
    inter = np.prod((rb - lt).clip(0), axis=1)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return float((inter / (area(box) + area(others) - inter)).max())


def apply_shift(img: np.ndarray, shift: str, rng: np.random.Generator) -> np.ndarray:
    """Domain shifts for the shifted test splits (labels unchanged)."""
    f = img.astype(np.float32)
    if shift == "lowlight":
        f = 255 * (f / 255) ** 1.6 * 0.45 + rng.normal(0, 4, f.shape)
    elif shift == "fog":
        depth = np.linspace(0.75, 0.25, f.shape[0], dtype=np.float32)[:, None, None]  # denser far away
        f = f * (1 - depth) + 215 * depth
    elif shift == "noise_blur":
        f = cv2.GaussianBlur(f, (0, 0), 1.2) + rng.normal(0, 12, f.shape)
    elif shift == "colorcast":
        f = f * np.array([0.75, 1.0, 1.3], np.float32)  # BGR gains: warm cast
    else:
        raise ValueError(f"unknown shift {shift!r}; choose from {SHIFTS}")
    return f.clip(0, 255).astype(np.uint8)


def _coco(split_items: list[tuple[str, int, int, np.ndarray, np.ndarray]]) -> dict:
    images, anns = [], []
    for image_id, (name, h, w, boxes, labels) in enumerate(split_items, start=1):
        images.append({"id": image_id, "file_name": name, "width": w, "height": h})
        for b, c in zip(boxes, labels, strict=True):
            x, y = float(b[0]), float(b[1])
            bw, bh = float(b[2] - b[0]), float(b[3] - b[1])
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": int(c) + 1,
                         "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": 0})
    cats = [{"id": i + 1, "name": n, "supercategory": "road"} for i, n in enumerate(DET_CLASSES)]
    return {"images": images, "annotations": anns, "categories": cats}


def generate(root: str | Path, seed: int, splits: dict[str, int], hw=(240, 320), shifts=SHIFTS) -> None:
    """Write the whole set under root; a partial earlier run is replaced, never mixed in."""
    root = Path(root)
    tmp = root.with_name(root.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for split, n in splits.items():
        items = []
        for d in ("images", "masks"):
            (tmp / d / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, mask, boxes, labels = make_scene(seed, split, i, hw)
            name = f"{i:06d}.jpg"
            cv2.imwrite(str(tmp / "images" / split / name), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
            cv2.imwrite(str(tmp / "masks" / split / f"{i:06d}.png"), mask)
            items.append((name, hw[0], hw[1], boxes, labels))
            if split == "test":
                for s in shifts:
                    d = tmp / "images" / f"test_{s}"
                    d.mkdir(parents=True, exist_ok=True)
                    shifted = apply_shift(img, s, _rng(seed, f"shift-{s}", i))
                    cv2.imwrite(str(d / name), shifted, [cv2.IMWRITE_JPEG_QUALITY, 92])
        (tmp / "annotations").mkdir(exist_ok=True)
        coco = _coco(items)
        names = [split] + ([f"test_{s}" for s in shifts] if split == "test" else [])
        for nm in names:
            (tmp / "annotations" / f"instances_{nm}.json").write_text(json.dumps(coco))
            if nm != split:  # shifted splits share the clean masks
                shutil.copytree(tmp / "masks" / split, tmp / "masks" / nm)
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)


def dataset_config_path(config: str | Path) -> Path:
    """The dataset config an experiment config names (`data:`), or `config` itself when it is one."""
    raw = read_yaml(Path(config), DatasetError, "config")
    return Path(raw["data"]) if isinstance(raw, dict) and isinstance(raw.get("data"), str) else Path(config)


def prepare_dataset(config: str | Path, force: bool = False) -> None:
    """Generate the synthetic set `config` names (skipped when up to date); for real data check the root."""
    cfg = load_dataset_config(dataset_config_path(config))
    root = Path(cfg.root)
    if not cfg.synthetic:
        if not root.is_dir():
            raise DatasetError(f"{cfg.source}: root {root} does not exist")
        print(f"dataset {cfg.name}: real data at {root}, nothing to generate")
        return
    settings = {"seed": 0, "image_size": [240, 320], "shifts": list(SHIFTS), **cfg.synthetic}
    stamp = root / "generated.json"
    if not force and stamp.is_file() and json.loads(stamp.read_text()) == settings:
        print(f"dataset {cfg.name}: up to date at {root}")
        return
    if settings.get("scene") == "wires":  # aerial power lines in the layout of the power-line sets
        from datasets.wires import generate_wires  # it builds on this module

        print(f"dataset {cfg.name}: generating {settings['count']} aerial wire scenes at {root} ...", flush=True)
        generate_wires(root, settings["seed"], settings["count"], tuple(settings["image_size"]))
    else:
        print(f"dataset {cfg.name}: generating {settings['splits']} at {root} ...", flush=True)
        generate(root, settings["seed"], settings["splits"], tuple(settings["image_size"]), settings["shifts"])
    stamp.write_text(json.dumps(settings))
