"""Ultralytics YOLO txt and Pascal VOC XML detection sets, read as they are into the COCO dict the COCO reader
validates (clip, refuse, count), so everything downstream sees one record type and pycocotools scores it.

YOLO: an Ultralytics data.yaml (`path`, `train` / `val` as a folder, a list of folders or a .txt list of
images, `names` as a list or {index: name}); each image's labels in the parallel `labels/` folder (the last
`images` path component replaced, suffix .txt), one `class cx cy w h` line per box, normalised; a polygon
line (more than 4 coordinates) gives its bounding box; an empty or missing label file is a background image.
VOC: `Annotations/*.xml` beside `JPEGImages/`; `difficult` objects become COCO crowd regions (ignored in
training and matching, as VOC's own evaluation ignores them); pixel indices are VOC's 1-based ones.
"""

from __future__ import annotations

import json
import math
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np

from datasets.config import DatasetError, read_yaml

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def image_size(path: Path) -> tuple[int, int]:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DatasetError(f"{path}: unreadable image; remove it or replace it with a readable file")
    return img.shape[1], img.shape[0]


def coco_dict(images: list[tuple[Path, int, int]], boxes: list[list[tuple]], names: list[str], root: Path) -> dict:
    """{images, annotations, categories} with ids from 1; boxes per image as (class, x, y, w, h, crowd)."""
    out = {"images": [], "annotations": [], "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)]}
    for image_id, ((path, w, h), anns) in enumerate(zip(images, boxes, strict=True), start=1):
        out["images"].append({"id": image_id, "file_name": os.path.relpath(path, root), "width": w, "height": h})
        for c, x, y, bw, bh, crowd in anns:
            out["annotations"].append({"id": len(out["annotations"]) + 1, "image_id": image_id, "category_id": c + 1,
                                       "bbox": [x, y, bw, bh], "iscrowd": int(crowd), "area": bw * bh})
    return out


def yolo_names(raw: dict, source: Path) -> list[str]:
    names = raw.get("names")
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names)]
    if not isinstance(names, list) or not names:
        raise DatasetError(f"{source}: `names` must list the class names (a list or {{index: name}})")
    return [str(n) for n in names]


def yolo_images(raw: dict, split: str, source: Path) -> tuple[Path, list[Path]]:
    """(dataset root, the split's image files) as Ultralytics resolves them."""
    root = Path(raw.get("path") or ".")
    root = root if root.is_absolute() else (source.parent / root)
    if split not in raw:
        has = sorted(k for k in raw if k in ("train", "val", "test"))
        raise DatasetError(f"{source}: no `{split}:` entry (has {has}); add the split's images")
    entries = raw[split] if isinstance(raw[split], list) else [raw[split]]
    files: list[Path] = []
    for e in entries:
        p = root / str(e)
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.suffix == ".txt" and p.is_file():
            files += [(root / line.strip()).resolve() for line in p.read_text().splitlines() if line.strip()]
        else:
            raise DatasetError(f"{source}: `{split}: {e}` is neither a folder nor a .txt list under {root}")
    if not files:
        raise DatasetError(f"{source}: `{split}` has no images under {root}")
    return root, files


def yolo_label_path(image: Path) -> Path:
    parts = list(image.parts)
    if "images" not in parts:
        return image.with_suffix(".txt")
    i = len(parts) - 1 - parts[::-1].index("images")
    return Path(*parts[:i], "labels", *parts[i + 1 :]).with_suffix(".txt")


def yolo_boxes(label: Path, w: int, h: int, n_classes: int) -> list[tuple]:
    boxes = []
    lines = label.read_text().splitlines() if label.is_file() else []
    for k, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            vals = [float(v) for v in line.split()]
        except ValueError:
            raise DatasetError(f"{label}:{k}: {line.strip()!r} is not `class cx cy w h` numbers") from None
        if not all(math.isfinite(v) for v in vals):  # float() takes nan and inf
            raise DatasetError(f"{label}:{k}: {line.strip()!r} has a non-finite number; a YOLO line is `class cx "
                               "cy w h` (normalised)")
        c = int(vals[0])
        if c != vals[0] or not 0 <= c < n_classes:
            raise DatasetError(f"{label}:{k}: class {vals[0]:g} is not an index into the {n_classes} names")
        if len(vals) == 5:
            cx, cy, bw, bh = vals[1:]
            x0, y0, x1, y1 = cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2
        elif len(vals) >= 7 and len(vals) % 2 == 1:  # a segment: its bounding box
            xs, ys = vals[1::2], vals[2::2]
            x0, y0, x1, y1 = min(xs), min(ys), max(xs), max(ys)
        else:
            raise DatasetError(f"{label}:{k}: {len(vals)} numbers; a YOLO line is `class cx cy w h` (normalised)")
        boxes.append((c, x0 * w, y0 * h, (x1 - x0) * w, (y1 - y0) * h, False))
    return boxes


def read_data_yaml(data_yaml: Path) -> dict:
    raw = read_yaml(data_yaml, DatasetError, "YOLO data.yaml")
    if not isinstance(raw, dict):
        raise DatasetError(f"{data_yaml}: a YOLO data.yaml is a mapping with path, train, val and names")
    return raw


def yolo_files(data_yaml: Path, split: str) -> list[Path]:
    """The image files of one split of an Ultralytics data.yaml, without opening them."""
    return yolo_images(read_data_yaml(data_yaml), split, data_yaml)[1]


def read_yolo(data_yaml: Path, split: str) -> tuple[Path, dict]:
    """(images root, COCO dict) of one split of an Ultralytics data.yaml."""
    raw = read_data_yaml(data_yaml)
    names = yolo_names(raw, data_yaml)
    _, files = yolo_images(raw, split, data_yaml)
    root = Path(os.path.commonpath([f.parent for f in files]))
    images, boxes = [], []
    for f in files:
        w, h = image_size(f)
        images.append((f, w, h))
        boxes.append(yolo_boxes(yolo_label_path(f), w, h, len(names)))
    return root, coco_dict(images, boxes, names, root)


def write_yolo(splits: dict, root: Path) -> Path:
    """Splits read by datasets.coco.read_split ({name: CocoDetection}) in Ultralytics' layout under root:
    images/<split>/ symlinked, labels/<split>/*.txt with normalised `class cx cy w h` (crowd regions left out,
    boxes clipped to the image, an empty file for a background image) -> its data.yaml."""
    names = None
    for split, coco in splits.items():
        names = coco.class_names
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for rec in coco.records:
            link = root / "images" / split / rec.path.name
            link.symlink_to(rec.path.resolve())
            w, h = rec.width, rec.height
            b = rec.boxes[~rec.crowd].clip(0, [w, h, w, h])
            ok = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
            b, cls = b[ok], rec.labels[~rec.crowd][ok]
            xywh = np.stack([(b[:, 0] + b[:, 2]) / 2 / w, (b[:, 1] + b[:, 3]) / 2 / h, (b[:, 2] - b[:, 0]) / w,
                             (b[:, 3] - b[:, 1]) / h], 1)
            lines = [f"{c} " + " ".join(f"{v:.6f}" for v in row) for c, row in zip(cls, xywh, strict=True)]
            (root / "labels" / split / f"{link.stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    yaml_path = root / "data.yaml"
    yaml_path.write_text(json.dumps({"path": str(root), **{k: f"images/{k}" for k in splits},
                                     "names": dict(enumerate(names))}))  # JSON is YAML
    return yaml_path


def voc_object(obj: ET.Element, xml: Path, k: int) -> tuple[str, float, float, float, float, bool]:
    """The `k`-th <object> (from 1) of `xml` as (name, x, y, w, h, difficult); broken ones refused naming both."""
    name, box = (obj.findtext("name") or "").strip(), obj.find("bndbox")
    if not name:
        raise DatasetError(f"{xml}: object {k} has no <name>; give it its class name")
    try:
        x0, y0, x1, y1 = (float(box.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax"))
    except (AttributeError, TypeError, ValueError):
        raise DatasetError(f"{xml}: object {k} ({name!r}) lacks a numeric bndbox xmin/ymin/xmax/ymax") from None
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)) or x1 < x0 or y1 < y0:
        raise DatasetError(f"{xml}: object {k} ({name!r}) has bndbox xmin {x0:g} ymin {y0:g} xmax {x1:g} ymax "
                           f"{y1:g}; a box needs finite xmin <= xmax and ymin <= ymax")
    return name, x0 - 1, y0 - 1, x1 - x0 + 1, y1 - y0 + 1, obj.findtext("difficult", "0").strip() == "1"


def voc_size(root: ET.Element, xml: Path, img: Path) -> tuple[int, int]:
    """(width, height) from <size>, else from the image file."""
    size = root.find("size")
    if size is None or not size.findtext("width"):
        return image_size(img)
    w, h = size.findtext("width"), size.findtext("height")
    try:
        wh = int(float(w)), int(float(h or ""))
    except ValueError:
        wh = (0, 0)
    if min(wh) <= 0:
        raise DatasetError(f"{xml}: <size> width {w!r} height {h!r} are not positive numbers; fix them or remove "
                           "<size> (the image's own size is then read)")
    return wh


def read_voc(images_dir: Path, annotations_dir: Path, image_set: Path | None) -> dict:
    """COCO dict of the images a VOC ImageSets list names (all of Annotations/ without one)."""
    if not annotations_dir.is_dir():
        raise DatasetError(f"{annotations_dir}: VOC Annotations folder not found; check the dataset config")
    xmls = sorted(annotations_dir.glob("*.xml"))
    if image_set is not None:
        if not image_set.is_file():
            raise DatasetError(f"{image_set}: VOC image set list not found; check `image_set` in the dataset config")
        ids = [line.split()[0] for line in image_set.read_text().splitlines() if line.strip()]
        xmls = [annotations_dir / f"{i}.xml" for i in ids]
    parsed = []
    for xml in xmls:
        try:
            root = ET.parse(xml).getroot()
        except (OSError, ET.ParseError) as e:
            raise DatasetError(f"{xml}: not a readable VOC annotation ({e}); fix or remove it") from None
        img = images_dir / (root.findtext("filename") or f"{xml.stem}.jpg")
        objs = [voc_object(o, xml, k) for k, o in enumerate(root.iter("object"), start=1)]
        parsed.append((img, *voc_size(root, xml, img), objs))
    names = sorted({o[0] for *_, objs in parsed for o in objs} | set(voc_class_names(annotations_dir)))
    index = {n: i for i, n in enumerate(names)}
    boxes = [[(index[o[0]], *o[1:]) for o in objs] for *_, objs in parsed]
    return coco_dict([(p, w, h) for p, w, h, _ in parsed], boxes, names, images_dir)


def voc_class_names(annotations_dir: Path) -> list[str]:
    """Every class named in the folder, so train and val map names to the same indices."""
    names = set()
    for xml in annotations_dir.glob("*.xml"):
        try:
            names |= {n for o in ET.parse(xml).getroot().iter("object") if (n := (o.findtext("name") or "").strip())}
        except (OSError, ET.ParseError):
            continue  # reported when that file is read as part of a split
    return sorted(names)
