"""Container recipes, checked without a Docker engine: what each Dockerfile copies exists, its base image is
pinned, it ends as a non-root user, and the runtime images' entrypoint imports and parses its command from
exactly the files the image receives (torch blocked)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

DOCKERFILES = {name: REPO / "docker" / name / "Dockerfile" for name in ("cpu", "deploy-cpu", "jetson")}
RUNTIMES = ("deploy-cpu", "jetson")
NO_TORCH = ("import importlib.abc, sys\n"
            "class NoTorch(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('torch', 'torchvision'):\n"
            "            raise ImportError('torch is not in the runtime image')\n"
            "sys.meta_path.insert(0, NoTorch())\n")


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines()
                                          if not line.lstrip().startswith("#")))
    out = []
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def exec_form(args: str) -> list[str]:
    return json.loads(args) if args.startswith("[") else shlex.split(args)


def copies(path: Path) -> list[tuple[list[str], str]]:
    """(sources, destination) of every COPY / ADD from the build context (not --from another stage)."""
    out = []
    for word, rest in instructions(path):
        if word in ("COPY", "ADD"):
            parts = [p for p in shlex.split(rest) if not p.startswith("--chown") and not p.startswith("--chmod")]
            if not any(p.startswith("--from") for p in parts):
                out.append((parts[:-1], parts[-1]))
    return out


@pytest.mark.parametrize("name", DOCKERFILES)
def test_every_copied_file_exists_and_the_base_is_pinned_and_the_user_is_not_root(name):
    path = DOCKERFILES[name]
    for sources, _ in copies(path):
        for src in sources:
            assert (REPO / src).exists(), f"{path}: COPY {src} does not exist in the repository"
    for word, rest in instructions(path):
        if word == "FROM":
            image = rest.split()[0]
            tag = image.rpartition(":")[2] if "@" not in image else image.rpartition("@")[2]
            assert "@sha256:" in image or (re.search(r"\d", tag) and tag != "latest"), f"{path}: {image} is not pinned"
    users = [rest for word, rest in instructions(path) if word == "USER"]
    assert users and users[-1].isdigit() and int(users[-1]) != 0, f"{path}: must end as a numeric non-root USER"


def _image_tree(name: str, tmp_path: Path) -> Path:
    """The files the final stage copies into /app, laid out as in the image."""
    root = tmp_path / name
    for sources, dest in copies(DOCKERFILES[name]):
        if dest.startswith("/app/"):
            for src in sources:
                shutil.copytree(REPO / src, root / dest.removeprefix("/app/"))
    return root


@pytest.mark.parametrize("name", RUNTIMES)
def test_runtime_image_entrypoint_imports_and_parses_its_command_from_the_copied_files(name, tmp_path):
    steps = instructions(DOCKERFILES[name])
    entry = exec_form(next(rest for word, rest in steps if word == "ENTRYPOINT"))
    cmd = exec_form(next(rest for word, rest in steps if word == "CMD"))
    health = exec_form(next(rest for word, rest in steps if word == "HEALTHCHECK").partition("CMD ")[2])
    assert entry[1:] == ["-m", "deploy"] and health[1:3] == ["-m", "deploy.health"]
    app = _image_tree(name, tmp_path)
    assert (app / "deploy" / "__main__.py").is_file() and not (app / "train").exists()
    code = NO_TORCH + (
        "from deploy.__main__ import get_args_parser\n"
        "from deploy.health import get_args_parser as health_parser\n"
        f"get_args_parser().parse_args({cmd!r})\nhealth_parser().parse_args({health[3:]!r})\n"
        "import deploy.runtime, deploy.drift, deploy.trt_runtime\n"
        "assert 'torch' not in sys.modules\n")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": ""}
    subprocess.run([sys.executable, "-c", code], cwd=app, env=env, check=True)
    # the probe imports the standard library only (numpy, OpenCV and ONNX Runtime blocked like torch)
    probe = NO_TORCH.replace("('torch', 'torchvision')", "('torch', 'torchvision', 'numpy', 'cv2', 'onnxruntime')") + (
        "import runpy\n"
        f"sys.argv = ['deploy.health', '--heartbeat', {str(tmp_path / 'none.json')!r}]\n"
        "runpy.run_module('deploy.health', run_name='__main__')\n")
    stale = subprocess.run([sys.executable, "-c", probe], cwd=app, env=env, capture_output=True, text=True)
    assert stale.returncode == 1 and "unhealthy" in stale.stdout, stale.stderr


def test_deploy_cpu_installs_the_pinned_runtime_requirements_and_jetson_its_own_without_torch():
    installs = [r for w, r in instructions(DOCKERFILES["deploy-cpu"]) if w == "RUN" and "pip install" in r]
    assert any("-r /tmp/requirements-deploy.txt" in r for r in installs)
    assert (["requirements-deploy.txt"], "/tmp/requirements-deploy.txt") in copies(DOCKERFILES["deploy-cpu"])
    pins = lambda p: {ln.split("==")[0] for ln in p.read_text().splitlines() if "==" in ln}  # noqa: E731
    jetson = pins(REPO / "docker" / "jetson" / "requirements.txt")
    assert pins(REPO / "requirements-deploy.txt") <= jetson and not any(p.startswith("torch") for p in jetson)


def test_compose_runs_the_jetson_image_with_a_valid_command_and_volumes():
    from deploy.__main__ import get_args_parser

    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    svc = compose["services"]["runtime"]
    assert (REPO / "docker" / svc["build"]["context"] / svc["build"]["dockerfile"]).resolve() == DOCKERFILES["jetson"]
    args = get_args_parser().parse_args([str(a) for a in svc["command"]])
    assert args.backend == "trt" and args.engine_cache == "/cache/engines" and args.heartbeat
    assert svc["restart"] == "unless-stopped" and {"engines", "logs"} <= set(compose["volumes"])
    assert any(v.endswith(":/cache/engines") for v in svc["volumes"])
