import json

import numpy as np
import onnx
import pytest
import torch

from deploy.contract import Contract, ContractError
from deploy.preprocess import PreprocessSpec
from deploy.runtime import ModelLoadError, OrtModel
from export.onnx_export import export_onnx, parity
from export.quantize import output_convs, quantize_int8
from train.models import Detector


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    torch.manual_seed(0)
    model = Detector(num_classes=3, channels=16, head_convs=1).eval()
    spec = PreprocessSpec(input_size=(96, 128), channel_order="BGR")
    contract = Contract("detector", spec, ["a", "b", "c"], "abc123", ["cls_logits", "boxes"],
                        postprocess={"conf_thres": 0.3})
    path = export_onnx(model, contract, tmp_path_factory.mktemp("onnx") / "det.onnx")
    return model, contract, path


def test_onnx_carries_the_contract_and_matches_torch(tiny_onnx):
    model, contract, path = tiny_onnx
    rt = OrtModel(path)
    assert rt.contract == contract
    meta = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert json.loads(meta["edge_vision.class_names"]) == ["a", "b", "c"]
    assert json.loads(meta["edge_vision.preprocess"])["channel_order"] == "BGR"
    rng = np.random.default_rng(0)
    inputs = [rng.integers(0, 256, (1, 3, 96, 128), dtype=np.uint8), np.full((1, 3, 96, 128), 200, np.uint8)]
    assert parity(model, path, inputs) < 1e-4


def test_int8_is_qdq_symmetric_keeps_output_convs_float(tiny_onnx, tiny_data):
    _, contract, path = tiny_onnx
    imgs = sorted((tiny_data.parent / "data" / "images" / "train").glob("*.jpg"))[:4]
    out = path.with_name("det.int8.onnx")
    kept = quantize_int8(path, out, contract, imgs)
    q = onnx.load(out)
    ops = [n.op_type for n in q.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert set(kept) == set(output_convs(onnx.load(path))) and len(kept) == 6  # cls + reg per level
    inits = {i.name: i for i in q.graph.initializer}
    zps = [onnx.numpy_helper.to_array(inits[n.input[2]]) for n in q.graph.node
           if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in inits]
    assert zps and all((z == 0).all() and z.dtype == np.int8 for z in zps)  # symmetric int8 (TensorRT)
    rt = OrtModel(out)
    assert rt.contract.precision == "int8" and rt.contract.class_names == contract.class_names
    assert out.stat().st_size < path.stat().st_size


def test_runtime_refuses_models_without_contract_or_not_onnx(tmp_path, tiny_onnx):
    _, _, path = tiny_onnx
    m = onnx.load(path)
    del m.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(m, bare)
    with pytest.raises(ContractError, match="bare.onnx: no edge-vision contract"):
        OrtModel(bare)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00garbage")
    with pytest.raises(ModelLoadError, match="junk.onnx: not a loadable ONNX model"):
        OrtModel(junk)
