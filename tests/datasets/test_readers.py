import json
import subprocess
import sys

import numpy as np
import pytest

from datasets.coco import CocoDetection
from datasets.config import DatasetError, load_dataset_config
from datasets.masks import read_mask, value_lut
from tests.conftest import REPO, SHARED

needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is not present")


@needs_shared
def test_coco128_loads_unchanged_with_crowd_and_unlabeled_images():
    cfg = load_dataset_config(REPO / "configs/data/coco128.yaml")
    s = cfg.detection_split("train")
    coco = CocoDetection(cfg.path(s.images), cfg.path(s.annotations))
    assert len(coco) == 128
    assert len(coco.class_names) == 80 and coco.category_ids[:3] == [1, 2, 3]
    assert sum(int(r.crowd.sum()) for r in coco.records) == 10
    assert any(len(r.boxes) == 0 for r in coco.records)  # images without labels are kept
    assert all(r.path.is_file() for r in coco.records)


@needs_shared
def test_crackforest_binary_masks_map_to_classes_with_fixed_split():
    cfg = load_dataset_config(REPO / "configs/data/crackforest.yaml")
    train, val = cfg.segmentation_pairs("train"), cfg.segmentation_pairs("val")
    assert (len(train), len(val)) == (94, 24)
    assert not {a for a, _ in train} & {a for a, _ in val}
    assert val == cfg.segmentation_pairs("val")  # fixed seed: same split every time
    m = read_mask(train[0][1], value_lut(cfg.segmentation))
    assert set(np.unique(m)) <= {0, 1} and m.max() == 1


def test_a_match_tolerance_typo_is_refused_at_load_naming_the_file(tmp_path):
    import yaml

    cfg = tmp_path / "cracks.yaml"
    seg = {"classes": ["background", "crack"], "thin_classes": ["crack"], "match_tolerance": "bsd"}
    cfg.write_text(yaml.safe_dump({"name": "c", "root": str(tmp_path), "segmentation": seg}))
    with pytest.raises(DatasetError, match=r"cracks.yaml: segmentation.match_tolerance 'bsd'.*'bsds'"):
        load_dataset_config(cfg)
    seg["match_tolerance"] = "bsds"
    cfg.write_text(yaml.safe_dump({"name": "c", "root": str(tmp_path), "segmentation": seg}))
    assert load_dataset_config(cfg).segmentation.match_tolerance == "bsds"


def test_malformed_coco_json_is_one_line_naming_the_file(tmp_path):
    bad = tmp_path / "instances_bad.json"
    bad.write_text('{"images": [], "annotations": [,]}')
    with pytest.raises(DatasetError, match=r"instances_bad.json: malformed COCO JSON \(line 1") as e:
        CocoDetection(tmp_path, bad)
    assert "\n" not in str(e.value)
    bad.write_text(json.dumps({"images": [{"id": 1}], "annotations": [], "categories": []}))
    with pytest.raises(DatasetError, match="lacks"):
        CocoDetection(tmp_path, bad)


def test_train_cli_reports_broken_annotations_without_traceback(tmp_path, tiny_data):
    text = tiny_data.read_text().replace(str(tiny_data.parent / "data"), str(tmp_path))
    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_train.json").write_text("{ not json")
    data = tmp_path / "data.yaml"
    data.write_text(text)
    exp = tmp_path / "exp.yaml"
    exp.write_text(f"name: x\ndata: {data}\ndetector: {{train: {{epochs: 1}}}}\n")
    r = subprocess.run([sys.executable, "-m", "train", "--config", str(exp), "--out", str(tmp_path / "run")],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "instances_train.json: malformed COCO JSON" in r.stderr


def test_corrupt_jpeg_in_training_data_is_one_line(tmp_path, tiny_data):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(tiny_data.parent / "data", root)
    (root / "images" / "train" / "000003.jpg").write_bytes(b"\xff\xd8garbage")
    data = tmp_path / "data.yaml"
    data.write_text(tiny_data.read_text().replace(str(tiny_data.parent / "data"), str(root)))
    exp = tmp_path / "exp.yaml"
    exp.write_text(f"name: x\ndata: {data}\ndetector: {{input_size: [64, 64], train: {{epochs: 1}}}}\n")
    r = subprocess.run([sys.executable, "-m", "train", "--config", str(exp), "--out", str(tmp_path / "run")],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "000003.jpg: cannot decode image" in r.stderr.strip().splitlines()[-1]


@needs_shared
@pytest.mark.parametrize("data,task,size", [("coco128", "detector", [96, 96]), ("crackforest", "segmenter", [64, 96])])
def test_train_accepts_the_real_sample_sets_by_config_path(tmp_path, data, task, size):
    sched = "{epochs: 1, batch_size: 16, warmup_iters: 1}"
    exp = tmp_path / "exp.yaml"
    exp.write_text(f"name: x\ndata: {REPO}/configs/data/{data}.yaml\n"
                   f"{task}: {{input_size: {size}, model: {{channels: 16, head_convs: 1}}, train: {sched}}}\n")
    r = subprocess.run([sys.executable, "-m", "train", "--config", str(exp), "--out", str(tmp_path / "run")],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-500:]
    assert (tmp_path / "run" / task / "best.pt").is_file()


def coco_set(tmp_path, images=None, annotations=None):
    """A two-image COCO file in tmp_path with real (blank) image files."""
    import cv2

    (tmp_path / "img").mkdir(exist_ok=True)
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(tmp_path / "img" / name), np.zeros((50, 100, 3), np.uint8))
    images = images or [{"id": 1, "file_name": "a.png", "width": 100, "height": 50},
                        {"id": 2, "file_name": "b.png", "width": 100, "height": 50}]
    annotations = annotations if annotations is not None else [
        {"id": 10, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20]}]
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "thing"}]}))
    return path


@pytest.mark.parametrize("images, annotations, words", [
    ([{"id": 1, "file_name": "a.png", "width": 100, "height": 50},
      {"id": 1, "file_name": "b.png", "width": 100, "height": 50}], None, "image id 1 appears twice"),
    ([{"id": 1, "file_name": "../secret.png", "width": 100, "height": 50}], [], "points outside"),
    ([{"id": 1, "file_name": "gone.png", "width": 100, "height": 50}], [], "1 image file(s) of instances.json not"),
    (None, [{"id": 11, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3]}], "annotation 11 of image 1 has bbox"),
    (None, [{"id": 12, "image_id": 1, "category_id": 1, "bbox": [1, float("nan"), 3, 4]}], "annotation 12"),
    (None, [{"id": 13, "image_id": 1, "category_id": 1, "bbox": "1 2 3 4"}], "annotation 13"),
    (None, [{"id": 14, "image_id": 7, "category_id": 1, "bbox": [1, 2, 3, 4]}], "refers to image_id 7"),
    (None, [{"id": 15, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4]},
            {"id": 15, "image_id": 2, "category_id": 1, "bbox": [1, 2, 3, 4]}], "annotation id 15 appears twice"),
])
def test_broken_coco_input_is_refused_naming_file_and_id(tmp_path, images, annotations, words):
    path = coco_set(tmp_path, images, annotations)
    with pytest.raises(DatasetError) as e:
        CocoDetection(tmp_path / "img", path)
    assert words in str(e.value) and "instances.json" in str(e.value) and "\n" not in str(e.value)


def test_fixable_boxes_are_clipped_or_dropped_and_counted_once(tmp_path, capsys):
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [-5, 10, 20, 20]},  # left edge outside
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [90, 40, 30, 30]},  # bottom-right outside
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": [10, 10, -4, 5]},  # negative width
            {"id": 4, "image_id": 2, "category_id": 1, "bbox": [200, 10, 5, 5]},  # wholly outside
            {"id": 5, "image_id": 2, "category_id": 1, "bbox": [1, 2, 3, 4]}]
    coco = CocoDetection(tmp_path / "img", coco_set(tmp_path, None, anns))
    a, b = coco.records
    assert a.boxes.tolist() == [[0, 10, 15, 30], [90, 40, 100, 50]] and b.boxes.tolist() == [[1, 2, 4, 6]]
    assert coco.fixed == {"clipped": 3, "dropped_empty": 2}
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "clipped 3 box(es)" in err and "dropped 2 empty box(es)" in err


def test_random_split_holds_out_a_fixed_seed_part_of_one_coco_file(tmp_path, tiny_data):
    import yaml

    from datasets.coco import read_split
    from datasets.config import load_dataset_config
    from datasets.metrics import EvalSet

    src = yaml.safe_load(tiny_data.read_text())
    train = src["detection"]["train"]
    cfg = tmp_path / "split.yaml"
    cfg.write_text(yaml.safe_dump({"name": "s", "root": src["root"], "detection": {
        "random_split": {**train, "val_count": 4, "seed": 3}}}))
    data = load_dataset_config(cfg)
    tr, va = read_split(data, "train"), read_split(data, "val")
    ids_tr, ids_va = {r.image_id for r in tr.records}, {r.image_id for r in va.records}
    assert len(ids_va) == 4 and len(ids_tr) == 12 - 4 and not ids_tr & ids_va
    assert {a["image_id"] for a in va.raw["annotations"]} <= ids_va  # pycocotools scores the val part only
    assert {r.image_id for r in read_split(data, "val").records} == ids_va  # the same part every time
    assert not EvalSet("detector", data, "val").is_train and EvalSet("detector", data, "train").is_train
    cfg.write_text(yaml.safe_dump({"name": "s", "root": src["root"], "detection": {
        "random_split": {**train, "val_count": 12}}}))
    with pytest.raises(DatasetError, match="val_count 12 leaves no train images of its 12"):
        read_split(load_dataset_config(cfg), "train")
