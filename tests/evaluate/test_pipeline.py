"""End to end on a tiny generated set: bench writes the report keys, the gate attributes faults."""

import json

import numpy as np
import pytest

from deploy.preprocess import preprocess
from evaluate.bench import main as bench_main
from evaluate.gate import main as gate_main
from tests.conftest import REPO


def swap_channels(img, spec):
    """A deployed preprocessing bug: feeding the other channel order."""
    t, lb = preprocess(img, spec)
    return np.ascontiguousarray(t[::-1]), lb


def _gate_config(tmp_path):
    # loose accuracy limits: a one-epoch model is not a release candidate; attribution is what is tested
    cfg = {k: {"max_quantization_drop": 1.0, "max_preprocessing_drop": 0.0, "min_input_psnr": 40,
               "max_runtime_drop": 0.0, "min_runtime_sqnr": 40,
               "latency_ms": {"cpu-1thread": 5000, "jetson-orin": 10}, "max_size_mb": 50}
           for k in ("detector", "segmenter")}
    cfg["detector"]["metric"] = "map50"
    cfg["segmenter"]["metric"] = "miou"
    path = tmp_path / "gate.yaml"
    path.write_text(json.dumps(cfg))
    return path


def test_bench_writes_report_keys(tiny_run):
    assert bench_main(["--run", str(tiny_run), "--repeats", "3", "--warmup", "1"]) == 0
    bench = tiny_run / "bench"
    report = json.loads((bench / "report.json").read_text())
    for key in ("detector.fp32.map50", "detector.int8.map50", "detector.torch.map", "detector.int8-trt.map",
                "segmenter.fp32.thin_iou", "segmenter.int8.miou", "detector.int8.speedup_1t",
                "detector.int8.agreement", "segmenter.int8.agreement", "detector.int8.size_ratio"):
        task, variant, metric = key.split(".")
        assert isinstance(report[task][variant][metric], float), key
    for task in ("detector", "segmenter"):
        for variant in ("fp32", "int8", "int8-trt", "fp32.ort", "int8.ort"):
            lat = report[task][variant]["latency_ms"]["1t"]
            assert lat["p50"] <= lat["p99"] and lat["fps"] > 0, (task, variant)
        assert "skipped" in report[task]["tensorrt"]  # no TensorRT here, and the report says so
    assert len(report["detector"]["fp32"]["pr50"]) == 101
    for plot in ("detector_pareto.png", "segmenter_pareto.png", "detector_pr.png"):
        assert (bench / plot).read_bytes()[:4] == b"\x89PNG", plot
    md = (bench / "report.md").read_text()
    assert "| int8 |" in md and "![detector_pr.png](detector_pr.png)" in md


def test_gate_passes_clean_pipeline_and_blames_preprocessing_fault(tiny_run, tmp_path):
    cfg = _gate_config(tmp_path)
    assert gate_main(["--run", str(tiny_run), "--config", str(cfg)]) == 0
    clean = json.loads((tiny_run / "gate" / "gate.json").read_text())
    for g in clean["models"].values():
        assert g["deltas"]["preprocessing"] == 0.0 and g["evidence"]["input_tensor"]["max_abs"] == 0
        assert g["evidence"]["worst_layers"]
        assert set(g["evidence"]["output_sqnr_db"]) <= {"cls_logits", "boxes", "logits"}
        # an interval for every delta (paired bootstrap over the images), the drop checks carry theirs
        assert {"quantization", "preprocessing", "interaction", "runtime"} <= set(g["intervals"])
        assert all(lo <= hi for lo, hi in g["intervals"].values())
        assert all("interval" in c for c in g["checks"] if c["name"].endswith(("quantization drop",
                                                                                "preprocessing drop")))
    junit = (tiny_run / "gate" / "gate.junit.xml").read_text()
    assert junit.count("<testcase") == len(clean["checks"]) and "<skipped" in junit  # jetson-orin: no device here
    assert "<failure" not in junit
    rc = gate_main(["--run", str(tiny_run), "--config", str(cfg),
                    "--deployed-preprocess", "tests.evaluate.test_pipeline:swap_channels"])
    faulty = json.loads((tiny_run / "gate" / "gate.json").read_text())
    seg = faulty["models"]["segmenter"]
    assert seg["evidence"]["input_tensor"]["max_abs"] > 0  # the tensor-level evidence always sees it
    assert seg["evidence"]["input_tensor"]["min_psnr"] < 40
    c = seg["cells"]
    assert seg["deltas"]["preprocessing"] == c["reference/fp32"] - c["deployed/fp32"]
    assert c["reference/fp32"] == clean["models"]["segmenter"]["cells"]["reference/fp32"]  # reference untouched
    assert rc == 1 and seg["blame"] == "preprocessing" and faulty["verdict"] == "fail"
    assert "<failure" in (tiny_run / "gate" / "gate.junit.xml").read_text()


def test_gate_without_labels_and_from_device_captures(tiny_run, tiny_data, tmp_path):
    from deploy.capture import save_capture
    from deploy.preprocess import read_image
    from deploy.runtime import OrtModel

    cfg = _gate_config(tmp_path)
    assert gate_main(["--run", str(tiny_run), "--config", str(cfg), "--no-labels"]) == 0
    g = json.loads((tiny_run / "gate" / "gate.json").read_text())
    assert g["labels"] is False
    seg = g["models"]["segmenter"]
    assert seg["cells"]["reference/fp32"] == 1.0 and seg["cells"]["deployed/fp32"] == 1.0  # pseudo-GT is fp32
    # frames "captured on a device": the runtime's own tensors, then channel-swapped ones
    images = sorted((tiny_data.parent / "data" / "images" / "val").glob("*.jpg"))
    for task in ("detector", "segmenter"):
        spec = OrtModel(tiny_run / "export" / f"{task}.onnx").contract.preprocess
        for i, p in enumerate(images[:4]):
            img = read_image(p)
            save_capture(tmp_path / "cap" / task, f"{i:04d}", img, *preprocess(img, spec))
            save_capture(tmp_path / "bad" / task, f"{i:04d}", img, *swap_channels(img, spec))
    assert gate_main(["--run", str(tiny_run), "--config", str(cfg), "--capture", str(tmp_path / "cap")]) == 0
    assert gate_main(["--run", str(tiny_run), "--config", str(cfg), "--capture", str(tmp_path / "bad")]) == 1
    bad = json.loads((tiny_run / "gate" / "gate.json").read_text())
    assert all(m["blame"] == "preprocessing" for m in bad["models"].values()) and bad["labels"] is False


def test_gate_runtime_factor_from_a_hook_and_from_outputs_a_device_recorded(tiny_run, tiny_data, tmp_path):
    from deploy.capture import save_capture
    from deploy.preprocess import read_image
    from deploy.runtime import OrtModel

    cfg = _gate_config(tmp_path)
    assert gate_main(["--run", str(tiny_run), "--config", str(cfg), "--runtime", "ort:threads=1"]) == 0
    same = json.loads((tiny_run / "gate" / "gate.json").read_text())
    for g in same["models"].values():  # the same kernels with another thread count: nothing to blame
        rt = g["evidence"]["runtime"]
        assert rt["drop"] == 0.0 and min(rt["output_sqnr_db"].values()) > 60 and rt["reference"].startswith("ort (")
        # runtime = rounding (exact QDQ -> a correct integer runtime) + the deployed runtime's own part
        assert g["deltas"]["runtime"] == pytest.approx(rt["rounding"] + rt["drop"])
    assert gate_main(["--run", str(tiny_run), "--config", str(cfg),
                      "--runtime", "evaluate.gate_selftest:saturating_int8"]) == 1
    bad = json.loads((tiny_run / "gate" / "gate.json").read_text())
    assert all(g["blame"] == "runtime" for g in bad["models"].values())
    assert bad["models"]["segmenter"]["cells"]["deployed/int8"] == same["models"]["segmenter"]["cells"]["deployed/int8"]
    # captures that carry the device's outputs: the gate recomputes ONNX Runtime's on the same tensors and file
    images = sorted((tiny_data.parent / "data" / "images" / "val").glob("*.jpg"))
    for task in ("detector", "segmenter"):
        model = OrtModel(tiny_run / "export" / f"{task}.int8.onnx")
        for i, p in enumerate(images[:4]):
            img = read_image(p)
            x, lb = preprocess(img, model.contract.preprocess)
            outs = model.infer(x)
            save_capture(tmp_path / "cap" / task, f"{i:04d}", img, x, lb, outs, model.path.name)
            save_capture(tmp_path / "bad" / task, f"{i:04d}", img, x, lb, [o[..., ::-1] for o in outs],
                         model.path.name)  # a runtime that returns its channels reversed
    assert gate_main(["--run", str(tiny_run), "--config", str(cfg), "--capture", str(tmp_path / "cap")]) == 0
    good = json.loads((tiny_run / "gate" / "gate.json").read_text())
    assert all(m["evidence"]["runtime"]["runtime"].startswith("recorded") and m["evidence"]["runtime"]["drop"] == 0
               for m in good["models"].values())
    assert gate_main(["--run", str(tiny_run), "--config", str(cfg), "--capture", str(tmp_path / "bad")]) == 1
    bad = json.loads((tiny_run / "gate" / "gate.json").read_text())
    assert all("runtime" in m["blame"] for m in bad["models"].values())


def test_gate_baseline_regression_and_update(tiny_run, tmp_path):
    import yaml

    cfg = yaml.safe_load(_gate_config(tmp_path).read_text())
    cfg["baseline"] = str(tmp_path / "baseline.json")
    cfg["baseline_tolerance"] = {"accuracy": 0.01, "speedup_ratio": 0.0, "size_ratio": 1.05}  # speed: busy CI
    path = tmp_path / "gate.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert gate_main(["--run", str(tiny_run), "--config", str(path), "--update-baseline"]) == 0
    (kclass,) = json.loads((tmp_path / "baseline.json").read_text())[tiny_run.name]  # this machine's class only
    base = json.loads((tmp_path / "baseline.json").read_text())[tiny_run.name][kclass]
    assert base["hardware"]["kernel_class"] == kclass
    assert gate_main(["--run", str(tiny_run), "--config", str(path)]) == 0  # same figures: no regression
    base["detector"]["accuracy"] += 0.5  # a baseline this run falls far short of
    base["detector"]["size_mb"] /= 2
    (tmp_path / "baseline.json").write_text(json.dumps({tiny_run.name: {kclass: base}, "other-run": {}}))
    assert gate_main(["--run", str(tiny_run), "--config", str(path)]) == 1
    failed = {c["name"] for c in json.loads((tiny_run / "gate" / "gate.json").read_text())["checks"] if not c["passed"]}
    assert any("baseline map50" in n for n in failed)
    assert any(n.startswith("detector: baseline size MB") for n in failed)
    base["detector"]["speedup"]["cpu-1thread"] = 1e3  # an INT8 speed-up this run cannot reach
    (tmp_path / "baseline.json").write_text(json.dumps({tiny_run.name: {kclass: base}}))
    cfg["baseline_tolerance"]["speedup_ratio"] = 0.8
    path.write_text(yaml.safe_dump(cfg))
    assert gate_main(["--run", str(tiny_run), "--config", str(path)]) == 1
    failed = {c["name"] for c in json.loads((tiny_run / "gate" / "gate.json").read_text())["checks"] if not c["passed"]}
    assert any("baseline int8 speed-up" in n for n in failed)


def test_gate_exit_code_two_when_it_cannot_run(tmp_path):
    assert gate_main(["--run", str(tmp_path / "missing"), "--config", str(REPO / "configs/gate.yaml")]) == 2
