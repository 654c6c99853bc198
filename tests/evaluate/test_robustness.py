"""Robustness report on the tiny generated run."""

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
