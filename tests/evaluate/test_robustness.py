"""Robustness report and the shift-augmentation ablation, on the tiny generated run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from datasets.synthetic import make_scene
from evaluate.robustness import CORRUPTIONS, SEVERITIES, corruption, image_seed


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corruptions_grow_with_severity_and_repeat_exactly(name):
    img = make_scene(0, "test", 0)[0]
    seed = image_seed(img, name)
    change = [np.abs(corruption(name, s)(img, seed).astype(np.float32) - img).mean() for s in SEVERITIES]
    assert all(b > a for a, b in zip(change, change[1:], strict=False)), change
    assert np.array_equal(corruption(name, 3)(img, seed), corruption(name, 3)(img, seed))
    assert image_seed(img, name) != image_seed(make_scene(0, "test", 1)[0], name)


def test_report_per_corruption_severity_and_shifted_split(tiny_run):
    from evaluate.robustness import main

    assert main(["--run", str(tiny_run), "--limit", "3", "--corruptions", "haze,gaussian_noise"]) == 0
    out = tiny_run / "robustness"
    r = json.loads((out / "robustness.json").read_text())
    det, seg = r["models"]["detector"], r["models"]["segmenter"]
    assert set(det["corruptions"]) == {"haze", "gaussian_noise"} and set(det["clean"]) == {"map", "map50"}
    assert set(det["corruptions"]["haze"]) == {"1", "2", "3", "4", "5", "mean", "drop"}
    assert set(seg["clean"]) == {"miou", "thin_iou"}
    assert {"test_fog", "test_lowlight", "test_noise_blur", "test_colorcast"} <= set(seg["shifted"])
    row = seg["corruptions"]["haze"]
    mean = np.mean([row[str(s)]["miou"] for s in SEVERITIES])
    assert row["mean"]["miou"] == pytest.approx(mean, abs=1e-4)
    if seg["clean"]["miou"]:  # a one-epoch model may score 0 clean: then no relative drop is defined
        rel = (seg["clean"]["miou"] - row["mean"]["miou"]) / seg["clean"]["miou"]
        assert row["drop"]["miou"] == pytest.approx(rel, abs=1e-3)
    else:
        assert row["drop"]["miou"] is None
    assert "| haze |" in (out / "report.md").read_text()
    assert (out / "detector_robustness.png").stat().st_size > 0 and (out / "segmenter_robustness.png").is_file()


def test_unknown_corruption_is_refused_before_any_model_runs(tiny_run, capsys):
    from evaluate.robustness import main

    assert main(["--run", str(tiny_run), "--corruptions", "hail"]) == 2
    assert "unknown corruption 'hail'" in capsys.readouterr().err


def test_ablation_trains_both_arms_and_compares_clean_and_shifted(tiny_config, tmp_path, capsys):
    from evaluate.ablate_shift import main

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
