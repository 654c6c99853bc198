import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from export.equalize import equalizable_pairs, equalize, per_tensor_weights, weight_sqnr_db


def _conv(name, x, w, b, out, group=1, pad=0):
    return helper.make_node("Conv", [x, w, b], [out], name=name, group=group, pads=[pad] * 4)


def _graph(rng, shared_head: bool = False) -> onnx.ModelProto:
    """x -> conv a (8 ch, ranges 0.01..10 per channel) -> relu -> depthwise b -> relu -> conv c -> y, plus a
    conv d whose weights also serve conv e (a head shared across levels): that pair must be left alone."""
    wa = rng.normal(size=(8, 3, 3, 3)) * np.logspace(-2, 1, 8)[:, None, None, None]
    inits = {"wa": wa, "ba": rng.normal(size=8), "wb": rng.normal(size=(8, 1, 3, 3)), "bb": rng.normal(size=8),
             "wc": rng.normal(size=(4, 8, 1, 1)), "bc": rng.normal(size=4),
             "wd": rng.normal(size=(4, 4, 1, 1)) * np.logspace(-2, 1, 4)[:, None, None, None], "bd": np.zeros(4)}
    nodes = [_conv("a", "x", "wa", "ba", "a"), helper.make_node("Relu", ["a"], ["ra"]),
             _conv("b", "ra", "wb", "bb", "b", group=8, pad=1), helper.make_node("Relu", ["b"], ["rb"]),
             _conv("c", "rb", "wc", "bc", "c"), _conv("d", "c", "wd", "bd", "d"),
             helper.make_node("Relu", ["d"], ["rd"]),
             _conv("e", "rd", *(("wd", "bd") if shared_head else ("we", "be")), "y")]
    if not shared_head:
        inits.update(we=rng.normal(size=(4, 4, 1, 1)), be=rng.normal(size=4))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def _run(m: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_equalization_keeps_the_function_and_evens_out_channel_ranges():
    rng = np.random.default_rng(0)
    m = _graph(rng)
    x = rng.normal(size=(1, 3, 16, 16)).astype(np.float32)
    before = _run(m, x)
    wa0 = numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == "wa"))
    assert {(a.name, b.name) for a, b in equalizable_pairs(m)} == {("a", "b"), ("b", "c"), ("c", "d"), ("d", "e")}
    equalize(m)
    after = _run(m, x)
    assert np.abs(after - before).max() < 1e-4 * np.abs(before).max()
    w = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    ra, rb = np.abs(w["wa"]).max(axis=(1, 2, 3)), np.abs(w["wb"]).max(axis=(1, 2, 3))
    assert np.allclose(ra, rb, rtol=1e-3)  # a's output channel i and the depthwise channel i share one range
    spread = lambda a: np.abs(a).max(axis=(1, 2, 3)).max() / np.abs(a).max(axis=(1, 2, 3)).min()  # noqa: E731
    assert spread(w["wa"]) < spread(wa0) / 10  # 1000x range spread across channels before
    # the layers now take one INT8 scale per tensor at about the per-channel quality
    assert weight_sqnr_db(w["wa"], False) > weight_sqnr_db(wa0, False) + 10
    assert "wa" in per_tensor_weights(m, min_sqnr_db=weight_sqnr_db(w["wa"], False) - 0.1)


def test_weights_shared_between_convs_are_not_equalized():
    rng = np.random.default_rng(1)
    m = _graph(rng, shared_head=True)
    x = rng.normal(size=(1, 3, 16, 16)).astype(np.float32)
    before = _run(m, x)
    assert {(a.name, b.name) for a, b in equalizable_pairs(m)} == {("a", "b"), ("b", "c")}
    equalize(m)
    assert np.abs(_run(m, x) - before).max() < 1e-4 * np.abs(before).max()
