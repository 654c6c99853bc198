"""thin-diagnose (make thin-diagnose): the stride ceiling and label-shift probes, and its report."""

import pytest

from tests.datasets.test_thin_metrics import NAMES, THIN, line


def test_stride_ceiling_and_label_shift_on_hand_made_masks():
    from experiments.thin_diagnose import morph, stride_ceiling

    truth = line(31)  # a 1 px wire on an odd column: a stride-2 label map loses it entirely
    assert stride_ceiling([truth], 2, NAMES, THIN) == 0.0
    assert stride_ceiling([line(20, width=8)], 2, NAMES, THIN) == pytest.approx(1.0)
    assert stride_ceiling([truth], 1, NAMES, THIN) == pytest.approx(1.0)
    dil, ero = morph([truth], "dilate")[0], morph([truth], "erode")[0]
    assert (dil == 1).sum() > (truth == 1).sum() and (ero == 1).sum() == 0


def test_thin_diagnose_writes_its_numbers_and_a_verdict(tiny_run):
    import json

    from experiments.thin_diagnose import main

    assert main(["--run", str(tiny_run)]) == 0
    d = json.loads((tiny_run / "thin_diagnose.json").read_text())
    assert d["stride"] == 2 and 0 <= d["stride_ceiling"] <= 1 and d["verdict"]
    assert set(d["recall_by_width"]) == {"recall_1px", "recall_2px", "recall_3_4px", "recall_5_8px", "recall_gt8px"}
