"""Which integer kernels ONNX Runtime ran under an emulated ARM CPU, read from the code QEMU translated.

`qemu-aarch64 -d in_asm` logs every guest instruction it translates (once per block, so the log names the code
that ran, not how often). QEMU 7.2's disassembler predates the dot-product and matrix-multiply extensions, so
they are matched here by their encodings (Arm ARM, A64 "Advanced SIMD" and "SVE" encoding tables). Only
instructions inside ONNX Runtime's own code count: the worker reports where that code is mapped.

MLAS's ARM64 dispatch (onnxruntime/core/mlas/lib/platform.cpp) picks, per CPU:
  no dot product   NEON widening multiplies (SMULL/UMULL + pairwise adds) for the GEMM and convolution kernels
  dotprod          SDOT/UDOT GEMM and symmetric-convolution kernels
  i8mm             SMMLA/UMMLA GEMM kernels (convolutions stay on SDOT/UDOT)
"""

from __future__ import annotations

import re
from pathlib import Path

# (family, mask, value): an instruction word w is in the family when w & mask == value
ENCODINGS = (
    ("i8mm", 0xFFE0FC00, 0x4E80A400),  # SMMLA  (vector)
    ("i8mm", 0xFFE0FC00, 0x6E80A400),  # UMMLA  (vector)
    ("i8mm", 0xFFE0FC00, 0x4E80AC00),  # USMMLA (vector)
    ("i8mm", 0xFF20FC00, 0x45009800),  # SVE SMMLA / USMMLA / UMMLA (bits 23:22 pick the signedness)
    ("dot", 0xBFE0FC00, 0x0E809400),  # SDOT (vector)
    ("dot", 0xBFE0FC00, 0x2E809400),  # UDOT (vector)
    ("dot", 0xBFC0F400, 0x0F80E000),  # SDOT (by element)
    ("dot", 0xBFC0F400, 0x2F80E000),  # UDOT (by element)
    ("dot", 0xBFE0FC00, 0x0E809C00),  # USDOT (vector)
    ("dot", 0xBFC0F400, 0x0F00F000),  # SUDOT (by element)
    ("dot", 0xBFC0F400, 0x0F80F000),  # USDOT (by element)
)
LINE = re.compile(rb"^0x([0-9a-f]+):\s+([0-9a-f]{8})\s", re.M)
MAPS_TAG = "edge-vision: onnxruntime code"


def family(word: int) -> str | None:
    """'i8mm', 'dot' or None for one A64 instruction word."""
    return next((fam for fam, mask, value in ENCODINGS if word & mask == value), None)


def text_ranges(maps: str) -> list[tuple[int, int]]:
    """The executable mappings of ONNX Runtime's libraries in /proc/self/maps text."""
    out = []
    for line in maps.splitlines():
        fields = line.split()
        if len(fields) >= 6 and "x" in fields[1] and "onnxruntime" in fields[5]:
            lo, hi = fields[0].split("-")
            out.append((int(lo, 16), int(hi, 16)))
    return out


def count(log: Path, ranges: list[tuple[int, int]]) -> dict[str, int]:
    """{'dot': n, 'i8mm': n, 'instructions': n}: translated instructions inside `ranges`, by family."""
    counts = {"dot": 0, "i8mm": 0, "instructions": 0}
    with open(log, "rb") as f:
        while chunk := f.read(1 << 24):
            chunk += f.readline()  # whole lines only
            for m in LINE.finditer(chunk):
                addr = int(m.group(1), 16)
                if any(lo <= addr < hi for lo, hi in ranges):
                    counts["instructions"] += 1
                    fam = family(int(m.group(2), 16))
                    if fam:
                        counts[fam] += 1
    return counts


def describe(counts: dict[str, int]) -> str:
    """'i8mm (SMMLA/UMMLA) + dot product (SDOT/UDOT)', 'dot product (SDOT/UDOT)' or 'NEON widening ...'."""
    if not counts.get("instructions"):
        return "unknown (no ONNX Runtime code traced)"
    parts = [name for fam, name in (("i8mm", "i8mm (SMMLA/UMMLA)"), ("dot", "dot product (SDOT/UDOT)"))
             if counts[fam]]
    return " + ".join(parts) if parts else "NEON widening multiplies (no SDOT/UDOT, no SMMLA/UMMLA)"
