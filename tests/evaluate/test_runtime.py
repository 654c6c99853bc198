"""The gate's runtimes: a CPU class's kernels by name, and the correct integer runtime the deployed one is held to."""

import pytest

from deploy.emulate import unavailable
from evaluate import runtime
from evaluate.gate_config import GateConfigError
from tests.deploy import qdq_graph


def machine(kclass: str):
    return lambda *a, **k: {"kernel_class": kclass}


def test_unknown_cpu_profiles_are_refused_in_one_line(tmp_path):
    with pytest.raises(GateConfigError, match=r"--runtime 'qemu:x86-avx9': unknown CPU profile"):
        runtime.resolve_runtime("qemu:x86-avx9", "segmenter", tmp_path, tmp_path / "m.onnx")


@pytest.mark.parametrize("here, file_kernels, want", [
    ("x86-avx512vnni", "x86-avx512vnni", "ort (x86-avx512vnni)"),  # exact int32 kernels: this machine's
    ("x86-avx2", "portable", "ort (x86-avx2)"),  # 7-bit weights cannot saturate AVX2
    ("x86-avx2", "x86-avx512vnni", "qemu:x86-sse4"),  # AVX2 would saturate: SSE4's kernels under QEMU
])
def test_the_integer_reference_never_saturates(tmp_path, monkeypatch, here, file_kernels, want):
    monkeypatch.setattr(runtime, "fingerprint", machine(here))
    path = qdq_graph.build(tmp_path / "m.onnx", 127, 1 / 127, file_kernels)
    if want.startswith("qemu") and unavailable("x86-sse4"):
        assert runtime.integer_reference(path, file_kernels) is None  # then the gate falls back to exact QDQ
        return
    ref = runtime.integer_reference(path, file_kernels)
    assert ref.name == want and ref.model == path


def test_a_phone_class_is_judged_against_arms_other_kernel_family(tmp_path, monkeypatch):
    path = qdq_graph.build(tmp_path / "m.onnx", 64, 1 / 64, "portable")
    if unavailable("arm64") is None:  # ARM requantizes with its own rounding: the reference is ARM's too
        ref = runtime.integer_reference(path, "portable", "arm64-i8mm")
        assert (ref.name, ref.kernels) == ("qemu:arm64", "arm64")
    monkeypatch.setenv("EDGE_VISION_CACHE", str(tmp_path / "none"))  # no ARM64 userland: this machine's kernels
    assert runtime.integer_reference(path, "portable", "arm64-dotprod").name.startswith("ort (")
