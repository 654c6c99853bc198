"""Baselines per CPU kernel class: speed is judged only against the same class, accuracy and size against any."""

import json
from pathlib import Path

import pytest
import yaml

from deploy.hardware import parse_cpuinfo
from evaluate import gate
from evaluate.baseline import baseline_checks, baseline_for, class_missing, load_baselines, update_baseline
from evaluate.gate_config import BaselineTolerance, GateConfig, GateConfigError, ModelLimits

CPUINFO = Path(__file__).parents[1] / "deploy" / "cpuinfo"
VNNI = parse_cpuinfo((CPUINFO / "intel-xeon-icelake.txt").read_text(), "x86_64")
AVX2 = parse_cpuinfo((CPUINFO / "amd-epyc-zen3.txt").read_text(), "x86_64")
LIMITS = ModelLimits(max_quantization_drop=0.03, max_preprocessing_drop=0.005, metric="thin_iou")
FIGURES = {"metric": "thin_iou", "accuracy": 0.878, "latency_ms": {"cpu-1thread": 1.6},
           "speedup": {"cpu-1thread": 1.7}, "size_mb": 0.174}


def result(accuracy=0.875, speedup=1.2, size_mb=0.175) -> dict:
    return {"metric": "thin_iou", "accuracy": accuracy, "speedup": {"cpu-1thread": speedup}, "size_mb": size_mb}


def judged(baselines: dict, machine: dict, r: dict) -> list[dict]:
    bases, why = baseline_for("segmenter", LIMITS, baselines, None, Path("runs/demo"), "base.json", True)
    assert why is None
    return baseline_checks("segmenter", r, bases, machine["kernel_class"], "base.json", BaselineTolerance())


def test_a_class_without_an_entry_skips_speed_loudly_and_still_judges_accuracy_and_size():
    baselines = {"demo": {"x86-avx512vnni": {"hardware": VNNI, "segmenter": FIGURES}}}
    checks = judged(baselines, AVX2, result(speedup=1.2))  # 1.2x would fail against VNNI's 1.7x
    speed = [c for c in checks if "speed-up" in c["name"]]
    assert len(speed) == 1 and "no entry for kernel class x86-avx2" in speed[0]["skipped"]
    assert all(c["passed"] for c in checks) and len(checks) == 3
    assert not all(c["passed"] for c in judged(baselines, AVX2, result(accuracy=0.85)))  # 2.8 points below
    assert not all(c["passed"] for c in judged(baselines, AVX2, result(size_mb=0.225)))  # the 0.225 MB
    assert class_missing(baseline_for("segmenter", LIMITS, baselines, None, Path("demo"), "b", True)[0],
                         "x86-avx512vnni", "b") is None


def test_speed_is_judged_against_the_same_class():
    baselines = {"demo": {"x86-avx512vnni": {"hardware": VNNI, "segmenter": FIGURES},
                          "x86-avx2": {"hardware": AVX2, "segmenter": {**FIGURES, "speedup": {"cpu-1thread": 1.25}}}}}
    assert all(c["passed"] for c in judged(baselines, AVX2, result(speedup=1.2)))
    failed = [c["name"] for c in judged(baselines, VNNI, result(speedup=1.2)) if not c["passed"]]
    assert failed == ["segmenter: baseline int8 speed-up over fp32 (cpu-1thread, baseline 1.70x on x86-avx512vnni)"]


def test_update_writes_this_class_and_keeps_the_others(tmp_path):
    path = tmp_path / "base.json"
    path.write_text(json.dumps({"demo": {"x86-avx512vnni": {"hardware": VNNI, "segmenter": FIGURES}}}))
    cfg = GateConfig(baseline=str(path))
    baselines, _ = load_baselines(cfg, "gate.yaml")
    models = {"segmenter": {**result(), "latency_ms": {"cpu-1thread": 2.0}}}
    update_baseline(cfg, baselines, Path("runs/demo"), models, AVX2)
    got = json.loads(path.read_text())["demo"]
    assert set(got) == {"x86-avx512vnni", "x86-avx2"} and got["x86-avx2"]["hardware"]["model"] == "AMD EPYC 7B13"
    assert got["x86-avx2"]["segmenter"]["speedup"] == {"cpu-1thread": 1.2}
    assert got["x86-avx512vnni"]["segmenter"] == FIGURES


def test_a_baseline_without_kernel_classes_is_refused(tmp_path):
    with pytest.raises(GateConfigError, match="not a kernel-class entry"):
        baseline_for("segmenter", LIMITS, {"demo": {"segmenter": FIGURES}}, None, Path("demo"), "b.json", True)


def test_require_baseline_exits_2_when_this_class_has_no_entry(tmp_path, capsys, tiny_run, monkeypatch):
    base = tmp_path / "base.json"
    entry = {t: {**FIGURES, "metric": m} for t, m in (("detector", "map50"), ("segmenter", "thin_iou"))}
    base.write_text(json.dumps({tiny_run.name: {"x86-avx512vnni": {"hardware": VNNI, **entry}}}))
    loose = {"max_quantization_drop": 1.0, "max_preprocessing_drop": 1.0}
    cfg = tmp_path / "gate.yaml"
    cfg.write_text(yaml.safe_dump({"detector": loose, "segmenter": loose, "baseline": str(base)}))
    monkeypatch.setattr(gate, "fingerprint", lambda *a, **k: {**AVX2, "cores": 2, "threads": None,
                                                              "onnxruntime": "1.32.0"})
    assert gate.main(["--run", str(tiny_run), "--config", str(cfg), "--require-baseline"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no entry for kernel class x86-avx2 (has ['x86-avx512vnni'])" in err
