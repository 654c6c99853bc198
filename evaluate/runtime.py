"""The deployed runtime, for the gate's third factor: the same model file and the same input tensors, run under
exact QDQ semantics (the reference: ONNX Runtime with no graph optimisation, DequantizeLinear -> float op ->
QuantizeLinear, the same on every CPU) and by the runtime the device uses.

Without `--runtime` the deployed runtime is this machine's ONNX Runtime CPU kernels (`ort`), so a loss in a CPU's
integer kernels (the int16 saturation of x86 without VNNI) lands on `runtime`, not on quantization.
`--runtime SPEC` names another:
  ort | ort:threads=N | ort:ep=cuda|tensorrt   this machine's kernels, another thread count or execution provider
  qemu:x86-avx2 | qemu:x86-sse4          another x86 class's kernels under QEMU (deploy.emulate)
  qemu:arm64 | qemu:arm64-dotprod | qemu:arm64-i8mm
                                         a phone class's kernels: the ARM64 userland under QEMU (make arm-env)
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

from deploy.capture import CaptureError, load_hardware, load_outputs
from deploy.emulate import PROFILES, EmulatedModel, unavailable
from deploy.hardware import fingerprint, kernel_mismatch
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
    kernels: str | None = None  # the CPU kernel class that computes (deploy.hardware); None: not ONNX Runtime's CPU


def native_runtime(int8: Path, threads: int | None = None, spec: str = "ort") -> DeployedRuntime:
    """This machine's ONNX Runtime CPU kernels on the INT8 file (graph optimised, as every device runs it)."""
    kernels = fingerprint()["kernel_class"]
    return DeployedRuntime(f"{spec} ({kernels})", int8, OrtModel(int8, threads=threads).infer, kernels)


# a phone class -> the profile of ARM's other integer-kernel family, its integer reference
ARM_REFERENCE = {"arm64-dotprod": "arm64", "arm64-i8mm": "arm64", "arm64": "arm64-dotprod"}


def integer_reference(model: Path, file_kernels: str, deployed_kernels: str | None = None) -> DeployedRuntime | None:
    """A correct integer runtime for `model`: ONNX Runtime kernels that cannot saturate on it. This machine's
    when they accumulate exactly or the file's dense weights are 7-bit (deploy.hardware.kernel_mismatch), else
    the SSE4 kernels under QEMU (exact, on any x86); None when neither can run here. For a phone class
    (`deployed_kernels` arm64*), ARM's other kernel family under QEMU (the widening NEON kernels for dot-product
    and i8mm CPUs, the dot-product ones for the A53), where the ARM64 userland is built: every ARM kernel
    requantizes with ARM's rounding, which differs from x86's (40 dB output SQNR on the demo segmenter, every
    kernel exact), a property of the architecture and not a fault of the deployed kernels.

    It separates what every correct INT8 runtime does to a QDQ graph (requantization rounding, which a coarse
    scale can amplify) from what a runtime does wrong (saturation, a broken conversion): only the second is
    the deployed runtime's fault."""
    arm = ARM_REFERENCE.get(deployed_kernels or "")
    if arm and unavailable(arm) is None:
        return DeployedRuntime(f"qemu:{arm}", model, EmulatedModel(model, arm).infer, PROFILES[arm].kernels)
    here = fingerprint()["kernel_class"]
    if kernel_mismatch(file_kernels, here) is None:
        return native_runtime(model)
    if unavailable("x86-sse4") is None:
        return DeployedRuntime("qemu:x86-sse4", model, EmulatedModel(model, "x86-sse4").infer, "x86-sse4")
    return None


def resolve_runtime(spec: str, task: str, run: Path, int8: Path) -> DeployedRuntime:
    """A --runtime SPEC for one model; `int8` is the INT8 file the gate judges."""
    kind, _, arg = spec.partition(":")
    rd = RunDir.of(run)
    if kind == "ort":
        key, _, value = arg.partition("=")
        if not arg or key == "ep" and value == "cpu":
            return native_runtime(int8, spec=spec)
        if key == "threads" and value.isdigit() and int(value) > 0:
            return native_runtime(int8, int(value), spec)
        if key == "ep" and value in EXECUTION_PROVIDERS:
            return DeployedRuntime(spec, int8, OrtModel(int8, providers=EXECUTION_PROVIDERS[value]).infer)
        raise GateConfigError(f"--runtime {spec!r}: expected ort, ort:threads=N or "
                              f"ort:ep={'|'.join(EXECUTION_PROVIDERS)}")
    if kind == "qemu":
        why = unavailable(arg)
        if why:
            raise GateConfigError(f"--runtime {spec!r}: {why}")
        return DeployedRuntime(spec, int8, EmulatedModel(int8, arg).infer, PROFILES[arg].kernels)
    if kind == "ort-mobile":
        mobile = rd.model(task, "int8.ort")
        if not mobile.is_file():
            raise GateConfigError(f"--runtime ort-mobile: {mobile} not found; run `make export`")
        return DeployedRuntime(spec, int8, OrtModel(mobile).infer, fingerprint()["kernel_class"])
    if kind == "trt":
        from deploy.trt_runtime import TrtModel

        if arg not in ("int8", "fp16"):
            raise GateConfigError(f"--runtime {spec!r}: expected trt:int8 or trt:fp16")
        model = rd.model(task, "int8-trt" if arg == "int8" else "fp32")
        return DeployedRuntime(spec, model, TrtModel(model, arg, rd.export / "engines").infer)
    if arg:
        return DeployedRuntime(spec, int8, load_function(spec, "--runtime")(int8))
    raise GateConfigError(f"--runtime {spec!r}: expected ort[:...], qemu:{'|'.join(PROFILES)}, ort-mobile, "
                          "trt:int8|fp16 or module:function")


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

    hw = load_hardware(frames[0].parent.parent)  # capture DIR/<model>/<id>.npz, DIR/hardware.json
    kernels = hw.get("kernel_class") if hw else None
    return DeployedRuntime(f"recorded ({kernels or 'kernels unknown'})", model, runner, kernels)
