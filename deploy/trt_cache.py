"""The engine cache: an engine only runs on the GPU, module and TensorRT version it was built with, and only
means what its recipe built, so every one of those is in its key.

    <cache>/<device slug>/<model>.<precision>.<key>.engine   the serialized engine
                                  ... <key>.json             what built it, its size and its layer precisions
                                  ... <key>.failed.json      a build that failed here: not retried at every start
    <cache>/<device slug>/timing.cache                       TensorRT's timing cache for the device

key = sha256 over (the ONNX bytes the engine is built from, the BuildRecipe, the DeviceInfo). Files are
written atomically under unique temporary names, so two processes on one volume cannot tear each other's
writes. Anything unreadable (a truncated JSON, an engine of the wrong size, a corrupt timing cache) is stale:
it is rebuilt, never fatal.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path

from deploy.atomic import write_atomic
from deploy.trt_engine import BuildRecipe, DeviceInfo, TensorRTError, build_engine, device_info, engine_source


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def cache_key(onnx_sha256: str, recipe: BuildRecipe, dev: DeviceInfo) -> str:
    payload = {"onnx_sha256": onnx_sha256, "recipe": asdict(recipe), "device": asdict(dev)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def engine_path(onnx_path: Path, recipe: BuildRecipe, cache_dir: Path, dev: DeviceInfo,
                source_sha256: str | None = None) -> Path:
    """Where the engine for this ONNX, recipe and device lives, e.g. .../detector.int8.3f2a....engine"""
    digest = source_sha256 or sha256_file(engine_source(Path(onnx_path), recipe.precision, dev.tensorrt))
    key = cache_key(digest, recipe, dev)
    return Path(cache_dir) / dev.slug() / f"{Path(onnx_path).name.split('.')[0]}.{recipe.precision}.{key}.engine"


def read_json(path: Path) -> dict | None:
    """The JSON object in `path`, or None when it is missing, truncated or not an object."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def cached(path: Path) -> dict | None:
    """The metadata of a complete cached engine at `path`, None when it must be (re)built."""
    meta = read_json(path.with_suffix(".json"))
    key = path.name.split(".")[-2]
    if meta is None or meta.get("key") != key or not path.is_file():
        return None
    return meta if path.stat().st_size == meta.get("engine_bytes") else None


def cached_engine(onnx_path: Path, recipe: BuildRecipe, cache_dir: Path) -> tuple[Path, bool]:
    """-> (engine path, built now?). Loads nothing: reuses a complete engine for this key or builds one."""
    dev = device_info()
    source = engine_source(Path(onnx_path), recipe.precision, dev.tensorrt)
    digest = sha256_file(source)
    path = engine_path(Path(onnx_path), recipe, Path(cache_dir), dev, digest)
    if cached(path) is not None:
        return path, False
    failed = path.with_suffix(".failed.json")
    prior = read_json(failed)
    if prior is not None:  # a restarting container must not rebuild a failing engine forever
        raise TensorRTError(f"{source}: the {recipe.precision} engine build failed on this device before "
                            f"({prior.get('error')}); fix the model, then delete {failed} to retry")
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"key": path.name.split(".")[-2], "onnx": str(source), "onnx_sha256": digest,
              "recipe": asdict(recipe), "device": asdict(dev)}
    try:
        precisions = build_engine(source, path, recipe, path.parent / "timing.cache")
    except TensorRTError as e:
        write_atomic(failed, json.dumps({**record, "error": str(e), "time": time.time()}, indent=2))
        raise
    record.update(engine_bytes=path.stat().st_size, layer_precisions=precisions, built=time.time())
    write_atomic(path.with_suffix(".json"), json.dumps(record, indent=2))
    return path, True


def forget(path: Path) -> None:
    """Drop a cached engine that TensorRT refused to load, so the next cached_engine call rebuilds it."""
    path.with_suffix(".json").unlink(missing_ok=True)
    path.unlink(missing_ok=True)
