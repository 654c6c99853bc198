"""Augmentation presets: names, box and mask safety, and 1-2 px structures surviving every transform."""

from __future__ import annotations

import copy

import albumentations as A
import cv2
import numpy as np
import pytest

from datasets.augment import (
    GEOMETRY_PRESETS,
    PRESETS,
    Augment,
    build_augment,
    closing_augment,
    parse_augment,
    preset_transforms,
)
from datasets.synthetic import make_scene

SCENES = [make_scene(0, "train", i) for i in range(6)]  # (BGR image, class mask, boxes, labels)


def leaves(transforms):
    for t in transforms:
        if isinstance(t, A.OneOf | A.SomeOf | A.Sequential):
            yield from leaves(t.transforms)
        else:
            yield t


def thin_pixels(mask: np.ndarray) -> np.ndarray:
    """Pixels of structures at most 2 px wide: foreground away from any 3x3-solid core."""
    fg = (mask > 0).astype(np.uint8)
    core = cv2.dilate(cv2.erode(fg, np.ones((3, 3), np.uint8)), np.ones((3, 3), np.uint8))
    return (fg > 0) & (core == 0)


def contrast(img: np.ndarray, sel: np.ndarray) -> float:
    """Mean |grey - local background| on the selected pixels (a 15 px median is the background)."""
    g = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    return float(np.abs(g.astype(np.float32) - cv2.medianBlur(g, 15))[sel].mean())


def test_names_combine_and_shift_expands():
    assert parse_augment("none") == []
    assert parse_augment("flip+camera") == ["flip", "camera"]
    assert parse_augment("shift") == ["camera", "lighting", "weather", "season"]
    with pytest.raises(ValueError, match="unknown augment preset 'rain'"):
        parse_augment("flip+rain")
    assert build_augment("none", "segmenter") is None


def test_a_config_with_an_unknown_preset_is_refused(tmp_path, tiny_data):
    from train.config import ConfigError, load_config

    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"name: bad\ndata: {tiny_data}\nsegmenter:\n  train: {{augment: flip+sunshine}}\n")
    with pytest.raises(ConfigError, match="sunshine"):
        load_config(cfg)


def test_shift_p_and_the_closing_epochs_drop_the_presets_and_the_optimizer_moments(tmp_path, tiny_data, capsys,
                                                                                   monkeypatch):
    import train.loop
    from train.config import ConfigError, load_config
    from train.loop import fit

    built, real = [], train.loop.build_augment
    monkeypatch.setattr(train.loop, "build_augment", lambda spec, *a: built.append(spec) or real(spec, *a))
    opts, iters, real_opt, real_epoch = [], [], train.loop.build_optimizer, train.loop.train_one_epoch
    monkeypatch.setattr(train.loop, "build_optimizer", lambda *a: opts.append(real_opt(*a)) or opts[-1])
    monkeypatch.setattr(train.loop, "train_one_epoch", lambda *a, **k: iters.append(len(a[2])) or real_epoch(*a, **k))

    img, mask, *_ = SCENES[0]
    for p, share in ((0.0, 0.0), (1.0, 1.0)):
        aug = build_augment("shift", "segmenter", shift_p=p)
        aug.set_random_seed(3)
        changed = [not np.array_equal(aug(image=img, mask=mask)["image"], img) for _ in range(20)]
        assert np.mean(changed) == pytest.approx(share, abs=0.15)  # a shifted draw can leave the image as it is
    assert closing_augment("flip+shift") == "flip" and closing_augment("shift") == "none"
    assert closing_augment("flip+mosaic+scale+camera") == "flip"
    cfg = tmp_path / "c.yaml"
    sched = "{epochs: 2, batch_size: 4, warmup_iters: 2, augment: flip+shift, close_epochs: 1}"
    cfg.write_text(f"name: c\ndata: {tiny_data}\nsegmenter:\n  input_size: [64, 96]\n  train: {sched}\n")
    c = load_config(cfg)
    fit("segmenter", c.segmenter, c, tmp_path / "run")
    closing = "epochs 2-2: augment 'flip' (shift, mosaic and scale presets off, optimizer moments reset)"
    assert closing in capsys.readouterr().out
    assert built == ["flip"]  # the closing epoch's dataset really lost the shift presets
    steps = {int(st["step"]) for st in opts[0].state.values()}
    assert steps == {iters[1]}  # AdamW's moments restarted with the closing epoch: its steps only, not both
    cfg.write_text(f"name: c\ndata: {tiny_data}\nsegmenter:\n  train: {{epochs: 2, close_epochs: 3}}\n")
    with pytest.raises(ConfigError, match="close_epochs"):
        load_config(cfg)


@pytest.mark.parametrize("preset", [p for p in PRESETS[1:] if p not in GEOMETRY_PRESETS])
def test_every_transform_keeps_thin_structures_in_mask_and_image(preset):
    """Each transform alone at p=1, 30 draws: >= 95% of the thin mask pixels stay and the 1-2 px structures
    keep >= 25% of their local contrast (the noise_blur test split keeps 26% on the same measure)."""
    for leaf in leaves(preset_transforms(preset, with_references=False)):
        leaf = copy.deepcopy(leaf)
        leaf.p = 1.0
        aug = Augment([leaf], "segmenter")
        aug.set_random_seed(0)
        for img, mask, *_ in SCENES:
            before = contrast(img, thin_pixels(mask))
            for _ in range(5):
                out = aug(image=img, mask=mask)
                kept = (out["mask"] > 0).sum() / (mask > 0).sum()
                assert kept >= 0.95, f"{preset}/{type(leaf).__name__} keeps {kept:.0%} of the thin mask pixels"
                ratio = contrast(out["image"], thin_pixels(out["mask"])) / before
                assert ratio >= 0.25, f"{preset}/{type(leaf).__name__} leaves {ratio:.0%} of 1-2 px contrast"


def test_boxes_stay_inside_the_image_with_their_labels():
    aug = build_augment("flip+shift", "detector")
    aug.set_random_seed(3)
    for img, _, boxes, labels in SCENES:
        for _ in range(5):
            out = aug(image=img, bboxes=boxes.astype(np.float32), labels=labels)
            b = np.asarray(out["bboxes"]).reshape(-1, 4)
            h, w = img.shape[:2]
            assert out["image"].shape == img.shape and out["image"].dtype == np.uint8
            assert len(b) == len(out["labels"]) and set(out["labels"]) <= set(labels)
            assert (b[:, :2] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
            assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()


def test_same_seed_same_augmentation():
    img, mask, *_ = SCENES[0]
    a, b = build_augment("shift", "segmenter"), build_augment("shift", "segmenter")
    a.set_random_seed(11)
    b.set_random_seed(11)
    for _ in range(4):
        x, y = a(image=img, mask=mask), b(image=img, mask=mask)
        assert np.array_equal(x["image"], y["image"]) and np.array_equal(x["mask"], y["mask"])


def test_season_moves_colours_towards_the_target_domain(tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    for i in range(3):  # a blue-green night-time domain (BGR)
        cv2.imwrite(str(target / f"{i}.png"), np.full((60, 80, 3), (140, 90, 20), np.uint8))
    aug = build_augment("season", "segmenter", target)
    aug.set_random_seed(0)
    img, mask, *_ = SCENES[0]
    dist = lambda im: np.abs(im.reshape(-1, 3).mean(0) - (140, 90, 20)).sum()  # noqa: E731
    outs = [aug(image=img, mask=mask)["image"] for _ in range(12)]
    assert min(dist(o) for o in outs) < 0.6 * dist(img)
    with pytest.raises(ValueError, match="not a folder"):
        build_augment("season", "segmenter", tmp_path / "missing")


def blocks(i: int, colours) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 240x320 BGR image of three solid blocks, each its own colour and class -> image, boxes, labels."""
    img = np.full((240, 320, 3), 90, np.uint8)
    boxes = np.array([[20 + 7 * i, 30, 90 + 7 * i, 110], [150, 60 + 5 * i, 230, 150 + 5 * i], [240, 160, 300, 230]],
                     np.float32)
    for (x0, y0, x1, y1), c in zip(boxes.astype(int), colours, strict=True):
        img[y0:y1, x0:x1] = c
    return img, boxes, np.arange(3)


def test_mosaic_and_scale_keep_every_box_on_its_object():
    colours = [(0, 0, 255), (0, 255, 0), (255, 0, 0)]
    samples = [blocks(i, colours) for i in range(4)]
    aug = build_augment("mosaic+scale", "detector", input_hw=(320, 320))
    assert aug.needs_partners
    for seed in range(10):
        aug.set_random_seed(seed)
        img, boxes, labels = samples[0]
        partners = [{"image": im, "bboxes": b, "labels": lab} for im, b, lab in samples[1:]]
        out = aug(image=img, bboxes=boxes, labels=labels, partners=partners)
        assert out["image"].shape == (320, 320, 3)
        for (x0, y0, x1, y1), lab in zip(np.asarray(out["bboxes"]), out["labels"], strict=True):
            inner = out["image"][int(y0) + 2:int(y1) - 1, int(x0) + 2:int(x1) - 1].reshape(-1, 3).astype(int)
            if len(inner) < 4:
                continue  # a sliver at the crop edge
            share = (np.abs(inner - colours[lab]).sum(1) < 60).mean()
            assert share > 0.9, f"seed {seed}: box of class {lab} covers {share:.0%} of its object"


def test_mosaic_and_scale_keep_one_px_mask_lines_connected_and_on_the_image_line():
    img = np.full((240, 320, 3), 90, np.uint8)
    mask = np.zeros((240, 320), np.uint8)
    for y in (60, 130, 200):
        cv2.line(mask, (0, y), (319, y + 25), 1, 1)  # 1 px lines, slightly slanted
    img[mask > 0] = (255, 255, 255)
    aug = build_augment("mosaic+scale", "segmenter", input_hw=(256, 320))
    for seed in range(10):
        aug.set_random_seed(seed)
        out = aug(image=img, mask=mask, partners=[{"image": img, "mask": mask}] * 3)
        m = out["mask"]
        line = m == 1
        assert line.any() and set(np.unique(m)) <= {0, 1, 255}
        assert (out["image"][line].min(1) > 150).mean() > 0.95  # the mask still lies on the drawn lines
        n, comp = cv2.connectedComponents(line.astype(np.uint8), connectivity=8)
        for k in range(1, n):
            cols = np.unique(np.nonzero(comp == k)[1])
            assert cols.max() - cols.min() + 1 == len(cols), f"seed {seed}: a mask line broke into gaps"
        assert n - 1 <= 3 * 4  # at most every line of every mosaic cell, each in one piece


def test_mosaic_partners_come_from_the_seed_and_the_index_only():
    aug = build_augment("mosaic", "detector")
    aug.set_random_seed(4)
    first = [aug.pick_partners(i, 100) for i in range(5)]
    aug.set_random_seed(4)
    assert [aug.pick_partners(i, 100) for i in reversed(range(5))][::-1] == first  # order does not matter
    aug.set_random_seed(5)
    assert [aug.pick_partners(i, 100) for i in range(5)] != first


def test_auto_trains_the_short_recipe_below_the_long_budget_and_mosaic_and_scale_from_it(tmp_path, tiny_data):
    import yaml

    from datasets.augment import LONG_EPOCHS, resolve_augment
    from train.config import ConfigError, load_config

    assert resolve_augment("auto", LONG_EPOCHS - 1) == "flip"
    assert resolve_augment("auto+shift", LONG_EPOCHS) == "flip+mosaic+scale+shift"
    assert resolve_augment("flip+camera", 500) == "flip+camera"  # a list without auto is the user's own
    path = tmp_path / "auto.yaml"
    for epochs in (12, 80):
        path.write_text(yaml.safe_dump({"name": "a", "data": str(tiny_data),
                                        "detector": {"train": {"epochs": epochs, "augment": "auto+lighting"}}}))
        assert load_config(path).detector.train.augment == "auto+lighting"  # resolved when training, from epochs
    path.write_text(yaml.safe_dump({"name": "a", "data": str(tiny_data), "detector": {"train": {"augment": "autoo"}}}))
    with pytest.raises(ConfigError, match="unknown augment preset 'autoo'.*shift \\| auto"):
        load_config(path)
    from train.data import build_dataset

    for epochs, mosaic in ((12, False), (80, True)):
        path.write_text(yaml.safe_dump({"name": "a", "data": str(tiny_data),
                                        "detector": {"train": {"epochs": epochs, "augment": "auto"}}}))
        cfg = load_config(path)
        ds = build_dataset("detector", cfg.dataset(), "train", cfg.detector.preprocess_spec(), cfg.detector.train)
        assert ds.augment.needs_partners == mosaic  # the training set mosaics only on the long budget
