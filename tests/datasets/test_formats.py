"""YOLO txt and Pascal VOC XML sets read as they are: the same records the COCO reader gives, background images,
`difficult` boxes as crowd, boxes at the border, one-line errors, and one training epoch from each by config path."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from datasets.coco import read_split
from datasets.config import DatasetError, load_dataset_config
from datasets.formats import read_voc
from tests.conftest import REPO

SPLITS = ("train", "val")


def coco_of(tiny_data: Path, split: str) -> tuple[Path, dict]:
    root = tiny_data.parent / "data"
    return root / "images" / split, json.loads((root / "annotations" / f"instances_{split}.json").read_text())


def write_yolo(tiny_data: Path, out: Path) -> Path:
    """The tiny set in Ultralytics' layout, plus one image without a label file (a background image)."""
    names = None
    for split in SPLITS:
        images, raw = coco_of(tiny_data, split)
        names = [c["name"] for c in sorted(raw["categories"], key=lambda c: c["id"])]
        index = {c["id"]: i for i, c in enumerate(sorted(raw["categories"], key=lambda c: c["id"]))}
        (out / "images" / split).mkdir(parents=True)
        (out / "labels" / split).mkdir(parents=True)
        for im in raw["images"]:
            shutil.copy(images / im["file_name"], out / "images" / split / im["file_name"])
            lines = []
            for a in (a for a in raw["annotations"] if a["image_id"] == im["id"]):
                x, y, w, h = a["bbox"]
                W, H = im["width"], im["height"]
                cx, cy = (x + w / 2) / W, (y + h / 2) / H
                lines.append(f"{index[a['category_id']]} {cx:.6f} {cy:.6f} {w / W:.6f} {h / H:.6f}")
            (out / "labels" / split / Path(im["file_name"]).with_suffix(".txt")).write_text("\n".join(lines))
    cv2.imwrite(str(out / "images" / "train" / "zz_background.jpg"), np.full((240, 320, 3), 90, np.uint8))
    (out / "data.yaml").write_text(yaml.safe_dump({"path": ".", "train": "images/train", "val": "images/val",
                                                    "names": dict(enumerate(names))}))
    return out / "data.yaml"


def write_voc(tiny_data: Path, out: Path) -> None:
    """The tiny set as VOC XML, with ImageSets lists, a difficult box and a box touching the border."""
    (out / "JPEGImages").mkdir(parents=True)
    (out / "Annotations").mkdir()
    (out / "ImageSets" / "Main").mkdir(parents=True)
    for split in SPLITS:
        images, raw = coco_of(tiny_data, split)
        cats = {c["id"]: c["name"] for c in raw["categories"]}
        ids = []
        for k, im in enumerate(raw["images"]):
            name = f"{split}_{im['file_name']}"  # one JPEGImages folder for all splits, as in VOC
            shutil.copy(images / im["file_name"], out / "JPEGImages" / name)
            objs = []
            for a in (a for a in raw["annotations"] if a["image_id"] == im["id"]):
                x, y, w, h = a["bbox"]
                objs.append((cats[a["category_id"]], x + 1, y + 1, x + w, y + h, 0))
            if split == "train" and k == 0:
                objs += [(cats[1], 1, 1, 40, 30, 1), (cats[1], 280, 200, im["width"], im["height"], 0)]
            xml = "".join(f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{x0}</xmin>"
                          f"<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
                          for n, x0, y0, x1, y1, d in objs)
            (out / "Annotations" / f"{Path(name).stem}.xml").write_text(
                f"<annotation><filename>{name}</filename><size><width>{im['width']}</width>"
                f"<height>{im['height']}</height><depth>3</depth></size>{xml}</annotation>")
            ids.append(Path(name).stem)
        (out / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")


def dataset_config(path: Path, root: Path, fmt: str) -> Path:
    if fmt == "yolo":
        det = {s: {"format": "yolo", "annotations": "data.yaml"} for s in SPLITS}
    else:
        det = {s: {"format": "voc", "images": "JPEGImages", "annotations": "Annotations",
                   "image_set": f"ImageSets/Main/{s}.txt"} for s in SPLITS}
    path.write_text(yaml.safe_dump({"name": fmt, "root": str(root), "detection": det}))
    return path


@pytest.fixture(scope="module")
def formats(tiny_data, tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("formats")
    write_yolo(tiny_data, base / "yolo")
    write_voc(tiny_data, base / "voc")
    return {f: dataset_config(base / f"{f}.yaml", base / f, f) for f in ("yolo", "voc")}


def test_yolo_reads_the_same_boxes_as_coco_and_a_missing_label_file_is_background(formats, tiny_data):
    coco = read_split(load_dataset_config(tiny_data), "train")
    yolo = read_split(load_dataset_config(formats["yolo"]), "train")
    assert yolo.class_names == coco.class_names and len(yolo) == len(coco) + 1
    by_name = {r.path.name: r for r in yolo.records}
    for r in coco.records:
        got = by_name[r.path.name]
        assert np.array_equal(got.labels, r.labels) and np.abs(got.boxes - r.boxes).max() < 0.01
    assert len(by_name["zz_background.jpg"].boxes) == 0


def test_voc_difficult_is_crowd_and_a_border_box_is_kept(formats, tiny_data):
    coco = read_split(load_dataset_config(tiny_data), "val")
    voc = read_split(load_dataset_config(formats["voc"]), "val")
    assert voc.class_names == sorted(coco.class_names) and len(voc) == len(coco)
    train = read_split(load_dataset_config(formats["voc"]), "train")
    first = train.records[0]
    assert first.crowd.sum() == 1 and first.boxes[first.crowd][0].tolist() == [0, 0, 40, 30]
    assert [first.width, first.height] in first.boxes[~first.crowd][:, 2:].tolist()  # touching the border


def test_broken_yolo_and_voc_input_is_one_line_naming_the_file(formats, tmp_path):
    yolo_root = Path(load_dataset_config(formats["yolo"]).root)
    label = next((yolo_root / "labels" / "val").glob("*.txt"))
    good = label.read_text()
    try:
        label.write_text("0 0.5 0.5 0.2\n")
        with pytest.raises(DatasetError, match=rf"{label.name}:1: 4 numbers"):
            read_split(load_dataset_config(formats["yolo"]), "val")
        label.write_text("7 0.5 0.5 0.2 0.2\n")
        with pytest.raises(DatasetError, match="class 7 is not an index"):
            read_split(load_dataset_config(formats["yolo"]), "val")
    finally:
        label.write_text(good)
    with pytest.raises(DatasetError, match="detection format 'darknet'"):
        cfg = tmp_path / "bad.yaml"
        cfg.write_text(yaml.safe_dump({"name": "x", "root": ".", "detection": {
            "train": {"format": "darknet", "annotations": "data.yaml"}}}))
        load_dataset_config(cfg)


@pytest.mark.parametrize("fmt", ["yolo", "voc"])
def test_train_one_epoch_from_a_yolo_or_voc_set_by_config_path(formats, tmp_path, fmt):
    exp = tmp_path / "exp.yaml"
    exp.write_text(f"name: {fmt}\ndata: {formats[fmt]}\ndetector: {{input_size: [96, 128], "
                   "model: {channels: 16, head_convs: 1}, train: {epochs: 1, batch_size: 4, warmup_iters: 1}}\n")
    r = subprocess.run([sys.executable, "-m", "train", "--config", str(exp), "--out", str(tmp_path / "run")],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-800:]
    assert (tmp_path / "run" / "detector" / "best.pt").is_file()


@pytest.mark.parametrize("line", ["nan 0.5 0.5 0.2 0.2", "inf 0.5 0.5 0.2 0.2", "0 0.5 nan 0.2 0.2"])
def test_a_non_finite_yolo_number_is_refused_at_its_label_line(formats, line):
    label = next((Path(load_dataset_config(formats["yolo"]).root) / "labels" / "val").glob("*.txt"))
    good = label.read_text()
    try:
        label.write_text("0 0.5 0.5 0.2 0.2\n" + line + "\n")
        with pytest.raises(DatasetError, match=rf"{label.name}:2: .* non-finite number") as e:
            read_split(load_dataset_config(formats["yolo"]), "val")
        assert str(label) in str(e.value) and "\n" not in str(e.value)
    finally:
        label.write_text(good)


@pytest.mark.parametrize("size, obj, words", [
    ("<width>abc</width><height>50</height>", "<name>car</name>", "<size> width 'abc' height '50'"),
    ("<width>100</width><height>50</height>", "", "object 1 has no <name>"),
    ("<width>100</width><height>50</height>", "<name>car</name>", "object 1 ('car') has bndbox xmin 30"),
])
def test_broken_voc_xml_is_refused_naming_the_xml_file(tmp_path, size, obj, words):
    (tmp_path / "JPEGImages").mkdir()
    (tmp_path / "Annotations").mkdir()
    cv2.imwrite(str(tmp_path / "JPEGImages" / "x.jpg"), np.zeros((50, 100, 3), np.uint8))
    box = "<xmin>30</xmin><ymin>5</ymin><xmax>10</xmax><ymax>20</ymax>" if "xmin 30" in words else \
        "<xmin>1</xmin><ymin>1</ymin><xmax>10</xmax><ymax>20</ymax>"
    xml = tmp_path / "Annotations" / "x.xml"
    xml.write_text(f"<annotation><filename>x.jpg</filename><size>{size}</size>"
                   f"<object>{obj}<bndbox>{box}</bndbox></object></annotation>")
    with pytest.raises(DatasetError) as e:
        read_voc(tmp_path / "JPEGImages", tmp_path / "Annotations", None)
    assert str(e.value).startswith(f"{xml}: ") and words in str(e.value) and "\n" not in str(e.value)
