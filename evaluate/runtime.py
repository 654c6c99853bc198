"""The deployed runtime, for the gate's third factor: the same model file and the same input tensors, run by the
reference runtime (ONNX Runtime on CPU, the gate's fixed settings) and by the runtime the device uses.

`--runtime SPEC` names the deployed runtime:
  ort:threads=N | ort:ep=cuda|tensorrt   another ONNX Runtime configuration or execution provider
  ort-mobile                             the `.ort` file of the INT8 model (mobile/<model>.int8.ort)
  trt:int8 | trt:fp16                    a TensorRT engine built here (from <model>.int8-trt.onnx / <model>.onnx)
  module:function                        a hook: function(model_path) -> runner(x (B, 3, H, W) uint8) -> outputs
With `--capture DIR` and no SPEC, the outputs the device recorded beside each captured tensor are the
deployed runtime, and the reference runs the model file they name on the same tensors.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deploy.capture import CaptureError, load_outputs
from deploy.runtime import EXECUTION_PROVIDERS, OrtModel
from evaluate.gate_config import GateConfigError
from train.run_dir import RunDir

Runner = Callable[[np.ndarray], list[np.ndarray]]


@dataclass
class DeployedRuntime:
    """The model file both runtimes run, and the deployed runtime's runner for it."""

    name: str
    model: Path
    runner: Runner


def resolve_runtime(spec: str, task: str, run: Path, int8: Path) -> DeployedRuntime:
    """A --runtime SPEC for one model; `int8` is the INT8 file the gate judges."""
    kind, _, arg = spec.partition(":")
    rd = RunDir.of(run)
    if kind == "ort":
        key, _, value = arg.partition("=")
        if key == "threads" and value.isdigit() and int(value) > 0:
            return DeployedRuntime(spec, int8, OrtModel(int8, threads=int(value)).infer)
        if key == "ep" and value in EXECUTION_PROVIDERS:
            return DeployedRuntime(spec, int8, OrtModel(int8, providers=EXECUTION_PROVIDERS[value]).infer)
        raise GateConfigError(f"--runtime {spec!r}: expected ort:threads=N or ort:ep={'|'.join(EXECUTION_PROVIDERS)}")
    if kind == "ort-mobile":
        mobile = rd.model(task, "int8.ort")
        if not mobile.is_file():
            raise GateConfigError(f"--runtime ort-mobile: {mobile} not found; run `make export`")
        return DeployedRuntime(spec, int8, OrtModel(mobile).infer)
    if kind == "trt":
        from deploy.trt_runtime import TrtModel

        if arg not in ("int8", "fp16"):
            raise GateConfigError(f"--runtime {spec!r}: expected trt:int8 or trt:fp16")
        model = rd.model(task, "int8-trt" if arg == "int8" else "fp32")
        return DeployedRuntime(spec, model, TrtModel(model, arg, rd.export / "engines").infer)
    if arg:
        return DeployedRuntime(spec, int8, load_function(spec, "--runtime")(int8))
    raise GateConfigError(f"--runtime {spec!r}: expected ort:..., ort-mobile, trt:int8|fp16 or module:function")


def load_function(ref: str, option: str):
    """The function a `module:function` option names (--deployed-preprocess, --runtime)."""
    mod, _, fn = ref.partition(":")
    if not fn:
        raise GateConfigError(f"{option} {ref!r}: expected module:function")
    try:
        return getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise GateConfigError(f"{option} {ref!r}: cannot load it ({e})") from None


def recorded_runtime(frames: list[Path], run: Path) -> DeployedRuntime | None:
    """The outputs a device recorded with its captures (deploy run --capture): None when it recorded none.

    The reference must run the model file the device ran: the captures name it, and it must be in the run's
    export folder."""
    table, names = {}, set()
    for p in frames:
        rec = load_outputs(p.with_suffix(".npz"))
        if rec is None:
            return None
        model, tensor, outputs = rec
        names.add(model)
        table[hash(tensor.tobytes())] = outputs
    if len(names) != 1:
        raise CaptureError(f"{frames[0].parent}: captures from more than one model file ({sorted(names)})")
    name = names.pop()
    model = next((p for p in (RunDir.of(run).export / name, RunDir.of(run).export / "mobile" / name) if p.is_file()),
                 RunDir.of(run).export / name)
    if not model.is_file():
        raise CaptureError(f"{model}: the captures' outputs come from this file and the run has no such file; "
                           "gate the run the device's models were exported from")

    def runner(x: np.ndarray) -> list[np.ndarray]:
        got = table.get(hash(np.ascontiguousarray(x[0] if x.ndim == 4 else x).tobytes()))
        if got is None:
            raise CaptureError("a tensor has no recorded outputs; the capture folder changed during the gate")
        return got

    return DeployedRuntime("recorded", model, runner)
