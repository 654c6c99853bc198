import numpy as np

from experiments.receptive_field import receptive_fields, report
from train.models import Detector


def test_receptive_field_grows_with_stride_and_covers_the_head():
    levels = receptive_fields(Detector(num_classes=1, backbone="mobilenet_v3_small_minimal", channels=16,
                                       head_convs=1), size=1024)
    assert [lv["stride"] for lv in levels] == [8, 16, 32]
    rfs = [lv["receptive_field"] for lv in levels]
    assert rfs == sorted(rfs) and rfs[0] > 8 * 3 and not any(lv["clipped"] for lv in levels)


def test_report_warns_on_objects_too_big_or_too_small():
    levels = [{"stride": 8, "receptive_field": 100, "clipped": False},
              {"stride": 16, "receptive_field": 150, "clipped": False}]
    rows, warnings = report(levels, np.array([[20.0, 20.0], [80.0, 70.0]]))
    assert warnings == [] and [r["boxes"] for r in rows] == [1, 1]
    _, warnings = report(levels, np.array([[3.0, 5.0], [300.0, 200.0]] * 50))
    assert len(warnings) == 2 and "exceed the coarsest" in warnings[0] and "finest stride" in warnings[1]
