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


def test_stride_ceiling_and_label_shift_on_hand_made_masks():
    from evaluate.thin_diagnose import morph, stride_ceiling

    truth = line(31)  # a 1 px wire on an odd column: a stride-2 label map loses it entirely
    assert stride_ceiling([truth], 2, NAMES, THIN) == 0.0
    assert stride_ceiling([line(20, width=8)], 2, NAMES, THIN) == pytest.approx(1.0)
    assert stride_ceiling([truth], 1, NAMES, THIN) == pytest.approx(1.0)
    dil, ero = morph([truth], "dilate")[0], morph([truth], "erode")[0]
    assert (dil == 1).sum() > (truth == 1).sum() and (ero == 1).sum() == 0


def test_thin_diagnose_writes_its_numbers_and_a_verdict(tiny_run):
    import json

    from evaluate.thin_diagnose import main

    assert main(["--run", str(tiny_run)]) == 0
    d = json.loads((tiny_run / "thin_diagnose.json").read_text())
    assert d["stride"] == 2 and 0 <= d["stride_ceiling"] <= 1 and d["verdict"]
    assert set(d["recall_by_width"]) == {"recall_1px", "recall_2px", "recall_3_4px", "recall_5_8px", "recall_gt8px"}
