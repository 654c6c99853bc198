"""Per-tensor quantization sensitivity with onnxruntime.quantization.qdq_loss_debug.

For every quantized activation: `qdq_sqnr`, the SQNR (dB) of the tensor before vs after its own Q/DQ pair
(local rounding/clipping noise), and `xmodel_sqnr`, the SQNR of the float model's tensor vs the QDQ model's
(noise accumulated up to that point). Low qdq_sqnr marks the tensors whose own quantization hurts most:
the candidates to keep in float.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import onnx
from onnxruntime.quantization.qdq_loss_debug import (
    collect_activations,
    compute_activation_error,
    create_activation_matching,
    modify_model_output_intermediate_tensors,
)

from export.quantize import ImageCalibrationReader


def sensitivity(fp32_path: Path, int8_path: Path, images: Sequence[Path], spec) -> list[dict]:
    """-> rows {tensor, consumers, qdq_sqnr, xmodel_sqnr}, worst (lowest qdq_sqnr) first."""
    fp32 = onnx.load(fp32_path)
    consumers: dict[str, list[str]] = {}
    for n in fp32.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n.name)
    name = fp32.graph.input[0].name
    with tempfile.TemporaryDirectory() as tmp:
        aug_f, aug_q = Path(tmp) / "f.onnx", Path(tmp) / "q.onnx"
        modify_model_output_intermediate_tensors(str(fp32_path), str(aug_f))
        modify_model_output_intermediate_tensors(str(int8_path), str(aug_q))
        f_act = collect_activations(str(aug_f), ImageCalibrationReader(images, spec, name))
        q_act = collect_activations(str(aug_q), ImageCalibrationReader(images, spec, name))
    errors = compute_activation_error(create_activation_matching(q_act, f_act))
    rows = [{"tensor": t, "consumers": consumers.get(t, []), "qdq_sqnr": float(e["qdq_err"]),
             "xmodel_sqnr": float(e.get("xmodel_err", float("nan")))} for t, e in errors.items()]
    return sorted(rows, key=lambda r: r["qdq_sqnr"])


def to_markdown(rows: list[dict], top: int = 20) -> str:
    lines = ["| tensor | consumed by | qdq SQNR dB | float-vs-int8 SQNR dB |", "|---|---|---|---|"]
    for r in rows[:top]:
        lines.append(f"| `{r['tensor']}` | {', '.join(r['consumers'][:3])} | {r['qdq_sqnr']:.1f} | "
                     f"{r['xmodel_sqnr']:.1f} |")
    return "\n".join(lines) + "\n"
