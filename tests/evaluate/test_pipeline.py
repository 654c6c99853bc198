"""End to end on a tiny generated set: bench writes the report keys, the gate attributes faults."""

import json

import numpy as np

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
    cfg = {k: {"max_quantization_drop": 1.0, "max_preprocessing_drop": 0.0, "latency_ms": {"cpu-1thread": 5000},
               "max_size_mb": 50} for k in ("detector", "segmenter")}
    cfg["detector"]["metric"] = "map50"
    cfg["segmenter"]["metric"] = "miou"
    path = tmp_path / "gate.yaml"
    path.write_text(json.dumps(cfg))
    return path


def test_bench_writes_report_keys(tiny_run):
    assert bench_main(["--run", str(tiny_run), "--repeats", "3", "--warmup", "1"]) == 0
    report = json.loads((tiny_run / "report.json").read_text())
    for key in ("detector.fp32.map50", "detector.int8.map50", "detector.torch.map",
                "segmenter.fp32.thin_iou", "segmenter.int8.miou", "detector.int8.speedup_1t",
                "detector.int8.agreement", "segmenter.int8.agreement"):
        kind, variant, metric = key.split(".")
        assert isinstance(report[kind][variant][metric], float), key
    assert "| int8 |" in (tiny_run / "report.md").read_text()


def test_gate_passes_clean_pipeline_and_blames_preprocessing_fault(tiny_run, tmp_path):
    cfg = _gate_config(tmp_path)
    assert gate_main(["--run", str(tiny_run), "--config", str(cfg)]) == 0
    clean = json.loads((tiny_run / "gate" / "gate.json").read_text())
    for g in clean["models"].values():
        assert g["deltas"]["preprocessing"] == 0.0 and g["input_tensor"]["max_abs"] == 0
    rc = gate_main(["--run", str(tiny_run), "--config", str(cfg),
                    "--deployed-preprocess", "tests.evaluate.test_pipeline:swap_channels"])
    faulty = json.loads((tiny_run / "gate" / "gate.json").read_text())
    seg = faulty["models"]["segmenter"]
    assert seg["input_tensor"]["max_abs"] > 0  # the tensor-level evidence always sees it
    assert seg["input_tensor"]["min_psnr"] is not None and seg["input_tensor"]["min_psnr"] < 40
    c = seg["cells"]
    assert seg["deltas"]["preprocessing"] == c["reference/fp32"] - c["deployed/fp32"]
    assert c["reference/fp32"] == clean["models"]["segmenter"]["cells"]["reference/fp32"]  # reference untouched
    if seg["deltas"]["preprocessing"] > 0:
        assert rc == 1 and "preprocessing" in seg["blame"] and faulty["verdict"] == "fail"


def test_gate_exit_code_two_when_it_cannot_run(tmp_path):
    assert gate_main(["--run", str(tmp_path / "missing"), "--config", str(REPO / "configs/gate.yaml")]) == 2
