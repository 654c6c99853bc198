"""export.adopt: detection ONNX files in Ultralytics' two output layouts, built here around the tiny detector
(no Ultralytics import), go through adopt -> export INT8 -> gate, and get what Ultralytics' own
preprocessing would feed them."""

import json
import subprocess
import sys

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from tests.conftest import REPO

FAMILIES = ("yolo", "yolo-e2e")
SIZE = (128, 160)  # the tiny detector's (H, W)


class UltralyticsLayout(nn.Module):
    """Our tiny detector behind the interface of an Ultralytics detection ONNX: float x/255 in; out the raw head
    (B, 4 + C, N) of cx, cy, w, h and class probabilities, or the end-to-end rows (B, K, 6) of x1, y1, x2, y2,
    score, class, best first."""

    def __init__(self, model: nn.Module, end2end: bool):
        super().__init__()
        self.model, self.end2end = model, end2end

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits, boxes = self.model(x * 255)  # (B, N, C), (B, N, 4) xyxy
        probs = logits.sigmoid()
        if not self.end2end:
            centre, size = (boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:] - boxes[..., :2]
            return torch.cat([centre, size, probs], -1).transpose(1, 2)
        score, cls = probs.max(-1)  # (B, N)
        top, idx = score.topk(min(300, score.shape[1]), dim=1)
        rows = boxes.gather(1, idx[..., None].expand(-1, -1, 4))
        return torch.cat([rows, top[..., None], cls.gather(1, idx)[..., None].float()], -1)


def ultralytics_preprocess(img_bgr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """What Ultralytics feeds its exported model, written from its LetterBox (auto=False, centred, pad 114,
    INTER_LINEAR, padding split by round(d -/+ 0.1)) and its preprocess (BGR -> RGB, CHW, /255)."""
    h, w = img_bgr.shape[:2]
    r = min(size[0] / h, size[1] / w)
    new_w, new_h = int(round(w * r)), int(round(h * r))
    img = cv2.resize(img_bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR) if (new_h, new_w) != (h, w) else img_bgr
    dw, dh = (size[1] - new_w) / 2, (size[0] - new_h) / 2
    top, bottom, left, right = int(round(dh - 0.1)), int(round(dh + 0.1)), int(round(dw - 0.1)), int(round(dw + 0.1))
    img = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(114, 114, 114))
    return np.ascontiguousarray(img[..., ::-1].transpose(2, 0, 1)[None]).astype(np.float32) / 255


@pytest.fixture(scope="module")
def yolo_data(tiny_config, tmp_path_factory):
    """The tiny set in Ultralytics' layout -> its data.yaml."""
    from datasets.coco import read_split
    from datasets.formats import write_yolo
    from train.config import load_config

    data = load_config(tiny_config).dataset()
    return write_yolo({k: read_split(data, k) for k in ("train", "val")}, tmp_path_factory.mktemp("yolo"))


def export_layout(tiny_run, family: str, path, names: list[str]):
    from train.checkpoint import load_checkpoint, model_from_checkpoint

    model = UltralyticsLayout(model_from_checkpoint(load_checkpoint(tiny_run / "detector" / "best.pt")),
                              family == "yolo-e2e").eval()
    torch.onnx.export(model, (torch.rand(1, 3, *SIZE),), path, input_names=["images"], output_names=["output0"],
                      opset_version=18, dynamo=True, external_data=False, verbose=False)
    proto = onnx.load(path)
    for k, v in {"task": "detect", "imgsz": str(list(SIZE)), "names": str(dict(enumerate(names)))}.items():
        proto.metadata_props.add(key=k, value=v)  # as Ultralytics' exporter writes them
    onnx.save(proto, path)
    return path


@pytest.fixture(scope="module", params=FAMILIES)
def adopted(request, tiny_run, yolo_data, tmp_path_factory):
    """(family, source ONNX, run dir) after adopt and export."""
    from export.__main__ import main as export_main
    from export.adopt import main as adopt_main

    names = json.loads(yolo_data.read_text())["names"]
    tmp = tmp_path_factory.mktemp(request.param)
    source = export_layout(tiny_run, request.param, tmp / "best.onnx", [names[k] for k in sorted(names)])
    run = tmp / "run"
    args = ["--onnx", str(source), "--data", str(yolo_data), "--out", str(run), "--conf-thres", "0.001"]
    assert adopt_main(args) == 0
    assert export_main(["--run", str(run)]) == 0
    return request.param, source, run


def test_adopted_file_takes_bytes_and_carries_the_contract(adopted):
    from deploy.runtime import OrtModel

    family, _, run = adopted
    m = OrtModel(run / "export" / "detector.onnx")
    c = m.contract
    assert m.session.get_inputs()[0].type == "tensor(uint8)" and c.family == family
    assert (c.preprocess.input_size, c.preprocess.pad_value, c.preprocess.channel_order) == (SIZE, 114, "RGB")
    assert c.class_names == ["car", "pedestrian", "traffic_sign", "cone"] and c.outputs == ["output0"]
    manifest = json.loads((run / "export" / "manifest.json").read_text())
    files = {e["file"] for e in manifest["files"]}
    assert {"detector.int8.onnx", "detector.int8-trt.onnx", "detector.fp16.onnx", "mobile/detector.int8.ort"} <= files
    assert OrtModel(run / "export" / "detector.int8.onnx").contract.family == family
    from datasets.config import load_dataset_config
    from datasets.metrics import EvalSet

    assert not EvalSet("detector", load_dataset_config(run / "data.yaml"), "val").is_train  # its val split


@pytest.mark.parametrize("src_hw", [(240, 320), (97, 203), (300, 181), (50, 61)])  # odd pads, portrait, upscaled
def test_the_runtime_feeds_the_adopted_model_what_ultralytics_feeds_the_source(adopted, src_hw):
    """The preprocessing contract: our letterbox and channel order on uint8 frames, through the adopted file,
    give the outputs the source file gives on Ultralytics' own preprocessing of the same frame."""
    from deploy.runtime import OrtModel

    _, source, run = adopted
    img = np.random.default_rng(src_hw[0]).integers(0, 256, (*src_hw, 3), dtype=np.uint8)
    m = OrtModel(run / "export" / "detector.onnx")
    tensor, _ = m.prepare(img)
    want = ultralytics_preprocess(img, SIZE)
    np.testing.assert_array_equal(tensor, np.rint(want[0] * 255).astype(np.uint8))
    ref = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]).run(None, {"images": want})[0]
    np.testing.assert_array_equal(m.infer(tensor)[0], ref)  # the same x/255: bit-identical outputs


def test_raw_head_decodes_to_the_detections_of_the_model_inside(adopted, tiny_run, tiny_data):
    from deploy.postprocess import decode_detections
    from deploy.preprocess import read_image
    from deploy.runtime import OrtModel

    family, _, run = adopted
    if family != "yolo":
        pytest.skip("the end-to-end rows keep the top 300 without NMS: other detections by design")
    ours, theirs = OrtModel(tiny_run / "export" / "detector.onnx"), OrtModel(run / "export" / "detector.onnx")
    img = read_image(sorted((tiny_data.parent / "data" / "images" / "val").iterdir())[0])
    tensor, lb = ours.prepare(img)
    want = decode_detections(*ours.infer(tensor), lb, conf_thres=0.001, iou_thres=0.7, max_det=300)
    got = theirs.predict(img)
    assert len(got) == len(want) > 0
    rows = lambda d: np.unique(np.c_[d.boxes, d.scores * 100, d.labels].round(1), axis=0)  # noqa: E731 (ties reorder)
    np.testing.assert_allclose(rows(got), rows(want), atol=0.11)


def test_gate_gives_the_2x2_table_and_its_preprocessing_checks_pass(adopted, tmp_path):
    import yaml

    from evaluate.gate import main as gate_main

    _, _, run = adopted
    loose = {"max_quantization_drop": 1.0, "max_preprocessing_drop": 0.0, "min_input_psnr": 90,
             "latency_ms": {"cpu-1thread": 5000}, "max_size_mb": 50}
    cfg = tmp_path / "gate.yaml"
    cfg.write_text(yaml.safe_dump({"detector": loose}))
    assert gate_main(["--run", str(run), "--config", str(cfg)]) == 0
    g = json.loads((run / "gate" / "gate.json").read_text())["models"]["detector"]
    assert set(g["cells"]) >= {"reference/fp32", "reference/int8", "deployed/fp32", "deployed/int8"}
    assert {"quantization", "preprocessing", "interaction"} <= set(g["deltas"]) and g["deltas"]["preprocessing"] == 0
    assert all(c["passed"] for c in g["checks"] if c.get("stage") == "preprocessing")


def test_deploy_run_reads_the_adopted_model(adopted, tiny_data, tmp_path):
    _, _, run = adopted
    out = tmp_path / "preds.jsonl"
    r = subprocess.run([sys.executable, "-m", "deploy", "run", "--model", str(run / "export" / "detector.int8.onnx"),
                        "--source", str(tiny_data.parent / "data" / "images" / "test"), "--out", str(out)],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert len(out.read_text().splitlines()) == 4


def adopt_error(capsys, argv) -> str:
    from export.adopt import main as adopt_main

    assert adopt_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_wrong_files_and_classes_are_refused_in_one_line_and_nothing_is_written(adopted, yolo_data, tmp_path, capsys):
    _, source, run = adopted
    out = tmp_path / "run"
    args = ["--data", str(yolo_data), "--out", str(out)]
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a protobuf")
    assert "not an ONNX file" in adopt_error(capsys, ["--onnx", str(junk), *args])
    assert "already adopted" in adopt_error(capsys, ["--onnx", str(run / "export" / "detector.onnx"), *args])
    assert "--input-size asks 320x320" in adopt_error(capsys, ["--onnx", str(source), *args, "--input-size", "320"])
    assert "one or two positive sizes" in adopt_error(capsys, ["--onnx", str(source), *args, "--input-size", "0"])
    other = tmp_path / "data.yaml"
    other.write_text(yolo_data.read_text().replace('"cone"', '"traffic_cone"'))
    err = adopt_error(capsys, ["--onnx", str(source), "--data", str(other), "--out", str(out)])
    assert "trained on 4 classes" in err and "pass the data.yaml the model was trained with" in err
    assert not out.exists()
    err = adopt_error(capsys, ["--onnx", str(source), "--data", str(yolo_data), "--out", str(run)])
    assert "holds a detector already" in err and (run / "export" / "detector.int8.onnx").is_file()
