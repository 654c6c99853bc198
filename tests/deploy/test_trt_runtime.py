"""TrtModel on a GPU: parity with ONNX Runtime per precision and model, predict() end to end, dynamic batch,
and a corrupt cached engine rebuilt. Skipped (with the reason) without TensorRT, cuda-python or a GPU."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gpu

# relative L2 error of TensorRT against ONNX Runtime (export.fp16.rel_l2), the same ONNX file on both sides
TOLERANCE = {"fp32": 0.005,  # TF32 convolutions
             "fp16": 0.01}  # FP16 kernels against FP32 ones (export.fp16.PARITY_TOL)
# INT8: TensorRT's kernels round differently from ONNX Runtime's float emulation of the same Q/DQ, and the
# flipped roundings re-draw the quantization noise; so the INT8 engine is held to be no further from the fp32
# model than ORT's QDQ run is, plus FP16 rounding (the rule export.fp16 holds the FP16 QDQ file to)
SOURCE = {"fp32": "{task}.onnx", "fp16": "{task}.onnx", "int8": "{task}.int8-trt.onnx"}


def images(tiny_data, n=2):
    from deploy.preprocess import read_image

    return [read_image(p) for p in sorted((tiny_data.parent / "data" / "images" / "val").glob("*.jpg"))[:n]]


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
@pytest.mark.parametrize("task", ["detector", "segmenter"])
def test_engine_matches_onnx_runtime_and_predicts_end_to_end(tiny_run, tiny_data, tmp_path, task, precision):
    from deploy.runtime import OrtModel
    from deploy.trt_runtime import TrtModel
    from export.fp16 import QDQ_NOISE_FACTOR, rel_l2

    path = tiny_run / "export" / SOURCE[precision].format(task=task)
    trt_model, ort_model = TrtModel(path, precision, tmp_path), OrtModel(path)
    fp32 = OrtModel(tiny_run / "export" / f"{task}.onnx")
    assert trt_model.built and trt_model.contract == ort_model.contract
    for img in images(tiny_data):
        x, _ = trt_model.prepare(img)
        got, ort, ref = trt_model.infer(x), ort_model.infer(x), fp32.infer(x)
        if precision == "int8":
            errs = [rel_l2(a, r) - QDQ_NOISE_FACTOR * rel_l2(b, r) for a, b, r in zip(got, ort, ref, strict=True)]
            tol = TOLERANCE["fp16"]  # the INT8 engine's float layers run in FP16
        else:
            errs, tol = [rel_l2(a, b) for a, b in zip(got, ort, strict=True)], TOLERANCE[precision]
        print(task, precision, errs)
        assert max(errs) <= tol
        got, want = trt_model.predict(img), ort_model.predict(img)  # decoded in source pixels
        if task == "segmenter":
            assert got.shape == want.shape and (got == want).mean() >= (0.9 if precision == "int8" else 0.98)
        elif precision != "int8":  # a tiny one-epoch model: many boxes near the threshold, so counts, not ranks
            assert abs(len(got) - len(want)) <= max(2, len(want) // 10)
    assert TrtModel(path, precision, tmp_path).built is False  # cached: same ONNX, device, TensorRT and recipe
    trt_model.close()


def test_dynamic_batch_engine_takes_any_batch_up_to_its_profile(tiny_run, tiny_data, tmp_path):
    from deploy.contract import ContractError
    from deploy.runtime import OrtModel
    from deploy.trt_runtime import TrtModel
    from export.fp16 import rel_l2
    from export.pipeline import export_fp32
    from train.run_dir import RunDir

    _, path, *_ = export_fp32("detector", RunDir.of(tiny_run).checkpoint("detector"), tmp_path / "export", True)
    model = TrtModel(path, "fp16", tmp_path / "engines", max_batch=4)
    x = np.stack([model.prepare(img)[0] for img in images(tiny_data, 3)])
    for a, b in zip(model.infer(x), OrtModel(path).infer(x), strict=True):
        assert a.shape[0] == 3 and rel_l2(a, b) <= TOLERANCE["fp16"]
    assert model.infer(x[:1])[0].shape[0] == 1
    with pytest.raises(ContractError, match="1..4"):
        model.infer(np.concatenate([x, x]))


def test_a_corrupt_cached_engine_is_rebuilt_not_loaded(tiny_run, tmp_path):
    from deploy.trt_runtime import TrtModel

    path = tiny_run / "export" / "segmenter.onnx"
    engine = TrtModel(path, "fp16", tmp_path).engine_file
    engine.write_bytes(bytes(len(engine.read_bytes())))  # same size, zeroed: the metadata still matches
    (engine.parent / "timing.cache").write_bytes(b"\x00 not a timing cache")
    again = TrtModel(path, "fp16", tmp_path)
    assert again.built and again.engine_file == engine
