"""The TensorRT path without a GPU: import fallbacks (stub modules), device keys, the engine cache, the FP16
source rule of TensorRT 11, layer-precision parsing and the build's batch profile."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from deploy import trt_cache, trt_engine
from deploy.trt_engine import BuildRecipe, DeviceInfo, TensorRTError, TensorRTUnavailable

ORIN_NX = DeviceInfo("Orin", "8.7", 8, "NVIDIA Jetson Orin NX Engine Developer Kit", "10.3.0")


def stub_cuda(monkeypatch, *, bindings: bool, name: bytes = b"Orin", sms: int = 8) -> None:
    """cuda-python as a stub: `cuda.bindings.runtime` (>= 12.6.1) or only `cuda.cudart` (12.6.0 on aarch64)."""
    props = types.SimpleNamespace(name=name, major=8, minor=7, multiProcessorCount=sms)
    cudart = types.SimpleNamespace(cudaGetDeviceProperties=lambda i: (0, props))
    cuda = types.ModuleType("cuda")
    monkeypatch.setitem(sys.modules, "cuda", cuda)
    if bindings:
        monkeypatch.setitem(sys.modules, "cuda.bindings", types.ModuleType("cuda.bindings"))
        monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", cudart)
        sys.modules["cuda.bindings"].runtime = cudart
    else:
        for name in ("cuda.bindings", "cuda.bindings.runtime"):  # import cuda.bindings -> ImportError
            monkeypatch.setitem(sys.modules, name, None)
        monkeypatch.setitem(sys.modules, "cuda.cudart", cudart)
        cuda.cudart = cudart


@pytest.fixture
def stub_trt(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.3.0"))
    monkeypatch.setattr(trt_engine.shutil, "which", lambda name: None)  # no nvidia-smi
    model = tmp_path / "device-tree-model"
    monkeypatch.setattr(trt_engine, "DEVICE_TREE_MODEL", model)
    return model


def test_device_info_uses_cuda_cudart_when_cuda_bindings_is_missing_and_keys_the_jetson_module(monkeypatch, stub_trt):
    stub_trt.write_text("NVIDIA Jetson Orin NX Engine Developer Kit\x00")
    stub_cuda(monkeypatch, bindings=False)
    assert trt_engine.device_info() == ORIN_NX
    stub_cuda(monkeypatch, bindings=True, sms=4)
    stub_trt.write_text("NVIDIA Jetson Orin Nano Engine Developer Kit\x00")
    nano = trt_engine.device_info()
    assert nano.gpu == "Orin" and nano.sm_count == 4 and nano.slug() != ORIN_NX.slug()


def test_device_info_without_cuda_python_falls_back_to_the_device_tree_and_else_refuses(monkeypatch, stub_trt):
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):  # torch's wheel may bring it
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(TensorRTUnavailable, match="no NVIDIA GPU found"):
        trt_engine.device_info()
    stub_trt.write_text("NVIDIA Jetson AGX Orin Developer Kit\x00")
    dev = trt_engine.device_info()
    assert (dev.gpu, dev.compute_capability, dev.module) == ("NVIDIA Jetson AGX Orin Developer Kit", "tegra",
                                                              "NVIDIA Jetson AGX Orin Developer Kit")
    with pytest.raises(TensorRTUnavailable, match="cuda-python is not installed"):
        trt_engine.import_cudart()


def test_cuda_errors_are_one_line_tensorrt_errors():
    assert trt_engine.cuda_call((0, "stream"), "cudaStreamCreate") == "stream"
    with pytest.raises(TensorRTError, match="CUDA error 2 .* in cudaMalloc"):
        trt_engine.cuda_call((2, None), "cudaMalloc")


@pytest.fixture
def fake_build(monkeypatch, tmp_path):
    """cached_engine on a fixed device with a build that writes bytes and counts its calls."""
    calls = []

    def build(source, out, recipe, timing):
        calls.append((Path(source).name, recipe))
        if getattr(build, "fail", None):
            raise TensorRTError(f"{source}: {build.fail}")
        out.write_bytes(b"engine:" + Path(source).read_bytes())
        return {"int8": 3, "fp16": 1}

    monkeypatch.setattr(trt_cache, "device_info", lambda: build.device)
    monkeypatch.setattr(trt_cache, "build_engine", build)
    build.device, build.calls = ORIN_NX, calls
    onnx_path = tmp_path / "detector.int8-trt.onnx"
    onnx_path.write_bytes(b"qdq-model")
    return build, onnx_path, tmp_path / "cache"


def test_cache_reuses_complete_engines_and_rebuilds_truncated_or_foreign_ones(fake_build):
    build, onnx_path, cache = fake_build
    recipe = BuildRecipe("int8")
    path, built = trt_cache.cached_engine(onnx_path, recipe, cache)
    assert built and trt_cache.cached(path)["layer_precisions"] == {"int8": 3, "fp16": 1}
    assert trt_cache.cached_engine(onnx_path, recipe, cache) == (path, False)
    path.with_suffix(".json").write_text('{"key": "')  # a metadata file cut off mid-write: stale, not fatal
    assert trt_cache.cached_engine(onnx_path, recipe, cache) == (path, True)
    path.write_bytes(path.read_bytes()[:5])  # a truncated engine
    assert trt_cache.cached_engine(onnx_path, recipe, cache) == (path, True)
    assert len(build.calls) == 3 and not list(cache.rglob("*.tmp"))


def test_cache_key_holds_the_recipe_the_module_and_the_model(fake_build):
    build, onnx_path, cache = fake_build
    base = trt_cache.cached_engine(onnx_path, BuildRecipe("int8"), cache)[0]
    others = [trt_cache.cached_engine(onnx_path, r, cache)[0]
              for r in (BuildRecipe("int8", workspace_mb=512), BuildRecipe("int8", max_batch=4),
                        BuildRecipe("int8", version=trt_engine.RECIPE_VERSION + 1), BuildRecipe("fp16"))]
    build.device = DeviceInfo("Orin", "8.7", 8, "NVIDIA Jetson Orin Nano Engine Developer Kit", "10.3.0")
    others.append(trt_cache.cached_engine(onnx_path, BuildRecipe("int8"), cache)[0])
    build.device = ORIN_NX
    onnx_path.write_bytes(b"qdq-model-retrained")
    others.append(trt_cache.cached_engine(onnx_path, BuildRecipe("int8"), cache)[0])
    assert len({base, *others}) == 7 and len(build.calls) == 7


def test_a_failed_build_is_recorded_and_not_retried_at_every_start(fake_build):
    build, onnx_path, cache = fake_build
    build.fail = "TensorRT cannot parse it"
    with pytest.raises(TensorRTError, match="cannot parse it"):
        trt_cache.cached_engine(onnx_path, BuildRecipe("int8"), cache)
    with pytest.raises(TensorRTError, match=r"failed on this device before .* delete .*failed\.json to retry"):
        trt_cache.cached_engine(onnx_path, BuildRecipe("int8"), cache)
    assert len(build.calls) == 1  # a restarting container does not rebuild it again
    build.fail = None
    next(cache.rglob("*.failed.json")).unlink()
    assert trt_cache.cached_engine(onnx_path, BuildRecipe("int8"), cache)[1] is True


def test_tensorrt_11_builds_fp16_and_int8_from_the_fp16_sibling(fake_build):
    build, onnx_path, cache = fake_build
    build.device = DeviceInfo("NVIDIA H200", "9.0", 132, "", "11.4.0")
    with pytest.raises(TensorRTError, match="detector.int8-trt.fp16.onnx is not beside it"):
        trt_cache.cached_engine(onnx_path, BuildRecipe("int8"), cache)
    trt_engine.fp16_path(onnx_path).write_bytes(b"qdq-model-fp16")
    trt_cache.cached_engine(onnx_path, BuildRecipe("int8"), cache)
    trt_cache.cached_engine(onnx_path, BuildRecipe("fp32"), cache)
    assert [name for name, _ in build.calls] == ["detector.int8-trt.fp16.onnx", "detector.int8-trt.onnx"]
    assert trt_engine.engine_source(onnx_path, "int8", "10.3.0") == onnx_path  # TensorRT 10: the flags


def test_dynamic_batch_profile_and_trtexec_shapes():
    recipe = BuildRecipe("int8", opt_batch=2, max_batch=8)
    assert trt_engine.profile_shapes((-1, 3, 320, 320), recipe) == ((1, 3, 320, 320), (2, 3, 320, 320),
                                                                    (8, 3, 320, 320))
    cmd = trt_engine.trtexec_command(Path("m.onnx"), Path("m.engine"), recipe, Path("t"), 10, (-1, 3, 320, 320))
    assert "--maxShapes=images:8x3x320x320" in cmd and "--int8" in cmd
    assert "--int8" not in trt_engine.trtexec_command(Path("m.onnx"), Path("m.engine"), recipe, Path("t"), 11)
    with pytest.raises(TensorRTError, match="only the batch axis"):
        trt_engine.profile_shapes((-1, 3, -1, 320), recipe)
    with pytest.raises(ValueError, match="opt_batch"):
        BuildRecipe("int8", opt_batch=9, max_batch=8)


def test_layer_precisions_read_both_inspector_schemas():
    trt10 = {"Layers": [
        {"Name": "conv1", "LayerType": "CaskConvolution",
         "Inputs": [{"Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format"}]},
        {"Name": "resize", "LayerType": "Resize", "Inputs": [{"Format/Datatype": "Channel major FP16 format"}]},
        {"Name": "in", "LayerType": "Reformat", "Inputs": [{"Format/Datatype": "Row major linear UInt8 format"}]},
        {"Name": "cast", "LayerType": "Cast", "Inputs": [{"Format/Datatype": "Row major linear UInt8 format"}]},
        "a layer without detail"]}
    assert trt_engine.layer_precisions(trt10) == {"fp16": 1, "int8": 1, "uint8": 1}
    trt11 = {"Layers": [{"Name": "c", "LayerType": "CaskConvolution",
                         "Inputs": [{"Format": "kHWC8", "DataType": "Half"}]},
                        {"Name": "d", "LayerType": "CaskConvolution", "Inputs": [{"DataType": "Float"}]}]}
    assert trt_engine.layer_precisions(trt11) == {"fp16": 1, "fp32": 1}


class FakeConfig:
    """The two timing-cache calls of an IBuilderConfig; TensorRT raises on a corrupt blob."""

    def __init__(self):
        self.set = []

    def create_timing_cache(self, data: bytes):
        if data and not data.startswith(b"TRTCACHE"):
            raise RuntimeError("invalid timing cache")
        return data

    def set_timing_cache(self, cache, ignore_mismatch: bool) -> bool:
        self.set.append(cache)
        return True


def test_an_unreadable_timing_cache_is_stale_not_fatal(tmp_path):
    path = tmp_path / "timing.cache"
    path.write_bytes(b"\x00garbage")
    config = FakeConfig()
    trt_engine.use_timing_cache(config, path)
    assert config.set == [b""]
    path.write_bytes(b"TRTCACHE-1")
    trt_engine.use_timing_cache(config, path)
    assert config.set[-1] == b"TRTCACHE-1"


def test_atomic_writes_use_unique_temporary_names(tmp_path):
    from deploy.atomic import atomic_path

    target = tmp_path / "timing.cache"
    with atomic_path(target) as a, atomic_path(target) as b:  # two writers at once (two containers)
        assert a != b
        a.write_bytes(b"first")
        b.write_bytes(b"second")
    assert target.read_bytes() == b"first" and sorted(p.name for p in tmp_path.iterdir()) == ["timing.cache"]


def test_engine_io_is_checked_against_the_contract(tiny_run):
    import numpy as np

    from deploy.contract import ContractError
    from deploy.runtime import OrtModel
    from deploy.trt_runtime import check_engine_io

    contract = OrtModel(tiny_run / "export" / "detector.onnx").contract
    H, W = contract.preprocess.input_size
    n = len(contract.class_names)
    io = {"images": (True, np.dtype(np.uint8), (-1, 3, H, W)),
          "cls_logits": (False, np.dtype(np.float32), (-1, 10, n)), "boxes": (False, np.dtype(np.float32), (-1, 10, 4))}
    assert check_engine_io(io, contract, "det") == ("images", ["cls_logits", "boxes"])
    for broken, match in [({k: v for k, v in io.items() if k != "boxes"}, r"no output \['boxes'\]"),
                          ({**io, "images": (True, np.dtype(np.float32), (1, 3, H, W))}, "is float32"),
                          ({**io, "images": (True, np.dtype(np.uint8), (1, 3, H + 32, W))}, "input_size"),
                          ({**io, "cls_logits": (False, np.dtype(np.float32), (1, 10, n + 1))}, "class names")]:
        with pytest.raises(ContractError, match=match):
            check_engine_io(broken, contract, "det")


def test_deploy_run_maps_tensorrt_failures_to_one_line_and_exit_2(tiny_run, tmp_path, monkeypatch, capsys):
    import deploy.trt_runtime
    from deploy.__main__ import main

    def refuse(path, precision, cache):
        raise TensorRTError(f"{path}: TensorRT 10.3.0 cannot parse it (Unsupported op); run python -m export.check_trt")

    monkeypatch.setattr(deploy.trt_runtime, "TrtModel", refuse)
    rc = main(["run", "--backend", "trt", "--model", str(tiny_run / "export" / "detector.int8-trt.onnx"),
               "--source", str(tmp_path), "--out", str(tmp_path / "p.jsonl")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "cannot parse it" in err and "Traceback" not in err
    assert not (tmp_path / "p.jsonl").exists()
