"""FP16 ONNX files for TensorRT 11, whose strongly typed networks take precision from the model: it has no
FP16 builder flag, so an engine built from the fp32 file is an FP32 engine whatever it is called.

onnxconverter-common's float16 converter (MIT) does the conversion. NVIDIA's recommended ModelOpt AutoCast
wraps the same converter, but ModelOpt pins onnxruntime-gpu and an onnx version this workstation's venv
cannot take. Float weights and tensors become float16; the uint8 image input and the float32 outputs stay as
the contract says (keep_io_types), and the input's uint8 -> float Cast stays float32 with a float16 Cast after
it. A QDQ file is first moved to opset 19, the first where Q/DQ take float16 scales, so its float layers run
in FP16 and its quantized layers stay INT8 (what TensorRT 10 built with the FP16 and INT8 flags).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import version_converter
from onnxconverter_common import float16

from deploy.contract import Contract
from deploy.runtime import OrtModel
from deploy.trt_engine import fp16_path
from export.onnx_export import save_atomic, write_contract

QDQ_FP16_OPSET = 19
# relative L2 error ||a - b|| / ||b|| (the worst output and input; 0.01 is an SQNR of 40 dB): FP16 rounding,
# not a broken graph
PARITY_TOL = 0.01
# a QDQ file's FP16 rounding moves values across INT8 rounding boundaries, and the flips re-draw the
# quantization noise: the FP16 QDQ file may be as far from the fp32 model as the QDQ file is (x 1.25) plus
# FP16's own rounding (PARITY_TOL), not further
QDQ_NOISE_FACTOR = 1.25


def opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def convert(model: onnx.ModelProto) -> onnx.ModelProto:
    """float32 -> float16 inside the graph; inputs, outputs and the contract metadata as they were."""
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node) and opset(model) < 19:
        model = version_converter.convert_version(model, QDQ_FP16_OPSET)
    for i, n in enumerate(model.graph.node):  # the converter names its casts after their node: the INT8 files
        n.name = n.name or f"node_{i}"          # have none (export.quantize.compact), and two Casts would clash
    with warnings.catch_warnings():  # "the float32 number 2.6e-08 will be truncated to 1e-07", per weight
        warnings.simplefilter("ignore", UserWarning)
        # the converter's own block list (ops without float16 kernels or inputs, e.g. Resize's scales), and the
        # graph's Casts by name: "Cast" as an op type would also match the Casts the converter adds, forever
        casts = [n.name for n in model.graph.node if n.op_type == "Cast"]
        half = float16.convert_float_to_float16(model, keep_io_types=True, node_block_list=casts)
    # the converter leaves the old float32 annotation beside the new float16 one for a blocked node's output;
    # value_info is only a hint (ONNX Runtime and TensorRT infer types), so none is kept rather than a wrong one
    del half.graph.value_info[:]
    return half


def write_fp16(src: Path, contract: Contract) -> Path:
    """Write fp16_path(src) from the exported `src` and its contract (precision fp16, or int8 for a QDQ file)."""
    half = convert(onnx.load(src))
    precision = "int8" if contract.precision == "int8" else "fp16"
    write_contract(half, dataclasses.replace(contract, precision=precision))
    onnx.checker.check_model(half)
    out = fp16_path(src)
    save_atomic(half, out)
    return out


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b|| / ||b||: scale-free, so a one-epoch model's near-constant logits are judged like a trained one's."""
    return float(np.linalg.norm((a - b).ravel()) / max(float(np.linalg.norm(b.ravel())), 1e-12))


def model_error(a: Path, b: Path, inputs: list[np.ndarray]) -> float:
    """rel_l2 of model a's outputs against model b's, worst output and input (both run by ONNX Runtime)."""
    ma, mb = OrtModel(a, threads=1), OrtModel(b, threads=1)
    return max(rel_l2(u, v) for x in inputs for u, v in zip(ma.infer(x), mb.infer(x), strict=True))


def export_fp16(src: Path, inputs: list[np.ndarray], fp32: Path | None = None,
                ranked: tuple[Callable[[Path], float], float] | None = None) -> tuple[Path, float]:
    """write_fp16 + its check; a file outside the tolerance is deleted and refused, never shipped. A QDQ `src`
    is checked against the `fp32` model it quantizes: its FP16 file must not be further from it than it is.

    `ranked` = (val metric of a file, max drop) for outputs that are ranked lists (top-K rows): there FP16
    rounding swaps near-tied rows, which moves whole rows, so the FP16 file may lose at most max drop of
    `src`'s val accuracy instead."""
    contract = OrtModel(src).contract
    out = write_fp16(src, contract)
    if ranked is not None:
        metric, tol = ranked
        err, what = metric(src) - metric(out), f"in val accuracy from {src.name}"
    elif contract.precision == "int8":
        noise = model_error(src, fp32, inputs)
        err, tol = model_error(out, fp32, inputs), QDQ_NOISE_FACTOR * noise + PARITY_TOL
        what = f"from {fp32.name} (the QDQ file itself: {noise:.4f})"
    else:
        err, tol, what = model_error(out, src, inputs), PARITY_TOL, f"from {src.name}"
    if err > tol:
        out.unlink()
        raise RuntimeError(f"{out}: FP16 outputs differ {what} by {err:.4f} (> {tol:.4f}); not exported")
    return out, err
