"""Other x86 classes' integer kernels under QEMU: AVX2 saturates full-range INT8 weights, not 7-bit ones; SSE4's
16-bit kernels saturate neither."""

import numpy as np
import pytest

from deploy.emulate import EmulatedModel, EmulationUnavailable, unavailable
from tests.deploy import qdq_graph

WHY = unavailable("x86-avx2")


@pytest.mark.skipif(WHY is not None, reason=WHY or "")
@pytest.mark.parametrize("profile, weight, w_scale, saturated", [("x86-avx2", 127, 1 / 127, True),
                                                                  ("x86-avx2", 64, 1 / 64, False),
                                                                  ("x86-sse4", 127, 1 / 127, False)])
def test_avx2_kernels_saturate_full_range_weights_only(tmp_path, profile, weight, w_scale, saturated):
    path = qdq_graph.build(tmp_path / "m.onnx", weight, w_scale)
    x = np.full((1, 3, 8, 8), 255, np.uint8)
    want = qdq_graph.reference(x, weight, w_scale)
    m = EmulatedModel(path, profile)
    try:
        err = np.abs(m.infer(x)[0] - want).max()
        assert np.abs(m.infer(x[0])[0] - want).max() == err  # (3, H, W) takes a batch axis, as OrtModel
    finally:
        m.close()
    assert (err > 10 * qdq_graph.Y_SCALE) if saturated else (err <= qdq_graph.Y_SCALE)


def test_unknown_profile_and_a_dead_worker_are_one_line_errors(tmp_path):
    assert "unknown CPU profile" in unavailable("x86-avx9")
    with pytest.raises(EmulationUnavailable, match="unknown CPU profile"):
        EmulatedModel(tmp_path / "m.onnx", "x86-avx9")
    if WHY is None:
        m = EmulatedModel(tmp_path / "missing.onnx", "x86-avx2")  # the worker fails to load it
        with pytest.raises(EmulationUnavailable, match="stopped"):
            m.infer(np.zeros((1, 3, 8, 8), np.uint8))
