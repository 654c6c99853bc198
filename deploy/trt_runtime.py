"""Native TensorRT runner (`python -m deploy run --backend trt`): same contract, pre- and postprocessing as
OrtModel, inference by an engine built on this device from the shipped ONNX (deploy.trt_engine caches it
per GPU and TensorRT version; a stale engine is rebuilt, never loaded).

TensorRT 10/11 API: named I/O tensors, `set_tensor_address` + `execute_async_v3` on a CUDA stream. Device
memory and copies through cuda-python's runtime bindings. Input and output buffers are allocated once and
reused for every frame. tensorrt and cuda-python are imported lazily; nothing here imports torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from deploy.contract import Contract
from deploy.runtime import ContractModel
from deploy.trt_engine import TensorRTUnavailable, cached_engine, import_tensorrt


def _cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            raise TensorRTUnavailable("cuda-python is not installed (pip install cuda-python)") from None
    return cudart


def _check(result):
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    return rest[0] if len(rest) == 1 else rest


def read_contract(onnx_path: Path) -> Contract:
    """The contract from the ONNX metadata (an ORT session on CPU only reads it; the engine runs)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    meta = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"]).get_modelmeta()
    return Contract.from_metadata(meta.custom_metadata_map, str(onnx_path))


class TrtModel(ContractModel):
    """One exported model run by a TensorRT engine; pre- and postprocessing from ContractModel."""

    def __init__(self, onnx_path: str | Path, precision: str, cache_dir: str | Path = "engines"):
        trt = import_tensorrt()
        self.cudart = _cudart()
        self.path = Path(onnx_path)
        self.contract = read_contract(self.path)
        engine_file, self.built = cached_engine(self.path, precision, Path(cache_dir))
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(engine_file.read_bytes())
        if self.engine is None:
            raise RuntimeError(f"{engine_file}: TensorRT could not deserialize the engine; delete it to rebuild")
        self.context = self.engine.create_execution_context()
        self.stream = _check(self.cudart.cudaStreamCreate())
        self.inputs, self.outputs, self.device = {}, {}, {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            shape = tuple(self.engine.get_tensor_shape(name))
            host = np.empty(shape, dtype=trt.nptype(self.engine.get_tensor_dtype(name)))
            self.device[name] = _check(self.cudart.cudaMalloc(host.nbytes))
            self.context.set_tensor_address(name, int(self.device[name]))
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self.inputs if is_input else self.outputs)[name] = host
        self.output_names = [n for n in self.contract.outputs if n in self.outputs]
        self.contract.check_outputs({n: list(h.shape) for n, h in self.outputs.items()}, str(self.path))

    def infer(self, tensor: np.ndarray) -> list[np.ndarray]:
        """(3, H, W) or (1, 3, H, W) uint8 -> outputs in contract order (copies of the reused buffers)."""
        cudart = self.cudart
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        ((name, host),) = self.inputs.items()
        np.copyto(host, tensor.reshape(host.shape))
        _check(cudart.cudaMemcpyAsync(self.device[name], host.ctypes.data, host.nbytes, h2d, self.stream))
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError(f"{self.path}: TensorRT execution failed")
        for n in self.output_names:
            out = self.outputs[n]
            _check(cudart.cudaMemcpyAsync(out.ctypes.data, self.device[n], out.nbytes, d2h, self.stream))
        _check(cudart.cudaStreamSynchronize(self.stream))
        return [self.outputs[n].copy() for n in self.output_names]

    def __del__(self):
        for ptr in getattr(self, "device", {}).values():
            self.cudart.cudaFree(ptr)
