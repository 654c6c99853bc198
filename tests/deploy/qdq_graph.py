"""A hand-built INT8 QDQ segmenter whose one conv makes AVX2's u8s8 kernels saturate: uint8 input, one 3x3 conv
of 3 -> 2 channels with constant INT8 weights, an uint8 output quantizer, the edge-vision contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from deploy.contract import Contract
from deploy.preprocess import PreprocessSpec

H = W = 8
X_SCALE, Y_SCALE = 1 / 255, 0.25


def build(path: Path, weight: int, w_scale: float, kernels: str = "") -> Path:
    """(1, 3, 8, 8) uint8 -> logits (1, 2, 8, 8); every weight `weight` at `w_scale` (127: full INT8 range,
    64: the 7-bit range export uses where kernels may saturate); `kernels`: the contract's kernel target."""
    inits = [numpy_helper.from_array(np.array(X_SCALE, np.float32), "x_scale"),
             numpy_helper.from_array(np.array(0, np.uint8), "x_zp"),
             numpy_helper.from_array(np.full((2, 3, 3, 3), weight, np.int8), "w_q"),
             numpy_helper.from_array(np.array(w_scale, np.float32), "w_scale"),
             numpy_helper.from_array(np.array(Y_SCALE, np.float32), "y_scale"),
             numpy_helper.from_array(np.array(0, np.uint8), "y_zp")]
    nodes = [helper.make_node("DequantizeLinear", ["images", "x_scale", "x_zp"], ["x"]),
             helper.make_node("DequantizeLinear", ["w_q", "w_scale"], ["w"]),
             helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]),
             helper.make_node("QuantizeLinear", ["y", "y_scale", "y_zp"], ["y_q"]),
             helper.make_node("DequantizeLinear", ["y_q", "y_scale", "y_zp"], ["logits"])]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("images", TensorProto.UINT8, [1, 3, H, W])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2, H, W])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    contract = Contract(task="segmenter", preprocess=PreprocessSpec((H, W)), class_names=["a", "b"],
                        config_hash="0" * 16, outputs=["logits"], precision="int8", kernels=kernels)
    for k, v in contract.to_metadata().items():
        model.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def reference(x: np.ndarray, weight: int, w_scale: float) -> np.ndarray:
    """The QDQ graph's meaning in numpy: float conv of the dequantized tensors, then Q (round half to even,
    clip to uint8) and DQ."""
    xf = np.pad(x.astype(np.float64) * X_SCALE, ((0, 0), (0, 0), (1, 1), (1, 1)))
    w = weight * w_scale
    win = sum(xf[:, :, i : i + H, j : j + W] for i in range(3) for j in range(3)).sum(1, keepdims=True)  # (1,1,H,W)
    y = np.repeat(win * w, 2, axis=1)
    return (np.clip(np.round(y / Y_SCALE), 0, 255) * Y_SCALE).astype(np.float32)
