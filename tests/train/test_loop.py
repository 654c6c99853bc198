"""Training on real thin-structure data: metrics without support are missing, never a crash."""

import csv

import cv2
import numpy as np
import torch
import yaml

from train.__main__ import main as train_main
from train.checkpoint import load_checkpoint


def one_px_wires(root, split: str, count: int, seed: int) -> None:
    """Images with 1 px wires and masks labelling exactly those pixels (boundary-style power-line labels)."""
    rng = np.random.default_rng(seed)
    (root / "images" / split).mkdir(parents=True)
    (root / "masks" / split).mkdir(parents=True)
    for i in range(count):
        img = np.full((64, 80, 3), 100, np.uint8)
        mask = np.zeros((64, 80), np.uint8)
        for _ in range(2):
            p0, p1 = tuple(int(v) for v in rng.integers(0, 64, 2)), tuple(int(v) for v in rng.integers(0, 64, 2))
            cv2.line(img, p0, p1, (20, 20, 20), 1)
            cv2.line(mask, p0, p1, 1, 1)
        cv2.imwrite(str(root / "images" / split / f"{i:03d}.png"), img)
        cv2.imwrite(str(root / "masks" / split / f"{i:03d}.png"), mask)


def train_on_wires(tmp_path, train: dict | None = None, loss: dict | None = None):
    """One epoch of the segmenter on 8 generated 1 px wire images -> the run folder."""
    root = tmp_path / "wires"
    one_px_wires(root, "train", 8, 0)
    one_px_wires(root, "val", 4, 1)
    data = tmp_path / "wires.yaml"
    data.write_text(yaml.safe_dump({"name": "wires", "root": str(root), "segmentation": {
        "classes": ["background", "wire"], "thin_classes": ["wire"],
        "splits": {s: {"images": f"images/{s}", "masks": f"masks/{s}"} for s in ("train", "val")}}}))
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump({"name": "wires", "data": str(data), "segmenter": {
        "input_size": [64, 80], "model": {"channels": 16}, "loss": loss or {},
        "train": {"epochs": 1, "batch_size": 4, "warmup_iters": 1, **(train or {})}}}))
    run = tmp_path / "run"
    assert train_main(["--config", str(exp), "--out", str(run)]) == 0
    return run


def test_one_epoch_on_a_set_of_1px_structures_records_missing_metrics(tmp_path):
    run = train_on_wires(tmp_path)
    metrics = load_checkpoint(run / "segmenter" / "best.pt")["metrics"]
    assert metrics["recall_3_4px"] is None and metrics["recall_1px"] is not None  # no 3-4 px truth at all
    with open(run / "segmenter" / "log.csv") as f:
        row = next(csv.DictReader(f))
    assert row["recall_3_4px"] == "" and row["recall_1px"] != ""  # missing, not 0 and not "None"
    assert list((run / "segmenter" / "tb").iterdir())  # the TensorBoard writer took the row


def test_the_lovasz_weight_and_the_ema_ramp_reach_training(tmp_path):
    # ema_tau 1e-3: the decay is at its 0.999 from the first update, so the EMA copy keeps its BatchNorm
    # statistics near their start (0) while the trained model's move; the default ramp (500) would follow it
    run = train_on_wires(tmp_path, train={"ema_decay": 0.999, "ema_tau": 1e-3}, loss={"lovasz_weight": 1.0})
    with open(run / "segmenter" / "log.csv") as f:
        assert float(next(csv.DictReader(f))["lovasz"]) > 0
    last = load_checkpoint(run / "segmenter" / "last.pt")
    key = next(k for k in last["state_dict"] if k.endswith("running_mean"))
    ema, trained = last["state_dict"][key].abs().sum(), last["train_state"]["model"][key].abs().sum()
    assert trained > 0 and ema < 0.01 * trained


def test_crops_reach_training_and_each_epoch_draws_its_own(tmp_path, capsys):
    from train.config import load_config
    from train.loop import build_training, start_epoch

    train_on_wires(tmp_path, train={"crop": [32, 48]})  # 64x80 samples: 3 windows of 32x48 per image
    assert "8 train / 4 val images, 24 crops of 32x48 an epoch" in capsys.readouterr().out
    cfg = load_config(tmp_path / "exp.yaml")
    tr = build_training("segmenter", cfg.segmenter, cfg)
    windows = []
    for epoch in (1, 2, 1):
        start_epoch(tr, epoch, 1)
        windows.append([tr.train_set[i][1] for i in range(6)])
    assert all(a.shape == (32, 48) for a in windows[0])
    assert all(torch.equal(a, b) for a, b in zip(windows[0], windows[2], strict=True))  # (seed, epoch) replays
    assert not all(torch.equal(a, b) for a, b in zip(windows[0], windows[1], strict=True))
