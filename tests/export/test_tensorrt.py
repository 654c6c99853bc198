"""TensorRT engines: cache keying and trtexec commands everywhere; real builds where TensorRT and a GPU exist."""

import json
from pathlib import Path

import pytest

from deploy.trt_engine import DeviceInfo, engine_path, trtexec_command


def test_engine_cache_key_changes_with_device_tensorrt_and_model(tmp_path):
    onnx_path = tmp_path / "det.int8.onnx"
    onnx_path.write_bytes(b"model-a")
    orin = DeviceInfo("Orin", "8.7", "10.3.0")
    a = engine_path(onnx_path, "int8", tmp_path, orin)
    assert a != engine_path(onnx_path, "int8", tmp_path, DeviceInfo("Orin", "8.7", "10.4.0"))
    assert a != engine_path(onnx_path, "int8", tmp_path, DeviceInfo("NVIDIA H100", "9.0", "10.3.0"))
    assert a != engine_path(onnx_path, "fp16", tmp_path, orin)
    onnx_path.write_bytes(b"model-b")
    assert a != engine_path(onnx_path, "int8", tmp_path, orin)


def test_trtexec_command_matches_the_tensorrt_generation():
    cmd = trtexec_command(Path("m.onnx"), Path("m.engine"), "int8", 512, Path("t.cache"), trt_major=10)
    assert "--int8" in cmd and "--fp16" in cmd and "--memPoolSize=workspace:512M" in cmd
    assert "--int8" not in trtexec_command(Path("m.onnx"), Path("m.engine"), "int8", 512, Path("t"), trt_major=11)


@pytest.mark.gpu
def test_builds_int8_and_fp16_engines_and_reuses_the_cache(tiny_run, tmp_path):
    import tensorrt as trt

    from deploy.trt_engine import cached_engine

    for precision, name in (("int8", "detector.int8-trt.onnx"), ("fp16", "detector.onnx")):
        path, built = cached_engine(tiny_run / "export" / name, precision, tmp_path)
        assert built and path.stat().st_size > 0
        assert cached_engine(tiny_run / "export" / name, precision, tmp_path) == (path, False)
        engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(path.read_bytes())
        assert engine is not None and engine.num_io_tensors == 3  # images, cls_logits, boxes
        meta = path.with_suffix(".json")  # an engine recorded for another device is rebuilt, not loaded
        info = json.loads(meta.read_text())
        info["device"]["tensorrt"] = "0.0"
        meta.write_text(json.dumps(info))
        assert cached_engine(tiny_run / "export" / name, precision, tmp_path)[1] is True
