"""Static INT8 QDQ with ONNX Runtime, calibrated on training images through the deploy preprocessing.

Two files from one calibration reader, because the two runtimes want different graphs:
  - target "tensorrt" (`<model>.int8-trt.onnx`): symmetric INT8 activations (zero point 0), symmetric
    INT8 weights, float biases, Q/DQ on Conv inputs only (not on conv outputs: TensorRT fuses Conv+ReLU
    and requantizes for the next conv, the placement NVIDIA's own QAT tools produce): what TensorRT's
    explicit quantization takes.
    ONNX Runtime runs it too, but at half the fp32 speed on x86: with a zero point of 0 it cannot fold a
    ReLU into the conv before it, so every ReLU runs in float between a DequantizeLinear and a Quantize.
  - target "cpu" (`<model>.int8.onnx`, ONNX Runtime on x86 and phone CPUs): UINT8 activations with
    calibrated zero points (ReLUs fold away), symmetric INT8 weights, every QDQ-capable op
    quantized so ONNX Runtime keeps whole chains in NHWC int8, the output convs included (calibrated
    zero points keep the logits' range; on the demo detector mAP 0.4667 vs fp32 0.4654, and 0.1 ms less
    than running them in float). The decode after the output convs stays float. For the minimal
    backbones (x/255 input, see train.models.UnitInput) the input quantizer is fixed at scale 1/255, zero
    point 0, and the Cast/Mul/Quantize in front of the stem are replaced by the uint8 frame itself.
The TensorRT file keeps the output convs float: symmetric int8 logits collapse scores.
Weights take one scale per output channel, or one per tensor where that loses little in every channel
(export.equalize.per_tensor_weights; the fp32 export is cross-layer equalized so that most convs qualify):
a per-channel scale costs 4 bytes, against 9 INT8 weights in a 3x3 depthwise channel.

The CPU file is made for a kernel class (deploy.hardware): x86 CPUs without VNNI (AVX2, AVX-512 without VNNI)
add two u8 x s8 products in a saturating int16, so full-range INT8 weights clip there. For those targets, and for
"portable" (every x86 class and ARM alike: the default), the dense convs' weights take 7 bits ([-64, 64],
ONNX Runtime's reduce_range): 2 * 255 * 64 < 32767, so no kernel can saturate and every CPU computes the QDQ
graph exactly. Depthwise convs run on a 16-bit kernel everywhere and keep 8 bits. Targets whose kernels
accumulate exactly (VNNI, AMX, SSE4, ARM) keep 8-bit weights throughout.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from deploy.contract import Contract
from deploy.hardware import KERNEL_CLASSES, fingerprint, reduced_weights
from deploy.preprocess import PreprocessSpec, preprocess, read_image
from export.equalize import per_tensor_weights
from export.onnx_export import save_atomic, write_contract

TARGETS = ("cpu", "tensorrt")
KERNEL_TARGETS = ("portable", *KERNEL_CLASSES)  # what `export --target` takes, besides "auto" (this machine)
# attribute values ONNX assumes when absent: written out by the exporter, they are 100-200 bytes a node
DEFAULT_ATTRIBUTES = {"Conv": {"auto_pad": b"NOTSET", "dilations": [1, 1], "group": 1, "pads": [0, 0, 0, 0],
                               "strides": [1, 1]}}
CALIB_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}


class ImageCalibrationReader(CalibrationDataReader):
    """Feeds (1, 3, H, W) uint8 tensors made by deploy.preprocess, one image at a time."""

    def __init__(self, image_paths: Sequence[str | Path], spec: PreprocessSpec, input_name: str,
                 preprocess_fn=None):
        self.paths = list(image_paths)
        self.spec = spec
        self.input_name = input_name
        self.preprocess_fn = preprocess_fn or (lambda img: preprocess(img, spec))
        self._i = 0

    def get_next(self) -> dict | None:
        if self._i >= len(self.paths):
            return None
        tensor, _ = self.preprocess_fn(read_image(self.paths[self._i]))
        self._i += 1
        return {self.input_name: tensor[None]}

    def rewind(self) -> None:
        self._i = 0


def output_convs(model: onnx.ModelProto) -> list[str]:
    """Names of the Conv nodes nearest each graph output (walking back through non-Conv ops)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    found, seen = [], set()
    stack = [o.name for o in model.graph.output]
    while stack:
        t = stack.pop()
        node = producer.get(t)
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type == "Conv":
            found.append(node.name)
        else:
            stack.extend(node.input)
    return sorted(found)


def float_tail(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes downstream of the output convs (box decode, reshapes): they stay float."""
    heads = set(output_convs(model))
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    seen: set[str] = set()
    stack = [o for n in model.graph.node if n.name in heads for o in n.output]
    while stack:
        for n in consumers.get(stack.pop(), []):
            if n.name not in seen:
                seen.add(n.name)
                stack.extend(n.output)
    return sorted(seen)


def resolve_kernels(target: str) -> str:
    """An `export --target` value -> the kernel class the CPU file is made for ("auto": this machine's)."""
    if target == "auto":
        return fingerprint()["kernel_class"]
    if target not in KERNEL_TARGETS:
        raise ValueError(f"int8 kernel target {target!r} is not one of {['auto', *KERNEL_TARGETS]}")
    return target


def dense_conv_weights(model: onnx.ModelProto) -> list[str]:
    """The weights of the convs ONNX Runtime runs as an INT8 GEMM (group 1); depthwise convs have a kernel of
    their own that widens to 16 bits and cannot saturate."""
    inits = {t.name for t in model.graph.initializer}
    return sorted(n.input[1] for n in model.graph.node if n.op_type == "Conv" and n.input[1] in inits
                  and next((a.i for a in n.attribute if a.name == "group"), 1) == 1)


def weight_overrides(model: onnx.ModelProto, kernels: str) -> dict:
    """TensorQuantOverrides for the weights: one scale for the convs that lose little by it (export.equalize
    made most of them so), 7 bits for the dense convs where the kernels may saturate."""
    per_tensor = set(per_tensor_weights(model))
    reduce = set(dense_conv_weights(model)) if reduced_weights(kernels) else set()
    out = {}
    for w in sorted(per_tensor | reduce):
        o = {"symmetric": True} if w in per_tensor else {"axis": 0, "symmetric": True}
        out[w] = [{**o, "reduce_range": True} if w in reduce else o]
    return out


def unit_input_tensor(model: onnx.ModelProto) -> str | None:
    """The tensor x/255 at the graph input (Cast -> [Pad] -> Mul by 1/255: our UnitInput; or Div by 255: an
    adopted model, export.adopt), else None."""
    inits = {t.name: t for t in model.graph.initializer}
    t = model.graph.input[0].name
    for n in model.graph.node:
        if t not in n.input:
            continue
        if n.op_type in ("Cast", "Pad"):
            t = n.output[0]
        elif n.op_type in ("Mul", "Div"):
            const = next((inits[i] for i in n.input[1:] if i in inits), None)
            want = 1 / 255 if n.op_type == "Mul" else 255
            if const is not None and np.allclose(numpy_helper.to_array(const), want):
                return n.output[0]
            return None
    return None


def feed_uint8_input(model: onnx.ModelProto, unit: str) -> bool:
    """Replace Cast -> [Pad] -> Mul(1/255) or Div(255) -> Q(scale 1/255, zp 0, uint8) by the uint8 input (padded).

    Exact: the quantized value of x/255 at that scale is x. Returns False when the pattern is absent.
    """
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    q = next((n for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] == unit), None)
    if q is None or len(q.input) < 3:
        return False
    scale, zp = numpy_helper.to_array(inits[q.input[1]]), numpy_helper.to_array(inits[q.input[2]])
    if zp.dtype != np.uint8 or zp.any() or not np.isclose(scale, 1 / 255, rtol=1e-6):
        return False
    producer = {o: n for n in g.node for o in n.output}
    chain, stack, pads = {id(q)}, [q.input[0]], None
    while stack:  # everything between the graph input and this Q (Cast, Pad, Mul and their Q/DQ pairs)
        n = producer.get(stack.pop())
        if n is None or id(n) in chain:
            continue
        chain.add(id(n))
        stack.extend(n.input)
        if n.op_type == "Pad":
            pads = n.input[1]
    image = g.input[0].name
    if pads is None:
        new = helper.make_node("Identity", [image], [q.output[0]], name="input_uint8")
    else:
        g.initializer.append(numpy_helper.from_array(np.array(0, np.uint8), "input_pad_value"))
        new = helper.make_node("Pad", [image, pads, "input_pad_value"], [q.output[0]], name="input_uint8",
                               mode="constant")
    keep = [n for n in g.node if id(n) not in chain]
    del g.node[:]
    g.node.extend([new, *keep])
    return True


def compact(model: onnx.ModelProto, float_model: onnx.ModelProto) -> None:
    """Same graph, smaller file: per-channel overhead and quantizer-made names are most of a small model.

    - drops all-zero INT8 weight zero points (DequantizeLinear's zero point is optional, default 0);
    - no node names (optional in ONNX) and no Conv attributes at their default values;
    - short names for the tensors the quantizer made (weights, scales, Q outputs), keeping the float
      model's activation names and their `_DequantizeLinear_Output` tensors, which `qdq_loss_debug`
      matches on;
    - drops value_info (shape hints ONNX Runtime and TensorRT infer again) and unused initialisers.
    """
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    for n in g.node:
        if n.op_type == "DequantizeLinear" and len(n.input) == 3 and n.input[0] in inits and n.input[2] in inits:
            zp = numpy_helper.to_array(inits[n.input[2]])
            if zp.dtype == np.int8 and not zp.any():
                del n.input[2]
    keep = {i.name for i in float_model.graph.input} | {o.name for o in float_model.graph.output}
    keep |= {o for n in float_model.graph.node for o in n.output}
    keep |= {k + suffix for k in list(keep) for suffix in ("_DequantizeLinear_Output", "_QuantizeLinear_Input")}
    rename: dict[str, str] = {}
    for t in [t for n in g.node for t in (*n.input, *n.output)]:
        if t and t not in keep and t not in rename:
            rename[t] = f"q{len(rename)}"
    for n in g.node:
        n.name = ""  # optional in ONNX; nothing downstream reads the INT8 file's node names
        default = DEFAULT_ATTRIBUTES.get(n.op_type, {})
        attrs = [a for a in n.attribute if not (a.name in default and helper.get_attribute_value(a) == default[a.name])]
        del n.attribute[:]
        n.attribute.extend(attrs)
        n.input[:] = [rename.get(t, t) for t in n.input]
        n.output[:] = [rename.get(t, t) for t in n.output]
    used = {t for n in g.node for t in n.input}
    kept = [t for t in g.initializer if rename.get(t.name, t.name) in used]
    for t in kept:
        t.name = rename.get(t.name, t.name)
    del g.initializer[:]
    g.initializer.extend(kept)
    del g.value_info[:]


def prepare(fp32_path: str | Path, out: Path) -> None:
    """Shape inference for the quantizer. Not ORT's graph optimisation: it would bake ORT-specific fusions
    into a file TensorRT reads. ORT's symbolic pass fails on some foreign graphs (an adopted model's
    opset-18 ReduceMax feeding TopK): ONNX's own shape inference then suffices for static shapes."""
    try:
        quant_pre_process(str(fp32_path), str(out), skip_optimization=True)
    except (TypeError, KeyError, AssertionError, ValueError) as e:
        print(f"  {Path(fp32_path).name}: symbolic shape inference failed ({type(e).__name__}); "
              "using ONNX shape inference", flush=True)
        quant_pre_process(str(fp32_path), str(out), skip_optimization=True, skip_symbolic_shape=True)


def quantize_int8(fp32_path: str | Path, int8_path: str | Path, contract: Contract,
                  calib_images: Sequence[str | Path], method: str = "percentile",
                  exclude: Sequence[str] | None = None, preprocess_fn=None, target: str = "cpu",
                  float_decode: bool = True, overrides: dict | None = None, kernels: str = "portable") -> list[str]:
    """Write the QDQ INT8 model for `target` ("cpu" | "tensorrt"); returns the conv names kept in float.

    `kernels`: the kernel class (or "portable") the CPU file is made for (resolve_kernels); recorded in its
    contract. The TensorRT file is for TensorRT's own kernels and ignores it.
    `exclude` (Conv node names kept float) defaults to the output convs for TensorRT, none for the CPU.
    `float_decode=False` quantizes the CPU file's decode tail too and `overrides` (ORT TensorQuantOverrides)
    pins tensor scales: only the gate self-test's injected faults use them.
    """
    if method not in CALIB_METHODS:
        raise ValueError(f"calib_method {method!r} is not one of {sorted(CALIB_METHODS)}")
    if target not in TARGETS:
        raise ValueError(f"int8 target {target!r} is not one of {TARGETS}")
    if not calib_images:
        raise ValueError("no calibration images: the training split is empty")
    fp32 = onnx.load(fp32_path)
    if exclude is None:
        exclude = output_convs(fp32) if target == "tensorrt" else []
    excluded = sorted(set(exclude))
    input_name = fp32.graph.input[0].name
    kernels = kernels if target == "cpu" else "tensorrt"  # TensorRT's kernels accumulate in int32
    if target == "tensorrt":  # symmetric int8 everywhere and float bias: TensorRT's explicit quantization;
        # Q/DQ on conv inputs only (TensorRT fuses Conv+ReLU and quantizes the ReLU output for the next conv)
        options = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                   "OpTypesToExcludeOutputQuantization": ["Conv"],
                   "TensorQuantOverrides": weight_overrides(fp32, kernels)}
        act, op_types, skip = QuantType.QInt8, ["Conv"], excluded
    else:
        options = {"WeightSymmetric": True, "QuantizeBias": False}
        act, op_types, skip = QuantType.QUInt8, None, excluded + (float_tail(fp32) if float_decode else [])
        unit = unit_input_tensor(fp32)
        options["TensorQuantOverrides"] = {**weight_overrides(fp32, kernels), **dict(overrides or {})}
        if unit:
            options["TensorQuantOverrides"][unit] = [{"scale": np.array(1 / 255, np.float32),
                                                      "zero_point": np.array(0, np.uint8)}]
    with tempfile.TemporaryDirectory() as tmp:
        prep = Path(tmp) / "prep.onnx"
        prepare(fp32_path, prep)
        reader = ImageCalibrationReader(calib_images, contract.preprocess, input_name, preprocess_fn)
        out = Path(tmp) / "int8.onnx"
        args = dict(quant_format=QuantFormat.QDQ, per_channel=True, activation_type=act,
                    weight_type=QuantType.QInt8, nodes_to_exclude=skip, op_types_to_quantize=op_types,
                    extra_options=options, calibration_providers=["CPUExecutionProvider"])
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print progress chatter
                quantize_static(str(prep), str(out), reader, calibrate_method=CALIB_METHODS[method], **args)
        except ValueError as e:  # histogram methods fail on a tensor with no spread (a dead channel, a tiny model)
            if method == "minmax":
                raise
            print(f"  {method} calibration failed ({e}); calibrating with minmax instead", flush=True)
            reader.rewind()
            quantize_static(str(prep), str(out), reader, calibrate_method=CalibrationMethod.MinMax, **args)
        model = onnx.load(out)
    if target == "cpu" and unit_input_tensor(fp32):
        feed_uint8_input(model, unit_input_tensor(fp32))
    compact(model, fp32)
    write_contract(model, Contract(**{**contract.__dict__, "precision": "int8", "kernels": kernels}))
    onnx.checker.check_model(model)
    save_atomic(model, int8_path)
    return excluded


def sample_paths(paths: Sequence[Path], n: int, seed: int = 0) -> list[Path]:
    """n paths spread over the split (fixed seed), so calibration sees the whole distribution."""
    paths = list(paths)
    if len(paths) <= n:
        return paths
    idx = np.random.default_rng(seed).choice(len(paths), size=n, replace=False)
    return [paths[i] for i in sorted(idx)]


def file_mb(path: str | Path) -> float:
    return os.path.getsize(path) / 2**20
