"""`make kernels`: every INT8 CPU file per kernel class, the ARM kernel path, and deploy run in the ARM userland."""

import json

import pytest

from deploy.emulate import unavailable
from evaluate.kernels import main as kernels_main

WHY = unavailable("arm64-dotprod")


def test_unknown_profile_is_a_one_line_refusal(tiny_run, capsys):
    assert kernels_main(["--run", str(tiny_run), "--profiles", "arm64-a99"]) == 2
    assert "unknown ['arm64-a99']" in capsys.readouterr().err


@pytest.mark.skipif(WHY is not None, reason=WHY or "")
def test_every_int8_file_on_a_phone_class_with_its_kernel_path(tiny_run):
    assert kernels_main(["--run", str(tiny_run), "--profiles", "arm64-dotprod", "--limit", "3",
                         "--run-frames", "3"]) in (0, 1)  # 1: a one-epoch model may round past --max-drop
    out = json.loads((tiny_run / "kernels" / "kernels.json").read_text())
    assert out["profiles"] == {"arm64-dotprod": out["profiles"]["arm64-dotprod"]} and out["wall_seconds"] > 0
    for task in ("detector", "segmenter"):
        r = out[task]
        assert set(r["files"]) == {"onnx", "ort"} and r["files"]["ort"].startswith("mobile/")
        arm = r["rows"]["qemu arm64-dotprod"]
        assert arm["kernels"] == "arm64-dotprod" and arm["mismatch"] is None
        for col in ("onnx", "ort"):
            assert arm[col]["kernel_path"]["path"] == "dot product (SDOT/UDOT)" and "vs_exact" in arm[col]
    assert out["deploy_run"]["arm64-dotprod"]["agree"] and out["deploy_run"]["arm64-dotprod"]["frames"] == 3
