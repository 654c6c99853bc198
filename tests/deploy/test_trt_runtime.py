import numpy as np
import pytest


@pytest.mark.gpu
def test_tensorrt_runner_matches_onnx_runtime_and_reuses_the_engine(tiny_run, tiny_data, tmp_path):
    from deploy.preprocess import read_image
    from deploy.runtime import OrtModel
    from deploy.trt_runtime import TrtModel

    onnx_path = tiny_run / "export" / "detector.onnx"
    img = read_image(sorted((tiny_data.parent / "data" / "images" / "val").glob("*.jpg"))[0])
    trt_model = TrtModel(onnx_path, "fp32", tmp_path)
    assert trt_model.built and trt_model.contract == OrtModel(onnx_path).contract
    x, _ = trt_model.prepare(img)
    for a, b in zip(trt_model.infer(x), OrtModel(onnx_path).infer(x), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-2)  # TF32 may be on for fp32 engines
    assert TrtModel(onnx_path, "fp32", tmp_path).built is False  # cached engine, same device and version
