"""Native TensorRT runner (`python -m deploy run --backend trt`): same contract, pre- and postprocessing as
OrtModel, inference by an engine built on this device from the shipped ONNX (deploy.trt_cache caches it per
device, TensorRT version and build recipe; a stale engine is rebuilt, never loaded).

TensorRT 10/11 API: named I/O tensors, `set_input_shape` (dynamic batch) and `set_tensor_address` +
`execute_async_v3` on a CUDA stream. Device buffers and pinned host buffers are allocated once, for the
largest batch the engine takes, and reused for every frame. tensorrt and cuda-python are imported lazily;
nothing here imports torch.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import onnxruntime as ort

from deploy.contract import Contract, ContractError
from deploy.runtime import ContractModel, ModelLoadError
from deploy.trt_cache import cached_engine, forget
from deploy.trt_engine import BuildRecipe, TensorRTError, cuda_call, import_cudart, import_tensorrt

REBUILD = "delete the engine cache folder to rebuild, or re-export the model"


def read_contract(onnx_path: Path) -> Contract:
    """The contract from the ONNX metadata (an ORT session on CPU only reads it; the engine runs)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        meta = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"]).get_modelmeta()
    except Exception as e:  # ORT raises its own Fail/InvalidProtobuf types
        raise ModelLoadError(f"{onnx_path}: not a loadable ONNX model ({type(e).__name__}); re-export it") from None
    return Contract.from_metadata(meta.custom_metadata_map, str(onnx_path))


def check_engine_io(io: dict[str, tuple[bool, np.dtype, tuple]], contract: Contract, source: str) -> tuple[str, list]:
    """The engine's tensors {name: (is_input, dtype, shape)} against the contract, as OrtModel checks its
    session: one uint8 input of the contract's size and every contract output present. -> (input, outputs)."""
    inputs = [n for n, (is_input, _, _) in io.items() if is_input]
    if len(inputs) != 1:
        raise ContractError(f"{source}: the engine has inputs {inputs}, the contract one image input; {REBUILD}")
    name = inputs[0]
    _, dtype, shape = io[name]
    H, W = contract.preprocess.input_size
    if np.dtype(dtype) != np.uint8:
        raise ContractError(f"{source}: engine input {name} is {np.dtype(dtype)}, the contract expects uint8 frames; "
                            f"{REBUILD}")
    if len(shape) != 4 or list(shape[2:4]) != [H, W]:
        raise ContractError(f"{source}: engine input shape {tuple(shape)} disagrees with the contract's input_size "
                            f"{H}x{W}; {REBUILD}")
    missing = [n for n in contract.outputs if n not in io or io[n][0]]
    if missing:
        raise ContractError(f"{source}: the engine has no output {missing} of the contract's {contract.outputs}; "
                            f"{REBUILD}")
    contract.check_outputs({n: list(io[n][2]) for n in contract.outputs}, source)
    return name, list(contract.outputs)


class TrtModel(ContractModel):
    """One exported model run by a TensorRT engine; pre- and postprocessing from ContractModel."""

    def __init__(self, onnx_path: str | Path, precision: str, cache_dir: str | Path = "engines", max_batch: int = 8):
        self.trt = import_tensorrt()
        self.cudart = import_cudart()
        self.path = Path(onnx_path)
        if not self.path.is_file():
            raise ModelLoadError(f"{self.path}: no such model file; run `make export` or check the path")
        self.contract = read_contract(self.path)
        self.device, self.host, self.stream = {}, {}, None
        recipe = BuildRecipe(precision, max_batch=max_batch)
        engine_file, self.built = cached_engine(self.path, recipe, Path(cache_dir))
        self.engine = self._deserialize(engine_file)
        if self.engine is None and not self.built:  # cached bytes this TensorRT refuses: stale, rebuild once
            forget(engine_file)
            engine_file, self.built = cached_engine(self.path, recipe, Path(cache_dir))
            self.engine = self._deserialize(engine_file)
        if self.engine is None:
            raise TensorRTError(f"{engine_file}: TensorRT could not deserialize the engine it built; {REBUILD}")
        self.engine_file = engine_file
        self.context = self.engine.create_execution_context()
        io = self._io_table()
        self.input_name, self.output_names = check_engine_io(io, self.contract, str(self.path))
        self.dynamic = tuple(io[self.input_name][2])[0] < 0
        self.stream = cuda_call(self.cudart.cudaStreamCreate(), "cudaStreamCreate")
        self._allocate(io)

    def _deserialize(self, engine_file: Path):
        runtime = self.trt.Runtime(self.trt.Logger(self.trt.Logger.WARNING))
        try:
            return runtime.deserialize_cuda_engine(engine_file.read_bytes())
        except (RuntimeError, TypeError):  # some TensorRT versions raise instead of returning None
            return None

    def _io_table(self) -> dict[str, tuple[bool, np.dtype, tuple]]:
        e, trt = self.engine, self.trt
        names = [e.get_tensor_name(i) for i in range(e.num_io_tensors)]
        return {n: (e.get_tensor_mode(n) == trt.TensorIOMode.INPUT, np.dtype(trt.nptype(e.get_tensor_dtype(n))),
                    tuple(e.get_tensor_shape(n))) for n in names}

    def _allocate(self, io: dict) -> None:
        """Pinned host and device buffers for the largest input the engine takes and the outputs it gives."""
        shape = tuple(io[self.input_name][2])
        if self.dynamic:
            shape = tuple(self.engine.get_tensor_profile_shape(self.input_name, 0)[2])
            self._set_batch(shape)
        for name in [self.input_name, *self.output_names]:
            dims = shape if name == self.input_name else tuple(self.context.get_tensor_shape(name))
            self.host[name] = self._pinned(dims, io[name][1])
            self.device[name] = cuda_call(self.cudart.cudaMalloc(self.host[name].nbytes), "cudaMalloc")
            self.context.set_tensor_address(name, int(self.device[name]))

    def _pinned(self, shape: tuple, dtype: np.dtype) -> np.ndarray:
        """Page-locked host memory: the copies to and from the GPU run without a staging copy."""
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        ptr = int(cuda_call(self.cudart.cudaMallocHost(nbytes), "cudaMallocHost"))
        self._host_ptrs = [*getattr(self, "_host_ptrs", []), ptr]
        return np.frombuffer((ctypes.c_byte * nbytes).from_address(ptr), dtype=dtype).reshape(shape)

    def _set_batch(self, shape: tuple) -> None:
        if not self.context.set_input_shape(self.input_name, shape):
            raise TensorRTError(f"{self.path}: the engine refused input shape {shape}; {REBUILD}")

    def infer(self, tensor: np.ndarray) -> list[np.ndarray]:
        """(3, H, W) or (B, 3, H, W) uint8 -> outputs in contract order (copies of the reused buffers)."""
        x = tensor[None] if tensor.ndim == 3 else tensor
        host = self.host[self.input_name]
        if x.dtype != np.uint8 or x.shape[1:] != host.shape[1:] or not 1 <= x.shape[0] <= host.shape[0]:
            raise ContractError(f"{self.path}: input {x.dtype} {x.shape}, the engine takes uint8 "
                                f"(1..{host.shape[0]}, {', '.join(map(str, host.shape[1:]))})")
        if self.dynamic:
            self._set_batch(x.shape)
        h2d = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        src = host[: x.shape[0]]
        np.copyto(src, x)
        cuda_call(self.cudart.cudaMemcpyAsync(self.device[self.input_name], src.ctypes.data, src.nbytes, h2d,
                                              self.stream), "cudaMemcpyAsync")
        if not self.context.execute_async_v3(self.stream):
            raise TensorRTError(f"{self.path}: TensorRT execution failed (see its log); {REBUILD}")
        outs = []
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            out = self.host[name].reshape(-1)[: int(np.prod(shape))].reshape(shape)
            cuda_call(self.cudart.cudaMemcpyAsync(out.ctypes.data, self.device[name], out.nbytes, d2h, self.stream),
                      "cudaMemcpyAsync")
            outs.append(out)
        cuda_call(self.cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        return [o.copy() for o in outs]

    def close(self) -> None:
        """Free the device and pinned buffers and destroy the stream (idempotent; also run at garbage collection)."""
        cudart = getattr(self, "cudart", None)
        if cudart is None:
            return
        for ptr in getattr(self, "device", {}).values():
            cudart.cudaFree(ptr)
        for ptr in getattr(self, "_host_ptrs", []):
            cudart.cudaFreeHost(ptr)
        if getattr(self, "stream", None) is not None:
            cudart.cudaStreamDestroy(self.stream)
        self.device, self.host, self._host_ptrs, self.stream = {}, {}, [], None

    def __del__(self):
        self.close()
