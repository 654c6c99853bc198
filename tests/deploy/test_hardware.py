"""Fingerprints from /proc/cpuinfo files of real machines, and what each kernel class means for an INT8 file."""

from pathlib import Path

import pytest

from deploy.hardware import describe, fingerprint, kernel_mismatch, parse_cpuinfo, reduced_weights

CPUINFO = Path(__file__).parent / "cpuinfo"


@pytest.mark.parametrize("name, machine, vendor, model, kclass, features", [
    ("intel-xeon-icelake.txt", "x86_64", "GenuineIntel", "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz",
     "x86-avx512vnni", ["sse4_1", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni"]),
    ("amd-epyc-zen3.txt", "x86_64", "AuthenticAMD", "AMD EPYC 7B13", "x86-avx2", ["sse4_1", "avx2", "fma"]),
    ("arm-cortex-a76.txt", "aarch64", "ARM", "Cortex-A76", "arm64-dotprod", ["asimd", "asimddp"]),
    ("arm-cortex-a53.txt", "aarch64", "ARM", "Cortex-A53", "arm64", ["asimd"]),
])
def test_parse_cpuinfo(name, machine, vendor, model, kclass, features):
    fp = parse_cpuinfo((CPUINFO / name).read_text(), machine)
    assert (fp["vendor"], fp["model"], fp["kernel_class"], fp["features"]) == (vendor, model, kclass, features)


def test_classes_follow_the_strongest_feature():
    flags = "fpu sse4_1 avx2 avx512f avx512bw"
    assert parse_cpuinfo(f"flags : {flags}", "x86_64")["kernel_class"] == "x86-avx512"  # Skylake-X: no VNNI
    assert parse_cpuinfo(f"flags : {flags} avx_vnni", "x86_64")["kernel_class"] == "x86-avxvnni"
    assert parse_cpuinfo(f"flags : {flags} avx512_vnni amx_int8", "x86_64")["kernel_class"] == "x86-amx"
    assert parse_cpuinfo("flags : fpu sse4_1", "x86_64")["kernel_class"] == "x86-sse4"
    assert parse_cpuinfo("Features : fp asimd asimddp i8mm", "aarch64")["kernel_class"] == "arm64-i8mm"


def test_fingerprint_names_runtime_and_threads(tmp_path):
    fixture = tmp_path / "cpuinfo"
    fixture.write_text((CPUINFO / "amd-epyc-zen3.txt").read_text())
    fp = fingerprint(threads=1, cpuinfo=fixture)
    assert fp["threads"] == 1 and fp["onnxruntime"] and fp["cores"] >= 1
    if fp["arch"] == "x86_64":
        assert fp["kernel_class"] == "x86-avx2"
        assert "x86-avx2" in describe(fp) and "AMD EPYC 7B13" in describe(fp)


def test_which_files_saturate_which_kernels():
    assert reduced_weights("portable") and reduced_weights("x86-avx2") and not reduced_weights("x86-avx512vnni")
    assert kernel_mismatch("portable", "x86-avx2") is None  # 7-bit dense weights: no pair reaches int16's limit
    assert kernel_mismatch("x86-avx512vnni", "x86-avx512vnni") is None
    assert kernel_mismatch("arm64-dotprod", "arm64") is None  # ARM kernels accumulate in int32
    fix = kernel_mismatch("x86-avx512vnni", "x86-avx2")
    assert "saturate" in fix and "--target portable" in fix
    assert kernel_mismatch("", "x86-avx512") is not None  # unrecorded files count as full-range


def test_an_emulated_run_names_its_cpu_through_the_environment(monkeypatch):
    monkeypatch.setenv("EDGE_VISION_CPUINFO", str(CPUINFO / "amd-epyc-zen3.txt"))  # QEMU shows the host's file
    if fingerprint()["arch"] == "x86_64":
        assert fingerprint()["kernel_class"] == "x86-avx2"
