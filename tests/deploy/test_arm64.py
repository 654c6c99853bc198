"""The phone-CPU profiles: the ARM64 userland's cache key, the emulated core's /proc/cpuinfo against real phones'
cpuinfo files, the kernel path read from QEMU's trace, and the skip path where the userland cannot be had."""

from pathlib import Path

import numpy as np
import pytest

from deploy import arm64, kernel_path
from deploy.emulate import PROFILES, EmulatedModel, EmulationUnavailable, unavailable
from deploy.hardware import parse_cpuinfo
from tests.deploy import qdq_graph

CPUINFO = Path(__file__).parent / "cpuinfo"
ARM = [p for p in PROFILES if PROFILES[p].arm]
WHY = unavailable("arm64")


def features_of(name: str) -> list[str]:
    line = next(v for v in (CPUINFO / name).read_text().splitlines() if v.startswith("Features"))
    return line.partition(":")[2].split()


def hwcaps_of(features: list[str]) -> tuple[int, int]:
    return (sum(1 << arm64.HWCAP.index(f) for f in features if f in arm64.HWCAP),
            sum(1 << arm64.HWCAP2.index(f) for f in features if f in arm64.HWCAP2))


@pytest.mark.parametrize("name, kclass", [("arm-cortex-a53.txt", "arm64"), ("arm-cortex-a76.txt", "arm64-dotprod"),
                                          ("arm-neoverse-v1.txt", "arm64-i8mm")])
def test_generated_cpuinfo_reads_as_the_real_core(name, kclass):
    """HWCAP words decode to a real core's feature names, and the cpuinfo written from them reads as that core's
    kernel class, the class of the profile that stands for it."""
    real = features_of(name)
    assert arm64.hwcap_features(*hwcaps_of(real)) == real
    part = next(v for v in (CPUINFO / name).read_text().splitlines() if v.startswith("CPU part")).split(":")[1].strip()
    fp = parse_cpuinfo(arm64.cpuinfo_text(real, part, cores=4), "aarch64")
    assert fp == parse_cpuinfo((CPUINFO / name).read_text(), "aarch64") and fp["kernel_class"] == kclass
    assert kclass in {PROFILES[p].kernels for p in ARM}


def test_cache_key_follows_the_pins_not_their_spelling(tmp_path, monkeypatch):
    a = tmp_path / "a.txt"
    a.write_text("# runtime\nnumpy==2.4.6\nonnxruntime==1.32.0\n\n")
    b = tmp_path / "b.txt"
    b.write_text("onnxruntime==1.32.0  # ORT\nnumpy==2.4.6\n")
    c = tmp_path / "c.txt"
    c.write_text("numpy==2.4.6\nonnxruntime==1.31.0\n")
    key = arm64.cache_key(arm64.requirement_pins(a))
    assert key == arm64.cache_key(arm64.requirement_pins(b)) != arm64.cache_key(arm64.requirement_pins(c))
    monkeypatch.setattr(arm64, "DEBIAN", "trixie")
    assert arm64.cache_key(arm64.requirement_pins(a)) != key
    monkeypatch.setenv("EDGE_VISION_CACHE", str(tmp_path / "cache"))
    assert arm64.userland(a).parent == tmp_path / "cache" and arm64.userland(a).name.startswith("arm64-")


def test_without_the_userland_the_arm_profiles_skip_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGE_VISION_CACHE", str(tmp_path / "empty"))
    for p in ARM:
        why = unavailable(p)
        assert why and ("make arm-env" in why or "qemu-user-static" in why)
        with pytest.raises(EmulationUnavailable, match="make arm-env|qemu-user-static"):
            EmulatedModel(tmp_path / "m.onnx", p)
    monkeypatch.setenv("PATH", str(tmp_path))  # no mmdebstrap, nothing half-built
    with pytest.raises(arm64.UserlandError, match="apt-get install mmdebstrap"):
        arm64.build(tmp_path / "env")
    assert not any(tmp_path.glob("env*"))


def test_kernel_path_reads_dot_and_i8mm_encodings_inside_onnxruntime_only(tmp_path):
    assert kernel_path.family(0x6F84E031) == "dot"  # udot v17.4s, v1.16b, v4.4b[0]
    assert kernel_path.family(0x4E82A420) == "i8mm"  # smmla v0.4s, v1.16b, v2.16b
    assert kernel_path.family(0x4E22C020) is None  # smull2 v0.8h, v1.16b, v2.16b: the widening kernels
    assert kernel_path.family(0xD503201F) is None  # nop
    log = tmp_path / "in_asm.log"
    log.write_text("IN: \n0x0000550000001000:  6f84e031  .byte 0x31, 0xe0, 0x84, 0x6f\n"
                   "0x0000550000001004:  d503201f  nop\n----------------\nIN: \n"
                   "0x0000550000900000:  4e82a420  .byte\n")  # the last one is outside ONNX Runtime's code
    ranges = kernel_path.text_ranges("550000000000-550000100000 r-xp 00000000 fd:01 1 /opt/x/onnxruntime_pybind.so\n"
                                     "550000100000-550000200000 rw-p 00000000 fd:01 1 /opt/x/onnxruntime_pybind.so\n")
    counts = kernel_path.count(log, ranges)
    assert counts == {"dot": 1, "i8mm": 0, "instructions": 2}
    assert kernel_path.describe(counts) == "dot product (SDOT/UDOT)"
    assert "NEON widening" in kernel_path.describe({"dot": 0, "i8mm": 0, "instructions": 5})


@pytest.mark.skipif(WHY is not None, reason=WHY or "")
@pytest.mark.parametrize("profile, family", [("arm64", None), ("arm64-dotprod", "dot"), ("arm64-i8mm", "i8mm")])
def test_phone_kernels_are_exact_and_their_path_is_the_cores(tmp_path, profile, family):
    """Full-range INT8 weights that saturate AVX2 compute exactly on every ARM class, and the trace shows the
    kernels the class's features select: no dot product on the A53, SDOT/UDOT on the A76, SMMLA/UMMLA on i8mm."""
    path = qdq_graph.build(tmp_path / "m.onnx", 127, 1 / 127)
    x = np.full((1, 3, 8, 8), 255, np.uint8)
    m = EmulatedModel(path, profile, trace=True)
    try:
        err = np.abs(m.infer(x)[0] - qdq_graph.reference(x, 127, 1 / 127)).max()
    finally:
        m.close()
    assert err <= qdq_graph.Y_SCALE
    counts = m.kernel_path
    assert counts["instructions"] > 1000  # ONNX Runtime's code was found in the trace
    assert [f for f in ("dot", "i8mm") if counts[f]] == ([family] if family else [])
