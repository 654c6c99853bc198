"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization") on an fp32 ONNX graph.

For Conv1 -> [ReLU] -> Conv2 with nothing else reading Conv1's output, scaling output channel i of Conv1
(weights and bias) by 1/s_i and input channel i of Conv2 by s_i leaves the function unchanged, because
ReLU(x / s) = ReLU(x) / s for s > 0. With s_i = sqrt(r1_i / r2_i) (r: the channel's largest |weight|) both
layers end up with the same range per channel, sqrt(r1_i * r2_i), which is what lets a depthwise or
expansion conv take one INT8 weight scale for the whole tensor instead of one per channel. On a small model
that matters for size: a per-channel scale is 4 bytes against 9 INT8 weights of a 3x3 depthwise channel.

Only ReLU (and no activation) sit between the pairs: Hardswish, sigmoid gates and residual Adds are not
scale-equivariant, so those layers keep per-channel scales.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

ITERATIONS = 20  # a conv sits in two pairs (as Conv2 then Conv1); sweeps until the scales settle
# A conv weight goes per-tensor (one scale) when INT8 rounding stays this far below the signal in every
# output channel: no worse than what INT8 activations leave anyway (float-vs-int8 SQNR of 20-35 dB in the
# sensitivity tables)
PER_TENSOR_MIN_SQNR_DB = 30.0


def _group(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "group"), 1)


def equalizable_pairs(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, onnx.NodeProto]]:
    """(Conv1, Conv2) pairs joined by a single path through at most one ReLU, Conv2 dense or depthwise, each
    with weights of its own."""
    g = model.graph
    dims = {t.name: list(t.dims) for t in g.initializer}
    outputs = {o.name for o in g.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def own_weights(n: onnx.NodeProto) -> bool:  # 2-D conv weights of its own (not a head shared per level)
        return len(dims.get(n.input[1], [])) == 4 and all(i in dims and len(consumers[i]) == 1
                                                          for i in n.input[1:] if i)

    pairs = []
    for n1 in g.node:
        if n1.op_type != "Conv" or not own_weights(n1) or n1.output[0] in outputs:
            continue
        nxt = consumers.get(n1.output[0], [])
        if len(nxt) == 1 and nxt[0].op_type == "Relu" and nxt[0].output[0] not in outputs:
            nxt = consumers.get(nxt[0].output[0], [])
        if len(nxt) != 1 or nxt[0].op_type != "Conv" or not own_weights(nxt[0]):
            continue
        n2 = nxt[0]
        c, c2 = dims[n1.input[1]][0], dims[n2.input[1]][0]
        if _group(n2) == 1 or (_group(n2) == c == c2):  # dense, or depthwise without a channel multiplier
            pairs.append((n1, n2))
    return pairs


def equalize(model: onnx.ModelProto) -> list[str]:
    """Equalize every pair in place; returns the weight initialisers that were rescaled."""
    inits = {t.name: t for t in model.graph.initializer}
    w = {k: numpy_helper.to_array(t).astype(np.float64) for k, t in inits.items()}
    pairs = equalizable_pairs(model)
    for _ in range(ITERATIONS):
        for n1, n2 in pairs:
            w1, w2 = w[n1.input[1]], w[n2.input[1]]  # (C, Cin/g, kh, kw), (Cout, C, kh, kw) or (C, 1, kh, kw)
            dw = _group(n2) > 1
            r1 = np.abs(w1).max(axis=(1, 2, 3))
            r2 = np.abs(w2).max(axis=(1, 2, 3)) if dw else np.abs(w2).max(axis=(0, 2, 3))
            s = np.where((r1 > 0) & (r2 > 0), np.sqrt(r1 / np.maximum(r2, 1e-30)), 1.0)  # (C,)
            w1 /= s[:, None, None, None]
            if len(n1.input) > 2 and n1.input[2]:
                w[n1.input[2]] = w[n1.input[2]] / s
            w2 *= s[:, None, None, None] if dw else s[None, :, None, None]
    changed = sorted({n.input[i] for pair in pairs for n in pair for i in (1, 2) if len(n.input) > i and n.input[i]})
    for k in changed:
        inits[k].CopyFrom(numpy_helper.from_array(w[k].astype(np.float32), k))
    return [k for k in changed if len(w[k].shape) == 4]


def weight_sqnr_db(weight: np.ndarray, per_channel: bool) -> float:
    """SQNR (dB) of symmetric INT8 rounding of a conv weight (C, ...) with a scale per output channel or one
    per tensor, taken in the worst output channel: a channel rounded to nothing is a feature lost, however
    little of the tensor's energy it held."""
    axes = tuple(range(1, weight.ndim))
    amax = np.abs(weight).max(axis=axes, keepdims=True) if per_channel else np.abs(weight).max()
    scale = np.maximum(amax, 1e-12) / 127
    err = weight - np.clip(np.round(weight / scale), -127, 127) * scale
    signal, noise = (weight**2).sum(axis=axes), np.maximum((err**2).sum(axis=axes), 1e-30)
    return float(10 * np.log10(signal[signal > 0] / noise[signal > 0]).min()) if (signal > 0).any() else np.inf


def per_tensor_weights(model: onnx.ModelProto, min_sqnr_db: float = PER_TENSOR_MIN_SQNR_DB) -> list[str]:
    """Conv weights that keep at least `min_sqnr_db` with one INT8 scale for the whole tensor."""
    inits = {t.name: t for t in model.graph.initializer}
    names = {n.input[1] for n in model.graph.node if n.op_type == "Conv" and n.input[1] in inits}
    return sorted(k for k in names if weight_sqnr_db(numpy_helper.to_array(inits[k]), False) >= min_sqnr_db)
