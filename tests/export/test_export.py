import json

import numpy as np
import onnx
import pytest
import torch

from deploy.contract import Contract, ContractError
from deploy.preprocess import PreprocessSpec
from deploy.runtime import ModelLoadError, OrtModel
from export.onnx_export import export_onnx, parity
from export.quantize import output_convs, quantize_int8
from tests.conftest import REPO
from train.models import Detector, Segmenter


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    torch.manual_seed(0)
    model = Detector(num_classes=3, channels=16, head_convs=1).eval()
    spec = PreprocessSpec(input_size=(96, 128), channel_order="BGR")
    contract = Contract("detector", spec, ["a", "b", "c"], "abc123", ["cls_logits", "boxes"],
                        postprocess={"conf_thres": 0.3})
    path = export_onnx(model, contract, tmp_path_factory.mktemp("onnx") / "det.onnx")
    return model, contract, path


def test_onnx_carries_the_contract_and_matches_torch(tiny_onnx):
    model, contract, path = tiny_onnx
    rt = OrtModel(path)
    assert rt.contract == contract
    meta = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert json.loads(meta["edge_vision.class_names"]) == ["a", "b", "c"]
    assert json.loads(meta["edge_vision.preprocess"])["channel_order"] == "BGR"
    rng = np.random.default_rng(0)
    inputs = [rng.integers(0, 256, (1, 3, 96, 128), dtype=np.uint8), np.full((1, 3, 96, 128), 200, np.uint8)]
    assert parity(model, path, inputs) < 1e-4


def test_int8_for_tensorrt_is_qdq_symmetric_keeps_output_convs_float(tiny_onnx, tiny_data):
    _, contract, path = tiny_onnx
    imgs = sorted((tiny_data.parent / "data" / "images" / "train").glob("*.jpg"))[:4]
    out = path.with_name("det.int8-trt.onnx")
    kept = quantize_int8(path, out, contract, imgs, target="tensorrt")
    q = onnx.load(out)
    ops = [n.op_type for n in q.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert set(kept) == set(output_convs(onnx.load(path))) and len(kept) == 6  # cls + reg per level
    inits = {i.name: i for i in q.graph.initializer}
    zps = [onnx.numpy_helper.to_array(inits[n.input[2]]) for n in q.graph.node
           if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in inits]
    assert zps and all((z == 0).all() and z.dtype == np.int8 for z in zps)  # symmetric int8 (TensorRT)
    rt = OrtModel(out)
    assert rt.contract.precision == "int8" and rt.contract.class_names == contract.class_names
    assert out.stat().st_size < path.stat().st_size


def test_int8_for_cpu_feeds_the_uint8_frame_to_the_first_conv_and_stays_close(tmp_path, tiny_data):
    from export.quantize import float_tail

    torch.manual_seed(0)
    model = Detector(num_classes=3, backbone="mobilenet_v3_small_minimal", channels=16, head_convs=1).eval()
    spec = PreprocessSpec(input_size=(96, 128))
    contract = Contract("detector", spec, ["a", "b", "c"], "abc123", ["cls_logits", "boxes"])
    path = export_onnx(model, contract, tmp_path / "det.onnx")
    imgs = sorted((tiny_data.parent / "data" / "images" / "train").glob("*.jpg"))[:4]
    out = tmp_path / "det.int8.onnx"
    kept = quantize_int8(path, out, contract, imgs, target="cpu")
    q = onnx.load(out)
    first = [n for n in q.graph.node if "images" in n.input]
    # the frame goes through a uint8 Pad straight into the stem's DequantizeLinear: no Cast/Mul/Quantize
    assert [n.op_type for n in first] == ["Pad"]
    (stem_dq,) = [n for n in q.graph.node if n.input and n.input[0] == first[0].output[0]]
    assert stem_dq.op_type == "DequantizeLinear"
    zps = {onnx.numpy_helper.to_array(i).dtype for i in q.graph.initializer if i.data_type == onnx.TensorProto.UINT8}
    assert zps == {np.dtype(np.uint8)}  # asymmetric uint8 activations (ONNX Runtime folds ReLUs into them)
    tail = set(float_tail(onnx.load(path)))
    assert tail and kept == []  # output convs quantized too on the CPU (uint8 zero points keep the logits)
    x = np.random.default_rng(0).integers(0, 256, (1, 3, 96, 128), dtype=np.uint8)
    f, i8 = OrtModel(path).infer(x), OrtModel(out).infer(x)
    boxes_err = np.abs(f[1] - i8[1]).mean() / np.abs(f[1]).mean()
    assert boxes_err < 0.1, boxes_err  # a broken input rewrite gives garbage, not a few % of quantization noise
    assert out.stat().st_size < 0.45 * path.stat().st_size


def test_runtime_refuses_models_without_contract_or_not_onnx(tmp_path, tiny_onnx):
    _, _, path = tiny_onnx
    m = onnx.load(path)
    del m.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(m, bare)
    with pytest.raises(ContractError, match="bare.onnx: no edge-vision contract"):
        OrtModel(bare)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00garbage")
    with pytest.raises(ModelLoadError, match="junk.onnx: not a loadable ONNX model"):
        OrtModel(junk)


def test_check_trt_accepts_our_int8_and_flags_what_tensorrt_refuses(tiny_onnx, tiny_data, tmp_path):
    from onnx import TensorProto, helper

    from export.check_trt import check_model
    from export.check_trt import main as check_main

    _, contract, path = tiny_onnx
    out = tmp_path / "det.int8-trt.onnx"
    imgs = sorted((tiny_data.parent / "data" / "images" / "train").glob("*.jpg"))[:2]
    quantize_int8(path, out, contract, imgs, target="tensorrt")
    assert check_model(onnx.load(out)) == [] and check_main([str(out)]) == 0
    # a hand-made asymmetric uint8 activation Q/DQ pair and a non-standard op
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    inits = [helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]),
             helper.make_tensor("z", TensorProto.UINT8, [], [128])]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q"),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"], name="d"),
             helper.make_node("FusedGemm", ["d"], ["y"], name="f", domain="com.microsoft")]
    bad = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 18)])
    rules = {f.rule for f in check_model(bad)}
    assert {"dtype", "symmetric", "domain"} <= rules


def test_check_trt_flags_a_quantize_without_zero_point_and_an_opset_tensorrt_10_refuses():
    from onnx import TensorProto, helper

    from export.check_trt import MAX_OPSET, check_model

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    inits = [helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]), helper.make_tensor("z", TensorProto.INT8, [], [0])]

    def graph(q_inputs, opset):
        nodes = [helper.make_node("QuantizeLinear", q_inputs, ["q"], name="q"),
                 helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="d")]
        return helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits),
                                 opset_imports=[helper.make_opsetid("", opset)])

    assert check_model(graph(["x", "s", "z"], 18)) == []  # the symmetric INT8 pair TensorRT wants
    no_zp = check_model(graph(["x", "s"], 18))  # ONNX's default output type is UINT8
    assert [(f.rule, f.node) for f in no_zp] == [("dtype", "q")] and "UINT8" in no_zp[0].message
    too_new = check_model(graph(["x", "s", "z"], MAX_OPSET + 1))
    assert [f.rule for f in too_new] == ["opset"] and "TensorRT 10.3" in too_new[0].message


def test_make_export_writes_manifest_with_mobile_models(tiny_run):
    exp = tiny_run / "export"
    manifest = json.loads((exp / "manifest.json").read_text())
    files = {e["file"]: e for e in manifest["files"]}
    for task in ("detector", "segmenter"):
        for name in (f"{task}.onnx", f"{task}.int8.onnx", f"{task}.int8-trt.onnx", f"{task}.fp16.onnx",
                     f"{task}.int8-trt.fp16.onnx", f"mobile/{task}.ort", f"mobile/{task}.int8.ort"):
            assert name in files and (exp / name).stat().st_size == files[name]["size_bytes"]
        assert files[f"{task}.int8-trt.onnx"]["tensorrt_lint"] == []
        assert f"mobile/{task}.int8-trt.ort" not in files  # TensorRT's file is not for phones
        assert files[f"{task}.onnx"]["parity_max_rel_err"] < 1e-4
        # the .ort model carries the same contract and gives the same outputs as its ONNX source
        a, b = OrtModel(exp / f"{task}.int8.onnx"), OrtModel(exp / "mobile" / f"{task}.int8.ort")
        assert a.contract == b.contract
        x = np.random.default_rng(1).integers(0, 256, (1, 3, *a.contract.preprocess.input_size), dtype=np.uint8)
        for u, v in zip(a.infer(x), b.infer(x), strict=True):
            np.testing.assert_allclose(u, v, atol=1e-4)
    assert "Conv" in (exp / manifest["ort_mobile_ops_config"]).read_text()


@pytest.mark.parametrize("kernels, dense_max", [("portable", 64), ("x86-avx2", 64), ("x86-avx512vnni", 127)])
def test_the_cpu_file_gives_dense_convs_7_bit_weights_where_kernels_may_saturate(tmp_path, tiny_data, kernels,
                                                                                 dense_max):
    from export.quantize import dense_conv_weights

    torch.manual_seed(0)
    model = Detector(num_classes=3, backbone="mobilenet_v3_small_minimal", channels=16, head_convs=1).eval()
    contract = Contract("detector", PreprocessSpec(input_size=(96, 128)), ["a", "b", "c"], "abc123",
                        ["cls_logits", "boxes"])
    path = export_onnx(model, contract, tmp_path / "det.onnx")
    imgs = sorted((tiny_data.parent / "data" / "images" / "train").glob("*.jpg"))[:2]
    out = tmp_path / "det.int8.onnx"
    quantize_int8(path, out, contract, imgs, target="cpu", kernels=kernels)
    q = onnx.load(out)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in q.graph.initializer}
    producer = {n.output[0]: n for n in q.graph.node}
    dense = len(dense_conv_weights(onnx.load(path)))
    peaks = {"dense": [], "depthwise": []}
    for n in q.graph.node:
        if n.op_type == "Conv" and n.input[1] in producer and producer[n.input[1]].input[0] in inits:
            w = inits[producer[n.input[1]].input[0]]
            group = next((a.i for a in n.attribute if a.name == "group"), 1)
            peaks["dense" if group == 1 else "depthwise"].append(int(np.abs(w.astype(np.int16)).max()))
    assert len(peaks["dense"]) == dense and max(peaks["dense"]) == dense_max  # 2 * 255 * 64 < 32767
    assert max(peaks["depthwise"]) == 127  # the 16-bit depthwise kernels keep 8 bits
    assert OrtModel(out).contract.kernels == kernels


def test_int8_over_budget_keeps_the_most_sensitive_convs_in_float(tiny_run, tiny_data, tmp_path):
    from export.onnx_export import contract_from_checkpoint
    from export.pipeline import quantize_within_budget, val_scorer
    from train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(tiny_run / "detector" / "best.pt")
    ckpt["config"]["export"].update(int8_max_drop=-1.0, int8_max_rounds=1, sensitivity_images=2)  # never enough
    fp32 = tiny_run / "export" / "detector.onnx"
    imgs = sorted((tiny_data.parent / "data" / "images" / "train").glob("*.jpg"))[:2]
    kept, acc = quantize_within_budget(ckpt, fp32, tmp_path / "detector.int8.onnx",
                                       contract_from_checkpoint(ckpt), imgs, "minmax", "cpu", val_scorer(ckpt),
                                       "portable")
    # the CPU target starts with every conv quantized; the round adds two, unless they scored worse
    assert acc["rounds"] == 1 and len(kept) in (0, 2)
    table = (tmp_path / "detector.int8.sensitivity.md").read_text()
    assert "qdq SQNR dB" in table and "1 exclusion round(s)" in table
    # what ships is the best set tried, and the file on disk scores what the manifest will say
    from datasets.metrics import EvalSet
    from deploy.preprocess import preprocess

    val = EvalSet.from_checkpoint(ckpt, "val")
    for exact, want in ((True, acc["int8"]), (False, next(iter(acc["kernels"].values())))):  # exact QDQ, this CPU
        shipped = OrtModel(tmp_path / "detector.int8.onnx", exact=exact)
        spec = shipped.contract.preprocess
        got = val.score(shipped.infer, lambda im, s=spec: preprocess(im, s), shipped.contract.postprocess)
        assert got[acc["metric"]] == want


def test_dynamic_batch_export_matches_torch_at_two_batch_sizes(tmp_path):
    torch.manual_seed(0)
    model = Detector(num_classes=2, channels=16, head_convs=1).eval()
    spec = PreprocessSpec(input_size=(64, 96))
    contract = Contract("detector", spec, ["a", "b"], "h", ["cls_logits", "boxes"])
    path = export_onnx(model, contract, tmp_path / "dyn.onnx", dynamic_batch=True)
    rng = np.random.default_rng(0)
    inputs = [rng.integers(0, 256, (b, 3, 64, 96), dtype=np.uint8) for b in (1, 3)]
    assert parity(model, path, inputs) < 1e-4
    assert OrtModel(path).infer(inputs[1])[0].shape[0] == 3


def test_subpixel_segmenter_exports_its_pixel_shuffle_and_matches_torch(tmp_path):
    torch.manual_seed(0)
    model = Segmenter(num_classes=2, channels=16, backbone="mobilenet_v3_small_minimal", decoder="subpixel").eval()
    contract = Contract("segmenter", PreprocessSpec(input_size=(64, 96)), ["bg", "crack"], "h", ["logits"])
    path = export_onnx(model, contract, tmp_path / "seg.onnx")
    assert "DepthToSpace" in {n.op_type for n in onnx.load(path).graph.node}
    inputs = [np.random.default_rng(0).integers(0, 256, (1, 3, 64, 96), dtype=np.uint8)]
    assert parity(model, path, inputs) < 1e-4


@pytest.mark.parametrize("preset", sorted(p.name for p in (REPO / "configs" / "models").glob("detector-*.yaml")))
def test_every_shipped_detector_preset_exports_its_contract_and_matches_torch(preset, tmp_path):
    import yaml

    from train.config import TaskConfig, build_dataclass
    from train.loop import model_args
    from train.models import build_model

    path = REPO / "configs" / "models" / preset
    task = build_dataclass(TaskConfig, yaml.safe_load(path.read_text()), str(path))
    torch.manual_seed(0)
    model = build_model("detector", model_args(task, 4)).eval()
    spec = task.preprocess_spec()
    h, w = spec.input_size
    x = np.random.default_rng(0).integers(0, 256, (1, 3, h, w), dtype=np.uint8)
    with torch.no_grad():
        cls, boxes = model(torch.from_numpy(x))
    n = sum(-(-h // s) * -(-w // s) for s in model.strides)
    assert cls.shape == (1, n, 4) and boxes.shape == (1, n, 4)  # (B, N, C), (B, N, 4) at the preset's own input
    contract = Contract("detector", spec, list("abcd"), "h", ["cls_logits", "boxes"])
    onnx_path = export_onnx(model, contract, tmp_path / "det.onnx")
    assert OrtModel(onnx_path).contract.preprocess.input_size == (h, w)
    assert parity(model, onnx_path, [x]) < 1e-3


def test_a_distribution_box_head_quantizes_for_the_cpu_with_its_decode_in_float(tmp_path, tiny_data):
    from export.quantize import float_tail

    torch.manual_seed(0)
    model = Detector(num_classes=3, backbone="mobilenet_v3_small_minimal", channels=16, head_convs=1,
                     box_bins=16).eval()
    contract = Contract("detector", PreprocessSpec(input_size=(96, 128)), ["a", "b", "c"], "abc123",
                        ["cls_logits", "boxes"])
    path = export_onnx(model, contract, tmp_path / "det.onnx")
    imgs = sorted((tiny_data.parent / "data" / "images" / "train").glob("*.jpg"))[:4]
    out = tmp_path / "det.int8.onnx"
    quantize_int8(path, out, contract, imgs, target="cpu")
    tail = {n.op_type for n in onnx.load(path).graph.node if n.name in set(float_tail(onnx.load(path)))}
    assert {"Softmax", "ReduceSum"} <= tail  # the expectation over the bins stays float
    x = np.random.default_rng(0).integers(0, 256, (1, 3, 96, 128), dtype=np.uint8)
    f, i8 = OrtModel(path).infer(x), OrtModel(out).infer(x)
    assert np.abs(f[1] - i8[1]).mean() / np.abs(f[1]).mean() < 0.1
