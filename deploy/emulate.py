"""Run a model under another CPU's ONNX Runtime kernels, under QEMU user-mode emulation.

QEMU emulates the profile's CPU (CPUID on x86, HWCAPs and the instruction set on ARM), so ONNX Runtime's MLAS
dispatches to that CPU's integer kernels and computes what they compute, bit for bit (only the time means
nothing). The x86 profiles run this machine's .venv; the ARM64 ones run the ARM64 userland (deploy.arm64: Debian's
arm64 Python with the aarch64 wheels of requirements-deploy.txt, `make arm-env`) with a /proc/cpuinfo of the
emulated core. QEMU 7.2 emulates x86 up to AVX2 (QEMU's Nehalem and Westmere stop on an illegal instruction in
NumPy 2.4's import, so SandyBridge stands for SSE4) and ARMv8.0 to the ARMv9 features of its `max` CPU.
One worker process per model runs under QEMU and answers tensors over a pipe (length-prefixed .npy/.npz), so
Python, NumPy and ONNX Runtime start once under emulation, not once per image.
`python -m deploy.emulate --worker MODEL` is that worker (numpy and onnxruntime only);
`python -m deploy.emulate --profile NAME -- ARGS` runs `python ARGS` under a profile (e.g. `-m deploy run ...`).
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shutil
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deploy import arm64, kernel_path
from deploy.errors import EdgeVisionError
from deploy.hardware import parse_cpuinfo


@dataclass(frozen=True)
class Profile:
    qemu: str  # the qemu-user binary
    cpu: str  # its -cpu model
    kernels: str  # the kernel class ONNX Runtime sees there (deploy.hardware)
    stands_for: str  # the devices it stands for
    part: str = ""  # ARM: the MIDR part of the generated /proc/cpuinfo (the core ONNX Runtime's cpuinfo sees)

    @property
    def arm(self) -> bool:
        return self.qemu == "qemu-aarch64-static"


# name (--runtime qemu:NAME, make kernels) -> profile; the name is the kernel class it exercises
PROFILES = {
    "x86-avx2": Profile("qemu-x86_64-static", "Haswell", "x86-avx2", "Haswell: x86 with AVX2, no VNNI"),
    "x86-sse4": Profile("qemu-x86_64-static", "SandyBridge", "x86-sse4", "Sandy Bridge: x86 without AVX2"),
    "arm64": Profile("qemu-aarch64-static", "cortex-a53", "arm64",
                     "Cortex-A53: ARMv8.0, no dot product (budget phones, older boards)", "0xd03"),
    "arm64-dotprod": Profile("qemu-aarch64-static", "cortex-a76", "arm64-dotprod",
                             "Cortex-A76: ARMv8.2 dot product (mid-tier phones, Raspberry Pi 5)", "0xd0b"),
    "arm64-i8mm": Profile("qemu-aarch64-static", "max", "arm64-i8mm",
                          "QEMU max as Cortex-A710: ARMv9 i8mm (recent flagship phones)", "0xd47"),
}
ROOT = Path(__file__).resolve().parents[1]


class EmulationUnavailable(EdgeVisionError, RuntimeError):
    """QEMU (or the profile) cannot be had here; the message says why and how to get it."""


def unavailable(profile: str) -> str | None:
    """Why `profile` cannot run here, or None when it can."""
    if profile not in PROFILES:
        return f"unknown CPU profile {profile!r}; known: {sorted(PROFILES)}"
    prof = PROFILES[profile]
    if prof.arm:
        return arm64.missing()
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"{profile} emulation runs this machine's x86-64 .venv; this machine is {platform.machine()}"
    if shutil.which(prof.qemu) is None:
        return f"{prof.qemu} not found (Debian: apt-get install qemu-user-static)"
    return None


class Guest:
    """A Python under a profile: the .venv's under qemu-x86_64, or the ARM64 userland's under qemu-aarch64 in a
    view with the emulated core's /proc/cpuinfo. `trace` logs the translated guest code (deploy.kernel_path)."""

    def __init__(self, profile: str, trace: bool = False):
        why = unavailable(profile)
        if why:
            raise EmulationUnavailable(f"--runtime qemu:{profile}: {why}")
        self.name, self.profile = profile, PROFILES[profile]
        self.tmp = Path(tempfile.mkdtemp(prefix=f"edge-vision-{profile}-"))
        self.trace = self.tmp / "in_asm.log" if trace and self.profile.arm else None
        self.env: dict[str, str] = {}
        try:
            if self.profile.arm:
                self.root = arm64.userland()
                self.view = arm64.make_view(self.root, self.tmp / "view")
                features = arm64.hwcap_features(*arm64.probe_hwcaps(self.root, self.view, self.profile.cpu))
                self.cpuinfo = arm64.cpuinfo_text(features, self.profile.part, os.cpu_count() or 1)
                (self.view / "proc" / "cpuinfo").write_text(self.cpuinfo)
                seen = parse_cpuinfo(self.cpuinfo, "aarch64")["kernel_class"]
                if seen != self.profile.kernels:  # QEMU's model lacks (or has more than) the class's features
                    raise EmulationUnavailable(f"qemu -cpu {self.profile.cpu} gives {seen} features, not "
                                               f"{self.profile.kernels} ({' '.join(features)})")
                self.env = arm64.guest_env(ROOT)
            # deploy run and deploy bench mark their latencies as emulated
            self.env = {**(self.env or os.environ), "EDGE_VISION_EMULATED": profile}
        except BaseException:
            self.close()
            raise

    def command(self, python_args: list[str]) -> list[str]:
        log = ["-d", "in_asm", "-D", str(self.trace)] if self.trace else []
        if self.profile.arm:
            qemu, *rest = arm64.guest_command(self.root, self.view, self.profile.cpu)
            return [qemu, *log, *rest, *python_args]
        return [self.profile.qemu, "-cpu", self.profile.cpu, *log, sys.executable, *python_args]

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


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
    """An ONNX model run by ONNX Runtime under an emulated CPU profile; `infer` as OrtModel.infer. With `trace`
    (ARM profiles), `close()` sets `kernel_path`: which integer kernels ONNX Runtime ran (deploy.kernel_path)."""

    def __init__(self, path: str | Path, profile: str, trace: bool = False):
        self.path, self.profile, self.kernel_path = Path(path), profile, None
        self.kernels = PROFILES[profile].kernels if profile in PROFILES else None
        self._guest = Guest(profile, trace)
        self._err = tempfile.TemporaryFile()  # QEMU's feature warnings and the worker's errors: a file, not a pipe
        # nobody drains while the worker runs (a full pipe would block it mid-run)
        cmd = self._guest.command(["-m", "deploy.emulate", "--worker", str(self.path.resolve())]
                                  + (["--report-maps"] if self._guest.trace else []))
        self._proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err,
                                      env=self._guest.env)

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
            last = [line for line in self._stderr() if "TCG doesn't support" not in line][-1:] or ["no output"]
            raise EmulationUnavailable(f"{self.path}: the {self.profile} worker under QEMU stopped ({last[0]})")
        outs = np.load(io.BytesIO(reply))
        return [outs[f"arr_{i}"] for i in range(len(outs.files))]

    def _stderr(self) -> list[str]:
        self._err.seek(0)
        return self._err.read().decode(errors="replace").strip().splitlines()

    def close(self) -> None:
        if self._err.closed:
            return
        if self._proc.poll() is None:
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        if self._guest.trace and self._guest.trace.is_file():
            maps = "\n".join(line.removeprefix(kernel_path.MAPS_TAG) for line in self._stderr()
                             if line.startswith(kernel_path.MAPS_TAG))
            counts = kernel_path.count(self._guest.trace, kernel_path.text_ranges(maps))
            self.kernel_path = {**counts, "path": kernel_path.describe(counts)}
        self._err.close()
        self._guest.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown, or a constructor that failed half-way
            pass


def worker(model: str, report_maps: bool = False) -> int:
    """Answer tensors with the model's outputs until stdin closes (runs under QEMU)."""
    from deploy.runtime import OrtModel

    m = OrtModel(model, threads=1)
    if report_maps:  # where ONNX Runtime's code is, for the kernel-path trace (QEMU shows guest addresses here)
        lines = Path("/proc/self/maps").read_text().splitlines()
        print("\n".join(kernel_path.MAPS_TAG + line for line in lines if "onnxruntime" in line), file=sys.stderr,
              flush=True)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while (msg := _recv(stdin)) is not None:
        outs = m.infer(np.load(io.BytesIO(msg)))
        buf = io.BytesIO()
        np.savez(buf, *outs)
        _send(stdout, buf.getvalue())
    return 0


def run(profile: str, python_args: list[str]) -> int:
    """`python ARGS` under the profile, in this directory, with this terminal; its exit code."""
    guest = Guest(profile)
    try:
        print(f"emulate: {profile} ({PROFILES[profile].stands_for}) under QEMU; timings are not latency",
              file=sys.stderr, flush=True)
        return subprocess.run(guest.command(python_args), env=guest.env).returncode
    finally:
        guest.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deploy.emulate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--worker", metavar="MODEL", help="serve this model's outputs over stdin/stdout")
    g.add_argument("--profile", choices=sorted(PROFILES), help="run `python ARGS` under this CPU profile")
    p.add_argument("--report-maps", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("args", nargs=argparse.REMAINDER, help="with --profile: the guest Python's arguments, after --")
    args = p.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.report_maps)
    try:
        return run(args.profile, args.args[1:] if args.args[:1] == ["--"] else args.args)
    except EdgeVisionError as e:
        print(f"emulate: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
