"""Project wiring: dependency lists agree, the README's commands exist, CI runs the README's test command."""

import re
import tomllib

from tests.conftest import REPO


def _pins(path):
    lines = (REPO / path).read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def test_pyproject_and_requirements_pin_the_same_versions():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = set(project["dependencies"])
    assert runtime == _pins("requirements-deploy.txt")
    assert runtime | set(project["optional-dependencies"]["workstation"]) == _pins("requirements.txt")
    assert not any(p.startswith("torch") for p in runtime)  # the field runtime never needs torch
    assert all("==" in p for p in _pins("requirements.txt"))


def test_readme_make_targets_exist_and_ci_runs_make_test():
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, re.M))
    readme = (REPO / "README.md").read_text()
    for cmd in re.findall(r"make ([a-z][a-z -]*)", readme):
        for word in cmd.split():
            if not word.startswith("-") and "=" not in word:
                assert word in targets, f"README uses `make {word}` but the Makefile has no such target"
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in ci
