"""python -m export.tensorrt: trtexec commands everywhere; real builds, with the precision each engine's layers
really got, where TensorRT and a GPU exist."""

from __future__ import annotations

import pytest

from export.tensorrt import main


def test_without_tensorrt_it_prints_the_trtexec_commands_and_exits_2(tiny_run, capsys):
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here: the GPU tests cover the real build")
    except ImportError:
        pass
    assert main(["--run", str(tiny_run)]) == 2
    out, err = capsys.readouterr()
    assert out.count("trtexec --onnx=") == 4 and "--int8" in out and "detector.int8-trt.onnx" in out
    assert "*.fp16.onnx" in err


@pytest.mark.gpu
def test_builds_each_precision_records_what_the_layers_got_and_reuses_the_cache(tiny_run, tmp_path, capsys):
    from deploy.trt_cache import cached
    from train.run_dir import RunDir

    assert main(["--run", str(tiny_run), "--precision", "int8", "fp16", "fp32", "--cache", str(tmp_path)]) == 0
    first = capsys.readouterr().out
    assert first.count(": built ") == 6
    engines = {p.name.split(".")[0] + "." + p.name.split(".")[1]: cached(p) for p in tmp_path.rglob("*.engine")}
    print({k: v["layer_precisions"] for k, v in engines.items()})
    for task in RunDir.of(tiny_run).trained():
        assert engines[f"{task}.int8"]["layer_precisions"].get("int8", 0) > 0
        fp16 = engines[f"{task}.fp16"]["layer_precisions"]
        assert fp16.get("fp16", 0) > 0 and "int8" not in fp16
        assert set(engines[f"{task}.fp32"]["layer_precisions"]) <= {"fp32", "uint8", "int32", "int64", "bool"}
    assert main(["--run", str(tiny_run), "--precision", "int8", "fp16", "fp32", "--cache", str(tmp_path)]) == 0
    assert capsys.readouterr().out.count(": cached ") == 6
