"""What CPU runs the model, as ONNX Runtime's integer kernels see it: one fingerprint recorded wherever a figure is.

ONNX Runtime (MLAS) picks its INT8 GEMM kernel by CPU feature, and the kernels do not compute alike:
  x86-amx, x86-avx512vnni, x86-avxvnni   u8 x s8 dot products accumulate straight into int32: exact
  x86-avx512, x86-avx2                   VPMADDUBSW adds two u8 x s8 products into a *saturating* int16
                                         first: 255 * 127 * 2 > 32767, so large weights and activations clip
                                         (ONNX Runtime's quantization docs: use reduce_range or U8U8 there)
  x86-sse4                               widens to int16 and multiplies pairwise into int32: exact
  arm64-i8mm, arm64-dotprod, arm64       SMMLA / SDOT / widening multiplies into int32: exact
So the kernel class, not the vendor, decides whether an INT8 file computes what its QDQ graph says. The
fingerprint is read from /proc/cpuinfo (the kernel's view of CPUID / HWCAP; other systems give the
architecture only) and goes into the bench report, the gate's report and baseline, the export manifest and
device captures.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

# kernel class -> the features that select it, strongest first (/proc/cpuinfo flag names)
X86_CLASSES = (("x86-amx", ("amx_int8",)), ("x86-avx512vnni", ("avx512_vnni",)), ("x86-avxvnni", ("avx_vnni",)),
               ("x86-avx512", ("avx512bw",)), ("x86-avx2", ("avx2",)), ("x86-sse4", ("sse4_1",)))
ARM_CLASSES = (("arm64-i8mm", ("i8mm",)), ("arm64-dotprod", ("asimddp",)))
# the features recorded beside the class (the ones ONNX Runtime's CPU kernels dispatch on)
X86_FEATURES = ("sse4_1", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")
ARM_FEATURES = ("asimd", "asimddp", "i8mm", "sve", "sve2", "bf16")
KERNEL_CLASSES = tuple(c for c, _ in X86_CLASSES) + ("x86",) + tuple(c for c, _ in ARM_CLASSES) + ("arm64",)
SATURATING = ("x86-avx512", "x86-avx2")  # u8s8 kernels with an int16 intermediate (VPMADDUBSW)
ARM_PARTS = {"0xd03": "Cortex-A53", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57", "0xd08": "Cortex-A72",
             "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76", "0xd0c": "Neoverse-N1", "0xd0d": "Cortex-A77",
             "0xd41": "Cortex-A78", "0xd44": "Cortex-X1", "0xd46": "Cortex-A510", "0xd47": "Cortex-A710",
             "0xd40": "Neoverse-V1", "0xd49": "Neoverse-N2", "0xd4f": "Neoverse-V2"}
ARM_IMPLEMENTERS = {"0x41": "ARM", "0x51": "Qualcomm", "0x61": "Apple", "0x48": "HiSilicon", "0x53": "Samsung"}


def parse_cpuinfo(text: str, machine: str) -> dict:
    """vendor, model, architecture, the kernel-relevant features and the kernel class from /proc/cpuinfo text
    of one machine (`machine`: platform.machine(), e.g. x86_64 or aarch64)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():  # the first processor's block is enough: the cores of a phone differ in
        key, sep, value = line.partition(":")  # speed, not in features (big.LITTLE shares its ISA)
        key = key.strip().lower()
        if sep and key and key not in fields:
            fields[key] = value.strip()
    arm = machine.lower() in ("aarch64", "arm64")
    flags = set((fields.get("features") if arm else fields.get("flags", "")).split())
    if arm:
        implementer = fields.get("cpu implementer", "").lower()
        part = fields.get("cpu part", "").lower()
        vendor = ARM_IMPLEMENTERS.get(implementer, implementer or "unknown")
        model = fields.get("model name") or ARM_PARTS.get(part, f"part {part}" if part else "unknown")
        features = [f for f in ARM_FEATURES if f in flags]
        kclass = next((c for c, need in ARM_CLASSES if set(need) <= flags), "arm64")
        return {"arch": "arm64", "vendor": vendor, "model": model, "features": features, "kernel_class": kclass}
    features = [f for f in X86_FEATURES if f in flags]
    kclass = next((c for c, need in X86_CLASSES if set(need) <= flags), "x86")
    return {"arch": "x86_64" if machine.lower() in ("x86_64", "amd64") else machine,
            "vendor": fields.get("vendor_id", "unknown"), "model": fields.get("model name", "unknown"),
            "features": features, "kernel_class": kclass}


def fingerprint(threads: int | None = None, cpuinfo: str | Path | None = None) -> dict:
    """This machine: CPU vendor and model, kernel-relevant features, kernel class, ONNX Runtime version and the
    thread count the figures beside it used (None: not one setting).

    `cpuinfo` defaults to $EDGE_VISION_CPUINFO, else /proc/cpuinfo: QEMU user-mode emulation shows the host's
    /proc/cpuinfo, so a run under `qemu -cpu Haswell` names its emulated CPU with a cpuinfo file of that class."""
    import onnxruntime as ort  # the deploy runtime's only hard dependency; imported late to stay cheap

    machine = platform.machine()
    path = Path(cpuinfo or os.environ.get("EDGE_VISION_CPUINFO") or "/proc/cpuinfo")
    if path.is_file():
        hw = parse_cpuinfo(path.read_text(errors="replace"), machine)
    else:  # macOS, Windows: the architecture only
        arm = machine.lower() in ("arm64", "aarch64")
        hw = {"arch": "arm64" if arm else machine, "vendor": "unknown", "model": platform.processor() or "unknown",
              "features": [], "kernel_class": "arm64" if arm else "x86"}
    return {**hw, "cores": os.cpu_count(), "threads": threads, "onnxruntime": ort.__version__}


def describe(fp: dict) -> str:
    """One line for report headers: 'AMD EPYC 7B13 (AuthenticAMD), kernels x86-avx2, ONNX Runtime 1.32.0'."""
    threads = f", {fp['threads']} thread(s)" if fp.get("threads") else ""
    return (f"{fp['model']} ({fp['vendor']}), kernels {fp['kernel_class']}, {fp['cores']} cores{threads}, "
            f"ONNX Runtime {fp['onnxruntime']}")


def saturates(kernel_class: str | None) -> bool:
    """Whether this class's u8s8 GEMM kernels clip pairs of products to int16."""
    return kernel_class in SATURATING


def reduced_weights(file_kernels: str) -> bool:
    """Whether an INT8 CPU file made for these kernels (its contract's `kernels`) has 7-bit dense-conv weights,
    which no kernel can saturate: made for every CPU ("portable"), an unknown x86, or a saturating class."""
    return file_kernels in ("portable", "x86") or saturates(file_kernels)


def kernel_mismatch(file_kernels: str, run_kernels: str | None) -> str | None:
    """Why an INT8 file may lose accuracy on these kernels, with the fix; None when it computes exactly there.
    Files without a recorded target (exported before it was recorded) count as full-range."""
    if not saturates(run_kernels) or reduced_weights(file_kernels):
        return None
    return (f"made for {file_kernels or 'unrecorded'} kernels, its 8-bit weights saturate the {run_kernels} "
            "u8s8 kernels (int16 pairs, no VNNI); re-export it with `python -m export --target portable` "
            f"(or --target {run_kernels})")
