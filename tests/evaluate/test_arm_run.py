"""`deploy run` inside the ARM64 userland against the native run, and the gate's runtime factor measured against
a phone class's kernels."""

import json

import pytest

from deploy.emulate import main as emulate_main
from deploy.emulate import unavailable
from deploy.runtime import OrtModel
from evaluate import arm_run
from evaluate.gate import main as gate_main
from tests.evaluate.test_pipeline import _gate_config

WHY = unavailable("arm64-dotprod")


def frame(i, boxes=(), thin=None):
    return {"frame": i, "boxes": [{"label": lbl, "score": s, "xyxy": list(b)} for lbl, s, b in boxes],
            "thin_pixels": thin or {}}


def test_compare_allows_float_rounding_and_threshold_ties_only():
    box = ("car", 0.9, (10, 10, 50, 50))
    want = [frame(0, [box, ("car", 0.251, (60, 60, 90, 90))], {"wire": 1000})]
    assert arm_run.compare([frame(0, [("car", 0.901, (10, 10, 50, 50.1))], {"wire": 1004})], want)["agree"]
    assert arm_run.compare([frame(0, [("car", 0.9, (10, 10, 50, 51))], {"wire": 1000})], want)["disagreeing_frames"] \
        == [0]  # a box 1 px off
    assert not arm_run.compare([frame(0, [box], {"wire": 1100})], want)["agree"]  # 10 % of the pixels
    assert not arm_run.compare(want + want, want)["agree"]
    effect = arm_run.kernel_effect(want, [frame(0, [("car", 0.8, (10, 10, 50, 52))], {"wire": 900})])
    assert effect["matched"] == 1 and effect["max_score_change"] == 0.1 and effect["max_thin_pixel_change"] == 0.1


def test_emulate_cli_refuses_an_unknown_profile(capsys):
    with pytest.raises(SystemExit):
        emulate_main(["--profile", "arm64-a99", "--", "-c", "pass"])
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.skipif(WHY is not None, reason=WHY or "")
def test_deploy_run_in_the_arm_userland_matches_the_native_run(tiny_run, tiny_data, tmp_path, capfd):
    images = sorted((tiny_data.parent / "data" / "images" / "val").glob("*.jpg"))[:4]
    exp = tiny_run / "export"
    r = arm_run.smoke(exp / "detector.int8.onnx", exp / "segmenter.int8.onnx", images, "arm64-dotprod", tmp_path)
    assert r["frames"] == 4 and r["agree"], r
    assert emulate_main(["--profile", "arm64", "--", "-c", "import torch"]) != 0  # the userland is torch-free
    capfd.readouterr()
    assert emulate_main(["--profile", "arm64", "--", "-m", "deploy", "run", "--model", str(exp / "detector.int8.onnx"),
                         "--source", str(tmp_path / "val.mkv"), "--max-frames", "1", "--no-drift"]) == 0
    err = capfd.readouterr().err
    assert "timings are not latency" in err and '"emulated": "arm64"' in err  # never reported as a device's


@pytest.mark.skipif(WHY is not None, reason=WHY or "")
def test_gate_measures_the_runtime_factor_against_arm_kernels(tiny_run, tmp_path):
    cfg = _gate_config(tmp_path)
    gate_main(["--run", str(tiny_run), "--config", str(cfg), "--runtime", "qemu:arm64-dotprod", "--limit", "4"])
    gate = json.loads((tiny_run / "gate" / "gate.json").read_text())
    for task, g in gate["models"].items():
        rt = g["evidence"]["runtime"]
        assert rt["runtime"] == "qemu:arm64-dotprod" and rt["kernels"] == "arm64-dotprod"
        assert rt["reference"] == "qemu:arm64"  # ARM's other kernel family: ARM's requantization rounding
        outputs = OrtModel(tiny_run / "export" / f"{task}.int8.onnx").contract.outputs
        assert set(rt["output_sqnr_db"]) == set(outputs)  # one SQNR per output tensor
        assert all(v > 20 for v in rt["output_sqnr_db"].values())
