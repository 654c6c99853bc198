"""python -m export.check_trt MODEL.onnx [...]   Lint a QDQ ONNX for TensorRT explicit quantization.

Runs anywhere (onnx only, no TensorRT, no GPU), so CI catches a model TensorRT would refuse or run in
the wrong precision. Rules:
  - opset 13 (per-channel Q/DQ) to 20 (the newest TensorRT 10.3's parser, JetPack 6, takes), standard-domain
    ops only, every op in TensorRT's ONNX parser list;
  - Q/DQ are INT8 with zero point 0 (symmetric): TensorRT has no asymmetric or UINT8 quantization, and a
    QuantizeLinear without an explicit zero point produces UINT8 (the ONNX default);
  - activation scales are per-tensor; per-channel scales only on weight initialisers, along axis 0;
  - biases stay float (no INT32 DequantizeLinear);
  - every Q is followed by a DQ (TensorRT fuses Q/DQ pairs around the layers it runs in INT8).
Exit code 0 clean, 1 violations, 2 unreadable file.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

# Operators of TensorRT 10's ONNX parser that an exported detector/segmenter may contain (onnx-tensorrt's
# operators.md); anything else is reported so it is found before the build on the device.
TRT_OPS = frozenset("""
Abs Add And ArgMax ArgMin AveragePool BatchNormalization Cast Ceil Clip Concat Constant ConstantOfShape Conv
ConvTranspose DepthToSpace DequantizeLinear Div Einsum Elu Equal Erf Exp Expand Flatten Floor Gather
GatherElements GatherND Gemm GlobalAveragePool GlobalMaxPool Greater GreaterOrEqual HardSigmoid HardSwish
Identity InstanceNormalization LayerNormalization LeakyRelu Less LessOrEqual Log MatMul Max MaxPool Min Mul
Neg NonMaxSuppression Not Or Pad Pow PRelu QuantizeLinear Range Reciprocal ReduceL2 ReduceMax ReduceMean
ReduceMin ReduceProd ReduceSum Relu Reshape Resize ScatterElements ScatterND Shape Sigmoid Sign Sin Slice
Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tanh Tile TopK Transpose Unsqueeze Where Xor
""".split())
MIN_OPSET, MAX_OPSET = 13, 20  # per-channel Q/DQ; TensorRT 10.x's ONNX parser (onnx-tensorrt operators.md)


@dataclass
class Finding:
    rule: str
    node: str
    message: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.node}: {self.message}"


def check_model(model: onnx.ModelProto) -> list[Finding]:
    out: list[Finding] = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        out.append(Finding("opset", "model", f"opset {opset} < {MIN_OPSET}: per-channel Q/DQ needs {MIN_OPSET}"))
    elif opset > MAX_OPSET:
        out.append(Finding("opset", "model", f"opset {opset} > {MAX_OPSET}: TensorRT 10.3's parser (JetPack 6) "
                                             f"refuses it; export with opset {MAX_OPSET} or lower"))
    inits = {i.name: i for i in model.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    for n in model.graph.node:
        name = n.name or n.output[0]
        if n.domain not in ("", "ai.onnx"):
            out.append(Finding("domain", name, f"op {n.domain}::{n.op_type} is not a standard ONNX op"))
            continue
        if n.op_type not in TRT_OPS:
            out.append(Finding("op", name, f"{n.op_type} is not in TensorRT's ONNX operator list"))
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        has_zp = len(n.input) > 2 and bool(n.input[2])
        if n.op_type == "QuantizeLinear" and not has_zp:
            out.append(Finding("dtype", name, "no explicit zero point: the output type defaults to UINT8; "
                                              "TensorRT takes INT8 (give an int8 zero point of 0)"))
        zp = inits.get(n.input[2]) if has_zp else None
        scale = inits.get(n.input[1])
        data_init = inits.get(n.input[0]) if n.op_type == "DequantizeLinear" else None
        dtype = zp.data_type if zp is not None else (data_init.data_type if data_init is not None else None)
        if dtype is not None and dtype != onnx.TensorProto.INT8:
            kind = onnx.TensorProto.DataType.Name(dtype)
            rule = "bias" if dtype == onnx.TensorProto.INT32 else "dtype"
            out.append(Finding(rule, name, f"{kind} quantization; TensorRT takes INT8 (keep biases float)"))
        if zp is not None and np.any(numpy_helper.to_array(zp) != 0):
            out.append(Finding("symmetric", name, "non-zero zero point; TensorRT quantization is symmetric"))
        if scale is None:
            out.append(Finding("scale", name, "scale is not a constant initialiser"))
        elif numpy_helper.to_array(scale).size > 1:
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
            if data_init is None:
                out.append(Finding("per-channel", name, "per-channel scale on an activation; use per-tensor"))
            elif axis != 0:
                out.append(Finding("per-channel", name, f"weight quantized along axis {axis}; TensorRT expects 0"))
        after = consumers.get(n.output[0], [])
        if n.op_type == "QuantizeLinear" and not all(c.op_type == "DequantizeLinear" for c in after):
            out.append(Finding("pairing", name, "QuantizeLinear not followed by DequantizeLinear"))
    return out


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export.check_trt", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="QDQ ONNX files to check")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    worst = 0
    for p in args.models:
        try:
            model = onnx.load(p)
        except Exception as e:  # protobuf decode errors have no common base class
            print(f"error: {p}: not a readable ONNX file ({type(e).__name__}); re-export it", file=sys.stderr)
            return 2
        findings = check_model(model)
        qdq = sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
        print(f"{Path(p).name}: {qdq} Q/DQ nodes, {len(findings)} TensorRT issue(s)")
        for f in findings:
            print(f"  {f}")
        worst = max(worst, 1 if findings else 0)
    return worst


if __name__ == "__main__":
    sys.exit(main())
