"""The ARM64 userland for the phone-CPU checks: Debian's arm64 Python and the field runtime's aarch64 wheels
(requirements-deploy.txt only, so `deploy/` runs there torch-free), run under QEMU user-mode emulation.

Built once by `python -m deploy.arm64 build` (`make arm-env`), with no emulation at all: `mmdebstrap
--variant=extract` unpacks Debian's arm64 packages (no maintainer scripts, no binfmt_misc), and the host's pip
installs the aarch64 wheels into it (`pip install --target --platform`). It is cached outside the repository,
under $EDGE_VISION_CACHE (default ~/.cache/edge-vision), in a folder named by a key of everything that decides
its content: the Debian release and packages, the Python version, the wheel platforms and the requirement pins.
A build goes to a temporary sibling and is renamed into place, so a cache folder is whole or absent.

A CPU profile runs it with `qemu-aarch64-static -L VIEW -cpu MODEL`: VIEW is a per-run folder that links the
userland's /usr, /lib, /etc and /opt and holds a /proc/cpuinfo of the emulated CPU. QEMU user mode shows the
guest the host's /proc/cpuinfo, which makes ONNX Runtime's cpuinfo library crash on aarch64; the generated file
gives it the emulated CPU's core (MIDR part, which MLAS reads for its narrow-load kernels) and exactly the
features QEMU's HWCAPs give that model (read by a probe in the guest), so both of ONNX Runtime's feature paths
(cpuinfo and getauxval) agree on the emulated CPU. Paths that do not exist in VIEW (the repository, the run's
models, /tmp) are the host's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from deploy.errors import EdgeVisionError

REPO = Path(__file__).resolve().parents[1]
REQUIREMENTS = REPO / "requirements-deploy.txt"
DEBIAN = "bookworm"
PACKAGES = ("python3.11", "libstdc++6", "libgcc-s1")  # Python, and the C++ runtime ONNX Runtime and OpenCV link
PYTHON = "3.11"
PLATFORMS = ("manylinux_2_28_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64")
LAYOUT = 1  # bump when the folder's layout changes
SITE = "opt/edge-vision"  # the wheels, inside the userland
GUEST_PYTHON = "usr/bin/python3.11"
# Linux arm64 HWCAP / HWCAP2 bits (arch/arm64/include/uapi/asm/hwcap.h) -> the /proc/cpuinfo feature names
HWCAP = ("fp", "asimd", "evtstrm", "aes", "pmull", "sha1", "sha2", "crc32", "atomics", "fphp", "asimdhp", "cpuid",
         "asimdrdm", "jscvt", "fcma", "lrcpc", "dcpop", "sha3", "sm3", "sm4", "asimddp", "sha512", "sve", "asimdfhm",
         "dit", "uscat", "ilrcpc", "flagm", "ssbs", "sb", "paca", "pacg")
HWCAP2 = ("dcpodp", "sve2", "sveaes", "svepmull", "svebitperm", "svesha3", "svesm4", "flagm2", "frint", "svei8mm",
          "svef32mm", "svef64mm", "svebf16", "i8mm", "bf16", "dgh", "rng", "bti", "mte")


class UserlandError(EdgeVisionError, RuntimeError):
    """The ARM64 userland cannot be built or used here; the message says why and what to do."""


def requirement_pins(path: Path = REQUIREMENTS) -> list[str]:
    """The requirement lines, without comments and blank lines, sorted (the cache key ignores their order)."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return sorted(line for line in lines if line)


def cache_key(pins: list[str]) -> str:
    """16 hex digits of everything that decides the userland's content."""
    spec = {"layout": LAYOUT, "debian": DEBIAN, "packages": PACKAGES, "python": PYTHON, "platforms": PLATFORMS,
            "requirements": pins}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def cache_root() -> Path:
    base = os.environ.get("EDGE_VISION_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache",
                                                         "edge-vision")
    return Path(base)


def userland(requirements: Path = REQUIREMENTS) -> Path:
    """Where the userland for these requirements is (or will be once built)."""
    return cache_root() / f"arm64-{cache_key(requirement_pins(requirements))}"


def missing(root: Path | None = None) -> str | None:
    """Why the userland cannot run here, or None when it can."""
    root = root or userland()
    if shutil.which("qemu-aarch64-static") is None:
        return "qemu-aarch64-static not found (Debian: apt-get install qemu-user-static)"
    if not (root / "env.json").is_file():
        return f"the ARM64 userland is not built ({root}); run `make arm-env`"
    return None


def build(root: Path | None = None, requirements: Path = REQUIREMENTS) -> Path:
    """Build the userland into `root` (default: its cache folder) unless it is there; returns the folder."""
    root = root or userland(requirements)
    if (root / "env.json").is_file():
        return root
    if shutil.which("mmdebstrap") is None:
        raise UserlandError("mmdebstrap not found (Debian: apt-get install mmdebstrap); `make arm-env` installs it "
                            "where it runs as root")
    tmp = root.with_name(f"{root.name}.part-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        _run(["mmdebstrap", "--quiet", "--variant=extract", "--architectures=arm64",
              f"--include={','.join(PACKAGES)}", DEBIAN, str(tmp)], "mmdebstrap")
        platforms = [a for p in PLATFORMS for a in ("--platform", p)]
        _run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--only-binary=:all:",
              *platforms, "--python-version", PYTHON, "--implementation", "cp", "--abi", f"cp{PYTHON.replace('.', '')}",
              "--target", str(tmp / SITE), "-r", str(requirements)], "pip (aarch64 wheels)")
        (tmp / "etc" / "ld.so.cache").write_bytes(b"")  # no loader cache: the guest's ld.so must not read the host's
        wheels = sorted(p.name.removesuffix(".dist-info") for p in (tmp / SITE).glob("*.dist-info"))
        env = {"key": root.name, "debian": DEBIAN, "packages": PACKAGES, "python": PYTHON, "platforms": PLATFORMS,
               "requirements": requirement_pins(requirements), "wheels": wheels,
               "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "build_seconds": round(time.perf_counter() - t0, 1)}
        (tmp / "env.json").write_text(json.dumps(env, indent=2))
        try:
            tmp.rename(root)
        except OSError:  # another build finished first: its copy is as good
            if not (root / "env.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _run(cmd: list[str], what: str) -> None:
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        tail = (r.stdout.strip().splitlines() or ["no output"])[-1]
        raise UserlandError(f"{what} failed (exit {r.returncode}): {tail}")


def make_view(root: Path, view: Path) -> Path:
    """A folder for `qemu -L`: the userland's system folders, and room for a generated /proc/cpuinfo."""
    (view / "proc").mkdir(parents=True, exist_ok=True)
    for name in ("usr", "lib", "etc", "opt"):
        (view / name).symlink_to(root / name)
    return view


def guest_env(repo: Path = REPO) -> dict[str, str]:
    """The guest Python's environment: the userland's stdlib and wheels, this repository, nothing of the host's."""
    return {"PYTHONHOME": "/usr", "PYTHONPATH": f"/{SITE}:{repo}", "PYTHONNOUSERSITE": "1", "LANG": "C.UTF-8",
            "PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp")}


def guest_command(root: Path, view: Path, cpu: str) -> list[str]:
    """The prefix that starts the userland's Python under `qemu-aarch64-static -cpu cpu` (-S: no site folders)."""
    return ["qemu-aarch64-static", "-L", str(view), "-cpu", cpu, str(root / GUEST_PYTHON), "-S"]


PROBE = ("import ctypes; f = ctypes.CDLL(None).getauxval; f.restype = ctypes.c_ulong; "
         "f.argtypes = [ctypes.c_ulong]; print(f(16), f(26))")  # AT_HWCAP, AT_HWCAP2


def probe_hwcaps(root: Path, view: Path, cpu: str) -> tuple[int, int]:
    """The HWCAP and HWCAP2 words QEMU gives the guest for this CPU model."""
    r = subprocess.run(guest_command(root, view, cpu) + ["-c", PROBE], capture_output=True, text=True,
                       env=guest_env(), timeout=120)
    words = r.stdout.split()
    if r.returncode != 0 or len(words) != 2:
        raise UserlandError(f"the ARM64 userland ({root}) does not start under -cpu {cpu}: "
                            f"{(r.stderr.strip().splitlines() or ['no output'])[-1]}; rebuild it with `make arm-env`")
    return int(words[0]), int(words[1])


def hwcap_features(hwcap: int, hwcap2: int) -> list[str]:
    """The /proc/cpuinfo `Features` names of HWCAP / HWCAP2 words, in the kernel's order."""
    return ([n for i, n in enumerate(HWCAP) if hwcap >> i & 1] + [n for i, n in enumerate(HWCAP2) if hwcap2 >> i & 1])


def cpuinfo_text(features: list[str], part: str, cores: int = 2) -> str:
    """An arm64 /proc/cpuinfo of `cores` identical cores (ARM Ltd implementer, MIDR part `part`)."""
    block = ("processor\t: {i}\nBogoMIPS\t: 50.00\nFeatures\t: {f}\nCPU implementer\t: 0x41\n"
             "CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: {part}\nCPU revision\t: 0\n\n")
    return "".join(block.format(i=i, f=" ".join(features), part=part) for i in range(cores))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deploy.arm64", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["build", "path"], help="build: build it unless cached; path: print its folder")
    args = p.parse_args(argv)
    root = userland()
    if args.action == "path":
        print(root)
        return 0 if (root / "env.json").is_file() else 1
    try:
        cached = (root / "env.json").is_file()
        build(root)
    except UserlandError as e:
        print(f"arm-env: {e}", file=sys.stderr)
        return 2
    env = json.loads((root / "env.json").read_text())
    how = "cached" if cached else f"built in {env['build_seconds']} s"
    print(f"arm-env: {root} ({how}): Debian {DEBIAN} arm64, Python {PYTHON}, {', '.join(env['wheels'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
