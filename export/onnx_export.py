"""torch -> ONNX with the model contract in metadata_props, plus a parity check against torch."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import onnxslim
import torch
from torch import nn

from deploy.atomic import atomic_path
from deploy.contract import OUTPUT_NAMES, Contract
from deploy.preprocess import PreprocessSpec
from export.equalize import equalize

INPUT_NAME = "images"


def contract_from_checkpoint(ckpt: dict, precision: str = "fp32") -> Contract:
    return Contract(
        task=ckpt["task"],
        preprocess=PreprocessSpec.from_dict(ckpt["preprocess"]),
        class_names=list(ckpt["class_names"]),
        config_hash=ckpt["config_hash"],
        outputs=OUTPUT_NAMES[ckpt["task"]],
        precision=precision,
        postprocess=dict(ckpt.get("postprocess") or {}),
        drift=dict(ckpt.get("drift_reference") or {}),
    )


def write_contract(model: onnx.ModelProto, contract: Contract) -> None:
    keep = [p for p in model.metadata_props if not p.key.startswith("edge_vision.")]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for k, v in contract.to_metadata().items():
        model.metadata_props.add(key=k, value=v)


def save_atomic(model: onnx.ModelProto, path: str | Path) -> None:
    path = Path(path)
    with atomic_path(path) as tmp:
        onnx.save(model, tmp)


def export_onnx(model: nn.Module, contract: Contract, path: str | Path, opset: int = 18,
                dynamic_batch: bool = False) -> Path:
    """Export (B, 3, H, W) uint8 -> contract outputs. BN is folded and the graph simplified by onnxslim, then
    conv pairs are cross-layer equalized (export.equalize: same function, INT8-friendlier weight ranges)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    H, W = contract.preprocess.input_size
    x = torch.zeros(1, 3, H, W, dtype=torch.uint8)
    raw = path.with_name(path.stem + ".raw.onnx")
    dyn = {"x": {0: torch.export.Dim("batch", min=1, max=64)}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (x,), raw, input_names=[INPUT_NAME], output_names=contract.outputs,
                          opset_version=opset, dynamo=True, external_data=False, dynamic_shapes=dyn,
                          verbose=False)
    proto = onnxslim.slim(onnx.load(raw))  # constant folding, BN folding, dead-node removal
    raw.unlink()
    equalize(proto)
    write_contract(proto, contract)
    onnx.checker.check_model(proto)
    save_atomic(proto, path)
    return path


def parity(model: nn.Module, onnx_path: str | Path, inputs: list[np.ndarray]) -> float:
    """Max relative difference between torch and ONNX Runtime outputs over the given uint8 inputs."""
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for x in inputs:
        with torch.no_grad():
            ref = model.eval()(torch.from_numpy(x))
        ref = [r.numpy() for r in (ref if isinstance(ref, tuple) else (ref,))]
        got = sess.run(None, {sess.get_inputs()[0].name: x})
        for r, g in zip(ref, got, strict=True):
            worst = max(worst, float(np.abs(r - g).max() / (np.abs(r).max() + 1e-6)))
    return worst
