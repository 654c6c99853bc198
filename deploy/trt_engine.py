"""TensorRT engines built on the target from the shipped ONNX, cached per device and TensorRT version.

An engine only runs on the GPU model and TensorRT version it was built with, so the cache key is
(ONNX sha256, precision, GPU name, compute capability, TensorRT version): a stale engine is never loaded,
it is rebuilt. `tensorrt` is imported lazily; nothing here imports torch (this runs in the Jetson image).

TensorRT 10 (JetPack 6): weakly typed network, FP16 and INT8 builder flags; the INT8 file is the explicit
QDQ model (no calibrator). TensorRT 11 removed those flags: networks are strongly typed, precision comes
from the Q/DQ nodes and tensor types in the ONNX itself, so "fp16" there needs an FP16-converted ONNX.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from deploy.atomic import write_atomic
from deploy.errors import EdgeVisionError

PRECISIONS = ("fp32", "fp16", "int8")


class TensorRTUnavailable(EdgeVisionError, RuntimeError):
    """No TensorRT Python package or no NVIDIA GPU here."""


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise TensorRTUnavailable("TensorRT is not installed (pip install tensorrt, or use the Jetson image)") from None
    return trt


@dataclass(frozen=True)
class DeviceInfo:
    gpu: str
    compute_capability: str
    tensorrt: str

    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9.]+", "-", f"{self.gpu}-sm{self.compute_capability}-trt{self.tensorrt}").strip("-")


def device_info() -> DeviceInfo:
    """GPU name and compute capability via cuda-python, nvidia-smi or (Jetson) the device tree."""
    trt = import_tensorrt()
    name = cc = None
    try:
        from cuda.bindings import runtime as cudart

        err, props = cudart.cudaGetDeviceProperties(0)
        if int(err) == 0:
            name = props.name.decode(errors="replace").strip("\x00 ")
            cc = f"{props.major}.{props.minor}"
    except Exception:  # cuda-python missing or no device: try the next source
        pass
    if name is None and shutil.which("nvidia-smi"):
        r = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                           capture_output=True, text=True)
        if r.returncode == 0 and r.stdout.strip():
            name, cc = (v.strip() for v in r.stdout.strip().splitlines()[0].split(","))
    model = Path("/proc/device-tree/model")
    if name is None and model.is_file():  # Jetson: no nvidia-smi
        name, cc = model.read_text().strip("\x00 \n"), "tegra"
    if name is None:
        raise TensorRTUnavailable("no NVIDIA GPU found (cuda-python, nvidia-smi and the Jetson device tree)")
    return DeviceInfo(name, cc or "unknown", trt.__version__)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def engine_path(onnx_path: Path, precision: str, cache_dir: Path, dev: DeviceInfo) -> Path:
    """<cache>/<device slug>/<model>.<precision>.<onnx sha[:12]>.engine, e.g. detector.int8.3f2a....engine"""
    digest = sha256_file(onnx_path)[:12]
    return Path(cache_dir) / dev.slug() / f"{Path(onnx_path).name.split('.')[0]}.{precision}.{digest}.engine"


def trtexec_command(onnx_path: Path, engine: Path, precision: str, workspace_mb: int, timing_cache: Path,
                    trt_major: int = 10) -> str:
    """The equivalent trtexec call, for people who want to reproduce a build by hand."""
    flags = [] if trt_major >= 11 else {"fp32": [], "fp16": ["--fp16"], "int8": ["--fp16", "--int8"]}[precision]
    return " ".join(["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine}",
                     f"--memPoolSize=workspace:{workspace_mb}M", f"--timingCacheFile={timing_cache}", *flags])


def build_engine(onnx_path: Path, out: Path, precision: str, workspace_mb: int = 1024,
                 timing_cache: Path | None = None) -> Path:
    """Parse the ONNX and build a serialized engine at `out` (written atomically)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")
    trt = import_tensorrt()
    major = int(trt.__version__.split(".")[0])
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode since TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path}: TensorRT cannot parse it ({errors}); run python -m export.check_trt")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if major < 11:  # weak typing: allow reduced-precision kernels; Q/DQ nodes pin the INT8 layers
        if precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
    cache_bytes = timing_cache.read_bytes() if timing_cache and timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"{onnx_path}: TensorRT engine build failed ({precision}); see the log above")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, bytes(plan))
    if timing_cache is not None:
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return out


def cached_engine(onnx_path: Path, precision: str, cache_dir: Path, workspace_mb: int = 1024) -> tuple[Path, bool]:
    """-> (engine path, built now?). Reuses an engine built for this exact ONNX, GPU and TensorRT version."""
    dev = device_info()
    path = engine_path(Path(onnx_path), precision, Path(cache_dir), dev)
    meta = path.with_suffix(".json")
    if path.is_file() and meta.is_file() and json.loads(meta.read_text()).get("device") == asdict(dev):
        return path, False
    timing = Path(cache_dir) / dev.slug() / "timing.cache"
    build_engine(Path(onnx_path), path, precision, workspace_mb, timing)
    meta.write_text(json.dumps({"device": asdict(dev), "onnx": str(onnx_path), "precision": precision,
                                "onnx_sha256": sha256_file(onnx_path)}, indent=2))
    return path, True
