"""Drift monitor: the clean test split scores under the threshold, every shifted split over it."""

from __future__ import annotations

import numpy as np
import pytest

from deploy.drift import DEFAULT_THRESHOLD, DriftMonitor, frame_histograms, psi, reference_from_tensors
from deploy.preprocess import PreprocessSpec, preprocess, read_image

SPEC = PreprocessSpec(input_size=(256, 320))


@pytest.fixture(scope="module")
def shifted_data(tmp_path_factory):
    from datasets.synthetic import SHIFTS, generate

    root = tmp_path_factory.mktemp("drift") / "data"
    generate(root, seed=1, splits={"train": 120, "test": 60})
    return root, SHIFTS


def tensors(root, split):
    return [preprocess(read_image(p), SPEC) for p in sorted((root / "images" / split).glob("*.jpg"))]


def final_score(reference: dict, frames) -> dict:
    monitor = DriftMonitor(reference, SPEC.channel_order, window=100)
    for t, lb in frames:
        out = monitor.update(t, lb)
    return out


def test_clean_split_under_threshold_and_each_shifted_split_over_it(shifted_data):
    root, shifts = shifted_data
    ref = reference_from_tensors(tensors(root, "train"), SPEC.channel_order)
    clean = final_score(ref, tensors(root, "test"))
    assert clean["score"] < DEFAULT_THRESHOLD and not clean["warning"], clean
    for shift in shifts:
        got = final_score(ref, tensors(root, f"test_{shift}"))
        assert got["score"] > DEFAULT_THRESHOLD and got["warning"], (shift, got)
        assert got["score"] > 1.2 * clean["score"]


def test_no_score_before_the_window_has_enough_frames_and_the_window_rolls():
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (3, 64, 64), dtype=np.uint8) for _ in range(12)]
    ref = reference_from_tensors([(f, None) for f in frames], "RGB")
    monitor = DriftMonitor(ref, "RGB", window=5, min_frames=3)
    assert monitor.update(frames[0])["score"] is None
    for f in frames[1:]:
        out = monitor.update(f)
    assert out["frames"] == 5 and out["score"] < 0.05
    dark = [(f // 4).astype(np.uint8) for f in frames[:5]]  # the whole window replaced by dark frames
    for f in dark:
        out = monitor.update(f)
    assert out["warning"] and out["stat"] in ("brightness", "b", "g", "r")


def test_statistics_ignore_the_letterbox_bars_and_psi_is_zero_for_equal_histograms():
    img = np.full((120, 320, 3), 200, np.uint8)
    t, lb = preprocess(img, SPEC)  # 120 px of image in 256 px: the rest is pad_value bars
    h = frame_histograms(t, "RGB", lb)
    assert h[0].sum() == len(range(0, lb.new_h, 2)) * len(range(0, lb.new_w, 2))
    assert h[0, 200 // 16] == h[0].sum()  # only the image's grey level, no 114 from the bars
    assert psi(h, h).max() == pytest.approx(0.0)


def test_a_reference_from_another_runtime_version_is_refused():
    ref = {"stats": ["brightness"], "stride": 2, "hist": [[1.0] * 16]}
    with pytest.raises(ValueError, match="re-export"):
        DriftMonitor(ref, "RGB")
