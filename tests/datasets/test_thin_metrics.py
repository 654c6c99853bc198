"""Thin-structure metrics on hand-made masks with known answers."""

import numpy as np
import pytest

from datasets.thin_metrics import ThinMeter, local_width

NAMES, THIN = ["background", "wire"], ["wire"]


def line(x: int, width: int = 1, size: int = 64) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    m[8:56, x : x + width] = 1
    return m


def score(pred, truth, tol=1):
    meter = ThinMeter(NAMES, THIN, tolerance=tol)
    meter.update(pred, truth)
    return meter.compute()


def test_a_1px_line_shifted_by_1px_has_iou_0_but_boundary_f1_1_at_1px_tolerance():
    from datasets.metrics import score_masks

    truth, pred = line(30), line(31)
    assert score_masks([pred], [truth], NAMES, THIN)["iou"]["wire"] == 0.0
    s = score(pred, truth, tol=1)
    assert s["boundary_f1"] == pytest.approx(1.0)
    assert s["cldice"] == 0.0  # the skeletons do not overlap the other mask at all
    assert score(pred, truth, tol=0)["boundary_f1"] == 0.0


def test_perfect_prediction_scores_one_and_empty_prediction_zero():
    truth = line(20, width=3)
    s = score(truth, truth)
    assert s["cldice"] == pytest.approx(1.0) and s["boundary_f1"] == pytest.approx(1.0)
    assert s["recall_3_4px"] == pytest.approx(1.0)
    s = score(np.zeros_like(truth), truth)
    assert s["cldice"] == 0.0 and s["boundary_f1"] == 0.0 and s["recall_3_4px"] == 0.0


def test_width_buckets_follow_the_structure_width():
    for w in (1, 2, 3, 4, 6, 12):
        widths = local_width(line(20, width=w).astype(bool))
        assert np.median(widths[widths > 0]) == pytest.approx(w, abs=1), w
    truth = np.maximum(line(10, width=1), line(40, width=6))  # a 1 px wire and a 6 px one
    pred = line(40, width=6)  # finds only the wide one
    s = score(pred, truth)
    assert s["recall_1px"] == 0.0 and s["recall_5_8px"] == pytest.approx(1.0)
    assert s["recall_1_2px"] == 0.0


def test_ignored_pixels_are_not_scored():
    truth = line(20)
    truth[:, :5] = 255
    pred = line(20)
    pred[:, :5] = 1  # predictions under the ignore region must not count as false positives
    assert score(pred, truth)["boundary_f1"] == pytest.approx(1.0)



def ods(probs, truths, tol=2.0, valid=None):
    from datasets.thin_metrics import ODSMeter

    meter = ODSMeter(tol)
    for p, t in zip(probs, truths, strict=True):
        meter.update((np.asarray(p) * 255).round().astype(np.uint8), t.astype(bool), valid)
    return meter.compute()


def test_ods_is_one_for_a_perfect_map_and_tolerates_a_shift_within_the_distance_only():
    truth = line(30)
    assert ods([truth * 1.0], [truth])["ods_f1"] == pytest.approx(1.0)
    shifted = line(32) * 1.0  # the whole 1-px line 2 px off
    assert ods([shifted], [truth], tol=2)["ods_f1"] == pytest.approx(1.0)
    assert ods([shifted], [truth], tol=1)["ods_f1"] == 0.0
    assert ods([np.zeros((64, 64))], [np.zeros((64, 64))]) is None  # no truth anywhere: not scored


def test_ods_picks_the_best_threshold_and_ois_each_images_own():
    truth = line(20)
    # one image: the crack at p 0.8 and a false line at p 0.5 -> F 2/3 up to 0.5, 1 above it
    r = ods([line(20) * 0.8 + line(50) * 0.5], [truth])
    assert r["ods_f1"] == pytest.approx(1.0) and 0.5 < r["ods_threshold"] <= 0.8
    i = r["pr"]["threshold"].index(0.4)
    assert r["pr"]["precision"][i] == pytest.approx(0.5) and r["pr"]["recall"][i] == pytest.approx(1.0)
    # two images whose best thresholds differ: A's crack at p 0.2; B's at 0.9 with a false line at 0.6.
    # one threshold for both: t <= 0.2 gives P 96/144, R 1 -> F 0.8 (the best); each its own: F 1 and 1
    r = ods([line(20) * 0.2, line(20) * 0.9 + line(50) * 0.6], [truth, truth])
    assert r["ods_f1"] == pytest.approx(0.8) and r["ois_f1"] == pytest.approx(1.0)


def test_ods_ignores_ignored_pixels_and_bsds_tolerance_scales_with_the_diagonal():
    from datasets.thin_metrics import tolerance_px

    truth, false = line(20), line(50)
    valid = np.ones((64, 64), bool)
    valid[:, 45:] = False  # the false line lies in an ignored region
    assert ods([truth * 0.9 + false * 0.9], [truth], valid=valid)["ods_f1"] == pytest.approx(1.0)
    assert tolerance_px("bsds", (300, 400)) == pytest.approx(0.0075 * 500)
    with pytest.raises(ValueError, match="bsds"):
        tolerance_px("bdsd", (300, 400))


def test_score_masks_reports_ods_from_the_predictions_probabilities():
    from datasets.metrics import MaskPrediction, score_masks

    truth = line(30)
    prob = (line(31) * 200).astype(np.uint8)[None]  # 1 px off, p 0.78
    s = score_masks([MaskPrediction(line(31), prob)], [truth], NAMES, THIN, tolerance=1)
    assert s["thin_iou"] == 0.0 and s["ods_f1"] == pytest.approx(1.0) and s["ois_f1"] == pytest.approx(1.0)
    assert "ods_f1" not in score_masks([line(31)], [truth], NAMES, THIN)  # plain masks: no probabilities
