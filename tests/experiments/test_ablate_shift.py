"""The shift-augmentation ablation (make ablate-shift) on the tiny generated set."""

import json

import numpy as np
import pytest


def test_ablation_trains_both_arms_and_compares_clean_and_shifted(tiny_config, tmp_path, capsys):
    from experiments.ablate_shift import main

    out = tmp_path / "ablate"
    assert main(["--config", str(tiny_config), "--out", str(out), "--limit", "2"]) == 0
    r = json.loads((out / "results.json").read_text())
    for arm in ("none", "shift"):
        assert (out / arm / "segmenter" / "best.pt").is_file()
        seg = r[arm]["segmenter"]
        assert set(seg["shifted"]) == {"test_lowlight", "test_fog", "test_noise_blur", "test_colorcast"}
        assert seg["shifted_mean"]["thin_iou"] == pytest.approx(
            np.mean([v["thin_iou"] for v in seg["shifted"].values()]), abs=1e-4)
    d, det = r["summary"]["detector"]["map"], {arm: r[arm]["detector"]["clean"]["map"] for arm in ("none", "shift")}
    assert d["clean_delta"] == pytest.approx(det["shift"] - det["none"], abs=1e-4)
    # a second seed per arm: the seed-0 models are reused (same config), the figures become seed means
    capsys.readouterr()
    assert main(["--config", str(tiny_config), "--out", str(out), "--limit", "2", "--seeds", "2", "--reuse"]) == 0
    assert capsys.readouterr().out.count("reusing") == 4 and (out / "shift-seed1" / "detector" / "best.pt").is_file()
    r2 = json.loads((out / "results.json").read_text())
    seg = r2["shift"]["segmenter"]
    assert seg["per_seed"][0] == r["shift"]["segmenter"]
    seeds = [x["clean"]["thin_iou"] for x in seg["per_seed"]]
    assert len(seeds) == 2 and seg["clean"]["thin_iou"] == pytest.approx(np.mean(seeds), abs=1e-4)
