"""TensorRT engine builds on the target from the shipped ONNX (deploy.trt_cache keys and caches them).

TensorRT 10 (JetPack 6): weakly typed network; FP16 and INT8 come from builder flags, and the INT8 file is the
explicit QDQ model (no calibrator). TensorRT 11 (x86 pip, JetPack 7) removed those flags: networks are strongly
typed and precision comes from the ONNX itself, so fp16 and int8 engines are built from the FP16 files export
writes beside the fp32 and QDQ ones (`fp16_path`). Either way the engine's metadata records the precision its
layers really got (the engine inspector), not the one that was asked for.

`tensorrt` and cuda-python are imported lazily; nothing here imports torch (this runs in the Jetson image).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from deploy.atomic import write_atomic
from deploy.errors import EdgeVisionError

PRECISIONS = ("fp32", "fp16", "int8")
RECIPE_VERSION = 2  # bump when build_engine builds something else from the same ONNX and settings
DEVICE_TREE_MODEL = Path("/proc/device-tree/model")  # Jetson: the module ("NVIDIA Jetson Orin NX ...")


class TensorRTUnavailable(EdgeVisionError, RuntimeError):
    """No TensorRT Python package, no cuda-python or no NVIDIA GPU here."""


class TensorRTError(EdgeVisionError, RuntimeError):
    """A parse, build, deserialize or CUDA failure; the message names the file and the fix."""


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise TensorRTUnavailable("TensorRT is not installed (pip install tensorrt, or use the Jetson image)") from None
    return trt


def import_cudart():
    """cuda-python's runtime bindings: `cuda.bindings.runtime` (cuda-python >= 12.6.1) or `cuda.cudart` (older
    wheels; the cuda-python 12.6.0 aarch64 wheel has only that one). The same calls in both."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            raise TensorRTUnavailable("cuda-python is not installed (pip install cuda-python)") from None
    return cudart


def cuda_call(result, what: str):
    """Unpack a cuda-python (err, *values) result; a non-zero error is a TensorRTError naming the call."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise TensorRTError(f"CUDA error {int(err)} ({getattr(err, 'name', err)}) in {what}; is the GPU visible "
                            "(docker --runtime nvidia) and not out of memory?")
    return values[0] if len(values) == 1 else tuple(values)


def trt_major(version: str) -> int:
    return int(version.split(".")[0])


@dataclass(frozen=True)
class DeviceInfo:
    gpu: str
    compute_capability: str
    sm_count: int  # 0 where unknown; Orin modules differ in it (AGX 16 or 14, NX and Nano 8, Nano 4 GB 4)
    module: str  # the Jetson module from the device tree, "" elsewhere: every Orin's GPU is named "Orin"
    tensorrt: str

    def slug(self) -> str:
        name = f"{self.module or self.gpu}-sm{self.compute_capability}-{self.sm_count}SM-trt{self.tensorrt}"
        return re.sub(r"[^A-Za-z0-9.]+", "-", name).strip("-")


def jetson_module() -> str:
    try:
        return DEVICE_TREE_MODEL.read_text(errors="replace").strip("\x00 \n")
    except OSError:
        return ""


def _cuda_device() -> tuple[str, str, int] | None:
    """(name, compute capability, SM count) of device 0 via cuda-python, None if it cannot tell."""
    try:
        props = cuda_call(import_cudart().cudaGetDeviceProperties(0), "cudaGetDeviceProperties")
    except (TensorRTUnavailable, TensorRTError):
        return None
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return name.strip("\x00 "), f"{props.major}.{props.minor}", int(props.multiProcessorCount)


def _nvidia_smi() -> tuple[str, str, int] | None:
    if not shutil.which("nvidia-smi"):
        return None
    r = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                       capture_output=True, text=True)
    if r.returncode != 0 or "," not in r.stdout:
        return None
    name, cc = (v.strip() for v in r.stdout.strip().splitlines()[0].split(",")[:2])
    return name, cc, 0


def device_info() -> DeviceInfo:
    """The GPU via cuda-python, else nvidia-smi, else (a Jetson without cuda-python) the device tree."""
    trt = import_tensorrt()
    module = jetson_module()
    found = _cuda_device() or _nvidia_smi() or ((module, "tegra", 0) if module else None)
    if found is None:
        raise TensorRTUnavailable("no NVIDIA GPU found (cuda-python, nvidia-smi and the Jetson device tree); "
                                  "in a container, run it with --runtime nvidia")
    return DeviceInfo(*found, module=module, tensorrt=trt.__version__)


@dataclass(frozen=True)
class BuildRecipe:
    """Everything besides the ONNX bytes and the device that changes what build_engine produces."""

    precision: str
    workspace_mb: int = 1024
    opt_batch: int = 1  # dynamic-batch ONNX only: the optimization profile is (1, opt_batch, max_batch)
    max_batch: int = 8
    version: int = RECIPE_VERSION

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} is not one of {PRECISIONS}")
        if not 1 <= self.opt_batch <= self.max_batch or self.workspace_mb < 1:
            raise ValueError(f"need 1 <= opt_batch <= max_batch and workspace_mb >= 1, got {self}")


def fp16_path(onnx_path: Path) -> Path:
    """The FP16 file export writes beside an ONNX: detector.onnx -> detector.fp16.onnx."""
    return Path(onnx_path).with_name(Path(onnx_path).name.removesuffix(".onnx") + ".fp16.onnx")


def engine_source(onnx_path: Path, precision: str, tensorrt_version: str) -> Path:
    """The ONNX an engine is built from: the given one, or on TensorRT 11 its FP16 sibling for fp16 and int8."""
    if trt_major(tensorrt_version) < 11 or precision == "fp32":
        return Path(onnx_path)
    source = fp16_path(onnx_path)
    if not source.is_file():
        raise TensorRTError(f"{onnx_path}: TensorRT {tensorrt_version} takes {precision} from an FP16 ONNX and "
                            f"{source.name} is not beside it; copy it from the run's export folder (make export)")
    return source


def profile_shapes(shape: tuple[int, ...], recipe: BuildRecipe) -> tuple[tuple[int, ...], ...]:
    """(min, opt, max) input shapes for an input whose batch axis is dynamic (-1)."""
    if any(d < 0 for d in shape[1:]):
        raise TensorRTError(f"input shape {shape}: only the batch axis may be dynamic; re-export the model")
    rest = tuple(shape[1:])
    return (1, *rest), (recipe.opt_batch, *rest), (recipe.max_batch, *rest)


def trtexec_command(onnx_path: Path, engine: Path, recipe: BuildRecipe, timing_cache: Path, trt_major: int = 10,
                    input_shape: tuple[int, ...] | None = None) -> str:
    """The equivalent trtexec call, for people who want to reproduce a build by hand."""
    flags = [] if trt_major >= 11 else {"fp32": [], "fp16": ["--fp16"], "int8": ["--fp16", "--int8"]}[recipe.precision]
    if input_shape and input_shape[0] < 0:
        shapes = ["x".join(map(str, s)) for s in profile_shapes(input_shape, recipe)]
        flags += [f"--{k}Shapes=images:{s}" for k, s in zip(("min", "opt", "max"), shapes, strict=True)]
    return " ".join(["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine}",
                     f"--memPoolSize=workspace:{recipe.workspace_mb}M", f"--timingCacheFile={timing_cache}",
                     "--profilingVerbosity=detailed", *flags])


def build_engine(onnx_path: Path, out: Path, recipe: BuildRecipe, timing_cache: Path | None = None) -> dict:
    """Parse the ONNX, build a serialized engine at `out` (written atomically); -> its layer precisions."""
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    try:
        builder = trt.Builder(logger)
    except TypeError:  # the bindings' "factory function returned nullptr": CUDA did not initialise
        raise TensorRTError(f"{onnx_path}: TensorRT {trt.__version__} could not start a builder (CUDA "
                            "initialisation failed: driver, or no --runtime nvidia)") from None
    network = builder.create_network(0)  # explicit batch, the only mode since TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TensorRTError(f"{onnx_path}: TensorRT {trt.__version__} cannot parse it ({errors}); "
                            f"run `python -m export.check_trt {onnx_path}`")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, recipe.workspace_mb << 20)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # the inspector then names each layer's types
    if trt_major(trt.__version__) < 11:  # weak typing: allow reduced-precision kernels; Q/DQ pin the INT8 ones
        if recipe.precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)
        if recipe.precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
    add_batch_profile(builder, network, config, recipe)
    use_timing_cache(config, timing_cache)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise TensorRTError(f"{onnx_path}: TensorRT {trt.__version__} could not build a {recipe.precision} engine "
                            "(see its log above); check the model with python -m export.check_trt")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, bytes(plan))
    if timing_cache is not None:
        write_atomic(timing_cache, bytes(config.get_timing_cache().serialize()))
    return layer_precisions(inspect_engine(trt, bytes(plan), logger))


def add_batch_profile(builder, network, config, recipe: BuildRecipe) -> None:
    """An optimization profile for inputs with a dynamic batch axis; static inputs need none."""
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    dynamic = [t for t in inputs if tuple(t.shape)[0] < 0]
    if not dynamic:
        return
    profile = builder.create_optimization_profile()
    for t in dynamic:
        profile.set_shape(t.name, *profile_shapes(tuple(t.shape), recipe))
    config.add_optimization_profile(profile)


def use_timing_cache(config, path: Path | None) -> None:
    """Start from the device's timing cache; an unreadable or mismatched one is stale, never fatal."""
    data = path.read_bytes() if path is not None and path.is_file() else b""
    try:
        cache = config.create_timing_cache(data)
        ok = cache is not None and config.set_timing_cache(cache, ignore_mismatch=False)
    except (RuntimeError, TypeError, ValueError):
        ok = False
    if not ok:
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)


def inspect_engine(trt, plan: bytes, logger) -> dict:
    """The engine inspector's JSON; dynamic inputs set to their opt shape so every layer reports its types."""
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
    if engine is None:
        raise TensorRTError("TensorRT could not deserialize the engine it has just built; rebuild it")
    inspector = engine.create_engine_inspector()
    context = engine.create_execution_context()
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT and -1 in tuple(engine.get_tensor_shape(name)):
            context.set_input_shape(name, engine.get_tensor_profile_shape(name, 0)[1])
    inspector.execution_context = context
    return json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))


# inspector wording -> type; "uint8" before "int8" (a substring), "half" is fp16 and "float" fp32
TYPE_WORDS = (("uint8", "uint8"), ("int8", "int8"), ("fp8", "fp8"), ("bf16", "bf16"), ("fp16", "fp16"),
              ("half", "fp16"), ("fp32", "fp32"), ("float", "fp32"), ("int32", "int32"), ("int64", "int64"),
              ("bool", "bool"))
NOT_COMPUTE = ("Reformat", "NoOp", "Constant", "Shuffle")


def tensor_type(desc: dict) -> str:
    """TensorRT 10 writes "Format/Datatype": "Channel major FP16 format ..."; 11 splits DataType off."""
    text = str(desc.get("DataType") or desc.get("Format/Datatype") or desc.get("Format") or "").lower()
    return next((t for word, t in TYPE_WORDS if word in text), "unknown")


def layer_precisions(info: dict) -> dict[str, int]:
    """Compute layers per input type (what each kernel reads): {"int8": 41, "fp16": 12, ...}."""
    counts: dict[str, int] = {}
    for layer in info.get("Layers", []):
        if not isinstance(layer, dict) or layer.get("LayerType") in NOT_COMPUTE or not layer.get("Inputs"):
            continue
        kind = tensor_type(layer["Inputs"][0])
        counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items()))
