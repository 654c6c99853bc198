"""Which part of quantization lost the accuracy: weights, activations, or their interaction.

Both variants are built from the fp32 file and the INT8 file the gate judges, so they share its calibration
exactly:
  weights only      the fp32 graph with every convolution's weights replaced by the INT8 file's dequantized
                    ones (its scales, zero points, per-channel axis);
  activations only  the fp32 graph with a QuantizeLinear/DequantizeLinear pair, at the INT8 file's scale and
                    zero point, on every activation the INT8 file quantizes.
  weights     = ref/fp32 - ref/int8-weights
  activations = ref/fp32 - ref/int8-activations
  interaction = quantization - weights - activations
"""

from __future__ import annotations

import copy
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from export.onnx_export import save_atomic

DQ_SUFFIX = "_DequantizeLinear_Output"  # onnxruntime.quantization names a dequantized activation <name> + this
Q_INPUT_SUFFIX = "_QuantizeLinear_Input"  # ... and a quantized graph output's float producer <name> + this


def _dequantize(node: onnx.NodeProto, inits: dict[str, np.ndarray]) -> np.ndarray:
    q = inits[node.input[0]].astype(np.float32)
    scale = inits[node.input[1]].astype(np.float32)
    zp = inits[node.input[2]].astype(np.float32) if len(node.input) > 2 and node.input[2] else np.float32(0)
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    shape = [1] * q.ndim
    if scale.ndim == 1 and scale.size > 1:
        shape[axis] = -1
    return (q - np.reshape(zp, shape if np.size(zp) > 1 else [])) * np.reshape(scale, shape if scale.size > 1 else [])


def _conv_key_order(graph: onnx.GraphProto, strip: bool) -> list[tuple[str, int]]:
    """(activation input name, occurrence) per Conv in graph order: how a Conv is found in the other file."""
    seen: dict[str, int] = defaultdict(int)
    keys = []
    for n in graph.node:
        if n.op_type == "Conv":
            name = n.input[0].removesuffix(DQ_SUFFIX) if strip else n.input[0]
            keys.append((name, seen[name]))
            seen[name] += 1
    return keys


def weights_only(fp32: onnx.ModelProto, int8: onnx.ModelProto) -> onnx.ModelProto:
    out = copy.deepcopy(fp32)
    q_inits = {i.name: numpy_helper.to_array(i) for i in int8.graph.initializer}
    producer = {o: n for n in int8.graph.node for o in n.output}
    q_convs = dict(zip(_conv_key_order(int8.graph, True), [n for n in int8.graph.node if n.op_type == "Conv"],
                       strict=True))
    f_inits = {i.name: i for i in out.graph.initializer}
    for key, conv in zip(_conv_key_order(out.graph, False), [n for n in out.graph.node if n.op_type == "Conv"],
                         strict=True):
        dq = producer.get(q_convs[key].input[1]) if key in q_convs else None
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in q_inits:
            continue  # a convolution the INT8 file keeps in float
        w = f_inits[conv.input[1]]
        w.CopyFrom(numpy_helper.from_array(_dequantize(dq, q_inits).astype(np.float32), w.name))
    return out


def activations_only(fp32: onnx.ModelProto, int8: onnx.ModelProto) -> onnx.ModelProto:
    out = copy.deepcopy(fp32)
    g = out.graph
    q_inits = {i.name: i for i in int8.graph.initializer}
    produced = {t for n in g.node for t in n.output}  # the uint8 image input is never re-quantized
    pairs = {}
    for q in int8.graph.node:  # a graph output's producer feeds its Q through <name>_QuantizeLinear_Input
        name = q.input[0].removesuffix(Q_INPUT_SUFFIX)
        if q.op_type == "QuantizeLinear" and name in produced:
            pairs[name] = q.input[1:]
    nodes = []
    for n in g.node:
        nodes.append(n)
        for t in [t for t in n.output if t in pairs]:  # producer -> t_float -> Q -> DQ -> t, consumers unchanged
            n.output[list(n.output).index(t)] = f"{t}_float"
            params = []
            for p in pairs[t]:
                init = copy.deepcopy(q_inits[p])
                init.name = f"{t}_{p}"
                g.initializer.append(init)
                params.append(init.name)
            nodes += [helper.make_node("QuantizeLinear", [f"{t}_float", *params], [f"{t}_q"], name=f"{t}_Q"),
                      helper.make_node("DequantizeLinear", [f"{t}_q", *params], [t], name=f"{t}_DQ")]
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]  # the renamed tensors' annotations would be stale
    return out


def write_variants(fp32_path: Path, int8_path: Path, folder: Path) -> dict[str, Path]:
    """{"weights": path, "activations": path} written into `folder`, with the fp32 file's contract."""
    fp32, int8 = onnx.load(fp32_path), onnx.load(int8_path)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for part, build in (("weights", weights_only), ("activations", activations_only)):
        model = build(fp32, int8)
        onnx.checker.check_model(model)
        out[part] = folder / f"{Path(fp32_path).stem}.{part}-only.onnx"
        save_atomic(model, out[part])
    return out


def weight_sqnr(fp32_path: Path, weights_path: Path, k: int = 5) -> list[dict]:
    """The k convolution weights the INT8 file quantizes worst: SQNR (dB) of the dequantized against fp32."""
    a = {i.name: numpy_helper.to_array(i) for i in onnx.load(fp32_path).graph.initializer}
    b = {i.name: numpy_helper.to_array(i) for i in onnx.load(weights_path).graph.initializer}
    rows = []
    for name, w in a.items():
        if w.ndim == 4 and name in b and not np.array_equal(w, b[name]):
            err = float(np.sum((w.astype(np.float64) - b[name]) ** 2))
            rows.append({"weight": name, "sqnr": float(10 * np.log10(max(float(np.sum(w.astype(np.float64) ** 2)),
                                                                         1e-30) / max(err, 1e-30)))})
    return sorted(rows, key=lambda r: r["sqnr"])[:k]


def split(cells: dict[str, float], quantization: float) -> dict[str, float]:
    w = cells["reference/fp32"] - cells["reference/int8-weights"]
    a = cells["reference/fp32"] - cells["reference/int8-activations"]
    return {"weights": w, "activations": a, "interaction": quantization - w - a}


def suggestion(parts: dict[str, float], worst_weights: list[dict], worst_activations: list[dict]) -> tuple[str, str]:
    """(the guilty part, the fix the export already offers for it)."""
    if parts["weights"] >= parts["activations"] and worst_weights:
        names = ", ".join(f"{r['weight']} ({r['sqnr']:.1f} dB)" for r in worst_weights[:3])
        return "weights", (f"worst-quantized weights: {names}; quantize them per-channel (export.equalize keeps a "
                           "conv per-tensor only above 30 dB) or keep those convolutions in float")
    if worst_activations:
        r = worst_activations[0]
        return "activations", (f"worst activation: {r['tensor']} ({r['qdq_sqnr']:.1f} dB, feeding "
                                f"{', '.join(r['consumers'])}); try export.calib_method entropy or percentile, "
                                "calibration frames like the deployed ones, or keep those convolutions in float")
    return "activations", "no per-layer evidence; try another export.calib_method"


def evidence(cells: dict[str, float], quantization: float, fp32_path: Path, weights_path: Path,
             worst_activations: list[dict]) -> dict:
    """The split, the guilty part, its worst layers and the fix to try (the gate's quantization_split)."""
    parts = split(cells, quantization)
    worst_weights = weight_sqnr(fp32_path, weights_path)
    guilty, fix = suggestion(parts, worst_weights, worst_activations)
    return {**parts, "guilty": guilty, "suggestion": fix, "worst_weights": worst_weights}
