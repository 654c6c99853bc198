"""ONNX Runtime model: load, read the contract, run preprocess -> inference -> postprocess."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from deploy.contract import Contract, ContractError
from deploy.errors import EdgeVisionError
from deploy.postprocess import Detections, decode_detector, decode_mask
from deploy.preprocess import Letterbox, preprocess


class ModelLoadError(EdgeVisionError, ValueError):
    """A model file that cannot be loaded (the message names the file and the fix)."""


EXECUTION_PROVIDERS = {"cpu": ["CPUExecutionProvider"],  # --ep name -> ONNX Runtime providers, in order
                       "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
                       "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]}


def session_options(threads: int | None, exact: bool = False) -> ort.SessionOptions:
    """`exact`: no graph optimisation, so an INT8 QDQ file runs as written (DequantizeLinear -> float op ->
    QuantizeLinear), the same on every CPU: the reference the gate holds the integer kernels against."""
    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_DISABLE_ALL if exact
                                   else ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    so.intra_op_num_threads = threads or os.cpu_count() or 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3  # warnings about unused initialisers etc. are noise on devices
    return so


class ContractModel:
    """An exported model configured by its own contract: the pre- and postprocessing every backend shares.
    A backend (OrtModel here, deploy.trt_runtime.TrtModel) sets `path` and `contract` and implements infer."""

    path: Path
    contract: Contract

    @property
    def task(self) -> str:
        return self.contract.task

    def infer(self, tensor: np.ndarray) -> list[np.ndarray]:
        """(3, H, W) or (B, 3, H, W) uint8 -> raw outputs, in contract order."""
        raise NotImplementedError

    def postprocess(self, outputs: list[np.ndarray], lb: Letterbox) -> Detections | np.ndarray:
        if self.task == "detector":
            return decode_detector(outputs, lb, **self.contract.postprocess)
        return decode_mask(outputs[0], lb)

    def prepare(self, img_bgr: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """BGR frame -> the exact uint8 input tensor this model gets, by its own contract."""
        return preprocess(img_bgr, self.contract.preprocess)

    def predict(self, img_bgr: np.ndarray) -> Detections | np.ndarray:
        tensor, lb = self.prepare(img_bgr)
        return self.postprocess(self.infer(tensor), lb)


class OrtModel(ContractModel):
    """One exported model (detector or segmenter) behind ONNX Runtime, configured by its own metadata."""

    def __init__(self, path: str | Path, threads: int | None = None, providers: list[str] | None = None,
                 exact: bool = False):
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelLoadError(f"{self.path}: no such model file; run `make export` or check the path")
        try:
            self.session = ort.InferenceSession(
                str(self.path), session_options(threads, exact), providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as e:  # ORT raises its own Fail/InvalidProtobuf types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelLoadError(f"{self.path}: not a loadable ONNX model ({first}); re-export it") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        self.contract = Contract.from_metadata(meta, str(self.path))
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self._check_consistent(inp)

    def _check_consistent(self, inp: ort.NodeArg) -> None:
        c = self.contract
        H, W = c.preprocess.input_size
        expected = [H, W]
        dims = inp.shape[2:4] if c.preprocess.layout == "NCHW" else inp.shape[1:3]
        if [d for d in dims if isinstance(d, int)] and list(dims) != expected:
            raise ContractError(
                f"{self.path}: input shape {inp.shape} disagrees with the contract's input_size {H}x{W}; "
                "re-export the model"
            )
        if inp.type != "tensor(uint8)":
            raise ContractError(f"{self.path}: input type {inp.type}, the contract expects uint8 frames")
        names = [o.name for o in self.session.get_outputs()]
        if names != c.outputs:
            raise ContractError(f"{self.path}: outputs {names} disagree with the contract's {c.outputs}")
        c.check_outputs({o.name: o.shape for o in self.session.get_outputs()}, str(self.path))

    def infer(self, tensor: np.ndarray) -> list[np.ndarray]:
        """(3, H, W) or (B, 3, H, W) uint8 -> raw outputs, in contract order."""
        if tensor.ndim == 3:
            tensor = tensor[None]
        return self.session.run(None, {self.input_name: tensor})
