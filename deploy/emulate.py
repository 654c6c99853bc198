"""Run a model under another CPU's ONNX Runtime kernels: the same .venv, started under QEMU user-mode emulation.

QEMU emulates the CPUID of the profile's CPU, so ONNX Runtime's MLAS dispatches to that CPU's integer kernels and
computes what they compute, bit for bit (only the time means nothing). QEMU 7.2 emulates x86 up to AVX2, so a
machine with AVX-512 VNNI can check the saturating AVX2 kernels and the SSE4 ones, and any x86 machine can
check both:
  x86-avx2   qemu-x86_64-static -cpu Haswell       VPMADDUBSW, int16 saturation
  x86-sse4   qemu-x86_64-static -cpu SandyBridge   AVX without AVX2: MLAS's SSE4.1 integer kernels (16-bit
                                                   widening, exact). QEMU's Nehalem and Westmere stop on an
                                                   illegal instruction in NumPy 2.4's import, so they cannot run
                                                   the .venv
One worker process per model runs under QEMU and answers tensors over a pipe (length-prefixed .npy/.npz), so
Python, NumPy and ONNX Runtime start once under emulation, not once per image.
`python -m deploy.emulate --worker MODEL` is that worker; it needs numpy and onnxruntime only.
"""

from __future__ import annotations

import argparse
import io
import platform
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from deploy.errors import EdgeVisionError

PROFILES = {"x86-avx2": ("qemu-x86_64-static", "Haswell"), "x86-sse4": ("qemu-x86_64-static", "SandyBridge")}
ROOT = Path(__file__).resolve().parents[1]


class EmulationUnavailable(EdgeVisionError, RuntimeError):
    """QEMU (or the profile) cannot be had here; the message says why and how to get it."""


def unavailable(profile: str) -> str | None:
    """Why `profile` cannot run here, or None when it can."""
    if profile not in PROFILES:
        return f"unknown CPU profile {profile!r}; known: {sorted(PROFILES)}"
    binary, _ = PROFILES[profile]
    if profile.startswith("x86") and platform.machine().lower() not in ("x86_64", "amd64"):
        return f"{profile} emulation runs this machine's x86-64 .venv; this machine is {platform.machine()}"
    if shutil.which(binary) is None:
        return f"{binary} not found (Debian: apt-get install qemu-user-static)"
    return None


def _send(stream, payload: bytes) -> None:
    stream.write(struct.pack("<Q", len(payload)) + payload)
    stream.flush()


def _recv(stream) -> bytes | None:
    head = stream.read(8)
    if len(head) < 8:
        return None
    (n,) = struct.unpack("<Q", head)
    return stream.read(n)


class EmulatedModel:
    """An ONNX model run by ONNX Runtime under an emulated CPU profile; `infer` as OrtModel.infer."""

    def __init__(self, path: str | Path, profile: str):
        why = unavailable(profile)
        if why:
            raise EmulationUnavailable(f"--runtime qemu:{profile}: {why}")
        self.path, self.profile = Path(path), profile
        binary, cpu = PROFILES[profile]
        self._err = tempfile.TemporaryFile()  # QEMU's feature warnings and the worker's errors: a file, not a pipe
        # nobody drains while the worker runs (a full pipe would block it mid-run)
        self._proc = subprocess.Popen([binary, "-cpu", cpu, sys.executable, "-m", "deploy.emulate", "--worker",
                                       str(self.path.resolve())], cwd=ROOT, stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=self._err)

    def infer(self, tensor: np.ndarray) -> list[np.ndarray]:
        """(3, H, W) or (B, 3, H, W) uint8 -> raw outputs, in contract order, from the emulated CPU's kernels."""
        buf = io.BytesIO()
        np.save(buf, tensor[None] if tensor.ndim == 3 else tensor)
        try:
            _send(self._proc.stdin, buf.getvalue())
            reply = _recv(self._proc.stdout)
        except (BrokenPipeError, OSError):
            reply = None
        if reply is None:
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # alive but answering nothing useful
                self._proc.kill()
            self._err.seek(0)
            err = self._err.read().decode(errors="replace").strip().splitlines()
            last = [line for line in err if "TCG doesn't support" not in line][-1:] or ["no output"]
            raise EmulationUnavailable(f"{self.path}: the {self.profile} worker under QEMU stopped ({last[0]})")
        outs = np.load(io.BytesIO(reply))
        return [outs[f"arr_{i}"] for i in range(len(outs.files))]

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self._err.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass


def worker(model: str) -> int:
    """Answer tensors with the model's outputs until stdin closes (runs under QEMU)."""
    from deploy.runtime import OrtModel

    m = OrtModel(model, threads=1)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while (msg := _recv(stdin)) is not None:
        outs = m.infer(np.load(io.BytesIO(msg)))
        buf = io.BytesIO()
        np.savez(buf, *outs)
        _send(stdout, buf.getvalue())
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deploy.emulate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", required=True, metavar="MODEL", help="serve this model's outputs over stdin/stdout")
    return worker(p.parse_args(argv).worker)


if __name__ == "__main__":
    sys.exit(main())
