"""Generated aerial power lines in the power-line sets' layout (images/ + 0/255 masks/), read in place."""

import json

import numpy as np
import pytest
import yaml

from datasets.wires import make_wire_scene


def wires_config(tmp_path, count: int = 10, hw=(64, 96)):
    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump({
        "name": "wires-tiny", "root": str(tmp_path / "wires"),
        "synthetic": {"scene": "wires", "seed": 0, "image_size": list(hw), "count": count},
        "segmentation": {"classes": ["background", "wire"], "thin_classes": ["wire"], "match_tolerance": "bsds",
                         "mask_values": {0: 0, 255: 1},
                         "random_split": {"images": "images", "masks": "masks", "val_count": 3, "seed": 0}}}))
    return data


def test_labels_are_one_pixel_centrelines_and_the_scene_is_reproducible():
    import cv2

    img, mask = make_wire_scene(0, 5, (128, 192))
    assert img.shape == (128, 192, 3) and set(np.unique(mask)) <= {0, 255} and (mask > 0).mean() > 0.005
    # 1 px wide: no 2x2 block of a single conductor is all wire (crossings of two spans aside, rare here)
    full = cv2.erode((mask > 0).astype(np.uint8), np.ones((2, 2), np.uint8))
    assert full.sum() < 0.02 * (mask > 0).sum()
    again, mask2 = make_wire_scene(0, 5, (128, 192))
    assert np.array_equal(img, again) and np.array_equal(mask, mask2)


def test_the_generated_layout_reads_as_a_segmentation_set_scored_at_the_bsds_tolerance(tmp_path):
    from datasets.config import load_dataset_config
    from datasets.metrics import EvalSet
    from datasets.synthetic import prepare_dataset
    from datasets.thin_metrics import tolerance_px

    data = wires_config(tmp_path)
    prepare_dataset(data)
    assert len(list((tmp_path / "wires" / "images").glob("*.jpg"))) == 10
    assert json.loads((tmp_path / "wires" / "generated.json").read_text())["scene"] == "wires"
    cfg = load_dataset_config(data)
    ev = EvalSet("segmenter", cfg, "val")
    assert len(ev) == 3 and ev.seg.thin_classes == ["wire"]
    assert set(np.unique(np.concatenate([t.ravel() for t in ev.truths]))) == {0, 1}
    assert tolerance_px(cfg.segmentation.match_tolerance, (64, 96)) == pytest.approx(0.0075 * np.hypot(64, 96))
