"""The exact INT8 reference: OrtModel(exact=True) computes what the QDQ graph says, which no CPU changes."""

import numpy as np
import pytest

from deploy.hardware import fingerprint, saturates
from deploy.runtime import OrtModel
from tests.deploy import qdq_graph


@pytest.mark.parametrize("weight, w_scale", [(127, 1 / 127), (64, 1 / 64)])
def test_exact_reference_is_the_qdq_graph(tmp_path, weight, w_scale):
    path = qdq_graph.build(tmp_path / "m.onnx", weight, w_scale)
    x = np.random.default_rng(0).integers(0, 256, (1, 3, 8, 8), dtype=np.uint8)
    x[..., 2:6, 2:6] = 255  # bright enough that two adjacent products pass int16 (255 * 127 * 2 > 32767)
    want = qdq_graph.reference(x, weight, w_scale)
    got = OrtModel(path, exact=True).infer(x)[0]
    np.testing.assert_allclose(got, want, atol=1e-6)
    if not saturates(fingerprint()["kernel_class"]):  # kernels that accumulate in int32 agree with the graph
        assert np.abs(OrtModel(path).infer(x)[0] - want).max() <= qdq_graph.Y_SCALE  # one requantization step
