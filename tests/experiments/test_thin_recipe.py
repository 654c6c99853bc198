"""The wire recipe over seeds, scored at 2 px and at the BSDS tolerance, on a tiny generated wire set."""

import json

import yaml

from tests.datasets.test_wires import wires_config


def test_seeds_are_trained_and_scored_at_both_tolerances_and_the_doc_shows_them(tmp_path):
    from datasets.synthetic import prepare_dataset
    from experiments.results import render, take
    from experiments.thin_recipe import main

    data = wires_config(tmp_path, count=8)
    prepare_dataset(data)
    cfg = tmp_path / "wires.yaml"
    cfg.write_text(yaml.safe_dump({"name": "wires-tiny", "data": str(data), "segmenter": {
        "input_size": [64, 96], "model": {"channels": 16, "decoder": "subpixel"},
        "train": {"epochs": 1, "batch_size": 4, "warmup_iters": 1}, "loss": {"class_weights": [1.0, 5.0]}}}))
    out = tmp_path / "wire-recipe"
    assert main(["--config", str(cfg), "--out", str(out), "--seeds", "2"]) == 0
    r = json.loads((out / "results.json").read_text())
    assert [s["seed"] for s in r["seeds"]] == [0, 1] and (out / "seed1" / "segmenter" / "best.pt").is_file()
    for s in r["seeds"]:
        assert {"ods_f1@2", "ois_f1@2", "ods_f1@bsds", "ois_f1@bsds", "thin_iou"} <= set(s)
    # a larger match distance can only match more: ODS at bsds (0.0075 x 115 px < 1 px here) vs 2 px
    assert all(s["ods_f1@2"] >= s["ods_f1@bsds"] for s in r["seeds"])
    take(out / "results.json", None, None, root=tmp_path / "filed")
    doc = render(tmp_path / "filed")
    assert "| seed | thin IoU | ODS 2 px | OIS 2 px | ODS bsds |" in doc and "| mean |" in doc
