"""FP16 files for TensorRT 11: float16 inside, the contract's uint8 input and float32 outputs outside, the QDQ
file still INT8 where it was, parity with the source within FP16 tolerance, and a bad conversion refused."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from deploy.runtime import OrtModel
from deploy.trt_engine import fp16_path
from export import fp16
from export.check_trt import check_model


def inputs(model: OrtModel) -> list[np.ndarray]:
    H, W = model.contract.preprocess.input_size
    return [np.random.default_rng(i).integers(0, 256, (1, 3, H, W), dtype=np.uint8) for i in range(2)]


@pytest.mark.parametrize("task", ["detector", "segmenter"])
def test_fp16_files_keep_the_contract_and_match_their_sources(tiny_run, task):
    exp = tiny_run / "export"
    manifest = {e["file"]: e for e in json.loads((exp / "manifest.json").read_text())["files"]}
    fp32, qdq = exp / f"{task}.onnx", exp / f"{task}.int8-trt.onnx"
    for src, precision in ((fp32, "fp16"), (qdq, "int8")):
        half = fp16_path(src)
        model = onnx.load(half)
        assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.UINT8
        assert {o.type.tensor_type.elem_type for o in model.graph.output} == {TensorProto.FLOAT}
        weights = [i for i in model.graph.initializer if len(i.dims) == 4]  # conv kernels
        assert weights and all(w.data_type in (TensorProto.FLOAT16, TensorProto.INT8) for w in weights)
        loaded = OrtModel(half)
        assert loaded.contract.precision == precision
        assert loaded.contract.class_names == OrtModel(src).contract.class_names
        assert manifest[half.name]["target"] == "tensorrt-11" and manifest[half.name]["source"] == src.name
    xs = inputs(OrtModel(fp32))
    assert fp16.model_error(fp16_path(fp32), fp32, xs) <= fp16.PARITY_TOL
    # the FP16 QDQ file is no further from the fp32 model than the QDQ file's noise, re-drawn, plus FP16 rounding
    noise = fp16.model_error(qdq, fp32, xs)
    assert fp16.model_error(fp16_path(qdq), fp32, xs) <= fp16.QDQ_NOISE_FACTOR * noise + fp16.PARITY_TOL
    half_qdq = onnx.load(fp16_path(qdq))
    assert fp16.opset(half_qdq) == fp16.QDQ_FP16_OPSET and check_model(half_qdq) == []  # still TensorRT-clean INT8
    scales = {i.name: i for i in half_qdq.graph.initializer}
    dq_scales = [scales[n.input[1]] for n in half_qdq.graph.node
                 if n.op_type == "DequantizeLinear" and n.input[1] in scales]
    assert dq_scales and all(s.data_type == TensorProto.FLOAT16 for s in dq_scales)  # float16 between the INT8 layers


def test_a_conversion_outside_the_tolerance_is_refused_and_removed(tiny_run, tmp_path, monkeypatch):
    src = tmp_path / "detector.onnx"
    src.write_bytes((tiny_run / "export" / "detector.onnx").read_bytes())
    convert = fp16.convert

    def broken(model):  # a converter that rounds every float16 constant 10% high
        half = convert(model)
        for w in [i for i in half.graph.initializer if i.data_type == TensorProto.FLOAT16]:
            w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * np.float16(1.1), w.name))
        return half

    monkeypatch.setattr(fp16, "convert", broken)
    with pytest.raises(RuntimeError, match="FP16 outputs differ from detector.onnx"):
        fp16.export_fp16(src, inputs(OrtModel(src)))
    assert not fp16_path(src).exists()


def test_unnamed_casts_and_a_resize_with_scales_convert_to_a_loadable_graph():
    """What adopted Ultralytics graphs hold: a Resize whose float scales must stay float32, and, in the INT8
    files, Casts without node names (the converter names its own casts after them)."""
    import onnxruntime as ort
    from onnx import helper

    nodes = [helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
             helper.make_node("Resize", ["xf", "", "scales"], ["up"], mode="nearest"),
             helper.make_node("Cast", ["up"], ["ui"], to=TensorProto.INT32),
             helper.make_node("Cast", ["ui"], ["y"], to=TensorProto.FLOAT)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    half = fp16.convert(model)
    onnx.checker.check_model(half)
    x = np.arange(48, dtype=np.uint8).reshape(1, 3, 4, 4)
    y = ort.InferenceSession(half.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(y, x.repeat(2, 2).repeat(2, 3))
