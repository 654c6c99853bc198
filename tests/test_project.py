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


def _stage_imports(stage: str) -> dict[str, set[str]]:
    """module file -> the top-level stage packages it imports (anywhere in the file, lazy imports too)."""
    found = {}
    for path in (REPO / stage).glob("*.py"):
        pattern = r"^\s*(?:from|import) (datasets|train|export|deploy|evaluate|experiments)\b"
        names = re.findall(pattern, path.read_text(), re.M)
        found[path.name] = set(names) - {stage}
    return found


def test_stages_import_only_upstream():
    """datasets -> train -> export -> evaluate, each importing only the ones before it; deploy (the
    product) imports no other stage, and every stage may import deploy's one preprocessing. experiments/ (the
    comparisons and ablations: the lab, not the product) may import every stage, and no stage imports it."""
    upstream = {"deploy": set(), "datasets": {"deploy"}, "train": {"deploy", "datasets"},
                "export": {"deploy", "datasets", "train"}, "evaluate": {"deploy", "datasets", "train", "export"},
                "experiments": {"deploy", "datasets", "train", "export", "evaluate"}}
    for stage, allowed in upstream.items():
        for module, imported in _stage_imports(stage).items():
            assert imported <= allowed, f"{stage}/{module} imports {sorted(imported - allowed)}"


def test_no_stage_imports_ultralytics():
    """Ultralytics is AGPL-3.0: it runs as a peer program for `make compare-yolo`, never inside our packages,
    and stays out of the workstation and field requirements."""
    for stage in ("datasets", "train", "export", "deploy", "evaluate", "experiments"):
        for path in (REPO / stage).glob("*.py"):
            assert not re.search(r"^\s*(from|import) ultralytics\b", path.read_text(), re.M), path
    assert not any("ultralytics" in p for p in _pins("requirements.txt") | _pins("requirements-deploy.txt"))
