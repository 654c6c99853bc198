"""The comparison scripts train torchvision's models through the same `fit` as ours."""

import csv

from evaluate.compare_lraspp import train_lraspp
from evaluate.compare_ssdlite import train_ssdlite
from train.config import load_config


def test_ssdlite_and_lraspp_train_through_fit(tiny_config, tmp_path):
    cfg = load_config(tiny_config)
    ssd = train_ssdlite(cfg, tmp_path / "ssdlite" / "detector")
    lraspp = train_lraspp(cfg, tmp_path / "lraspp" / "segmenter")
    for model, folder, loss in ((ssd, "ssdlite/detector", "classification"), (lraspp, "lraspp/segmenter", "dice")):
        assert not model.training and (tmp_path / folder / "best.pt").is_file()
        with open(tmp_path / folder / "log.csv") as f:
            row = next(csv.DictReader(f))
        assert loss in row and float(row["loss"]) > 0  # the model's own loss terms, logged by fit
        assert ("map" if folder.endswith("detector") else "thin_iou") in row  # validated by fit every epoch
