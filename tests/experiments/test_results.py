"""docs/results.md is a pure function of the results files filed under docs/results/."""

import json

import pytest

from experiments.peer import write_results
from experiments.results import DOC, ResultsError, main, render, take
from tests.conftest import REPO


def test_the_committed_doc_is_byte_identical_to_what_the_committed_files_give(monkeypatch):
    monkeypatch.chdir(REPO)
    assert DOC.read_text() == render(), "docs/results.md is stale: run `make results` and commit it"


def ssdlite_run(out, ours_map):
    return write_results(out, "compare-ssdlite", {
        "ours": {"map": ours_map, "map50": 0.8, "latency_ms": {"1t": 2.0, "2t": 1.5}, "params": 6e5, "gflops": 0.5},
        "ssdlite": {"map": 0.3, "map50": 0.6, "latency_ms": {"1t": 8.0, "2t": 5.0}, "params": 2.2e6, "gflops": 0.8}},
        {"config": "configs/demo.yaml", "epochs": 3, "input_size": [320, 320], "split": "val"})


def test_a_rerun_filed_with_take_replaces_its_table_and_its_old_figure(tmp_path):
    root = tmp_path / "results"
    take(ssdlite_run(tmp_path / "compare-ssdlite", 0.4567), None, None, root=root)
    first = render(root)
    assert "| ours | 0.457 | 0.800 | 2.00 | 1.50 | 0.60 | 0.50 |" in first
    assert "ours - ssdlite (best peer): +0.157" in first and "0.25 (1 thread)" in first
    filed = json.loads((root / "compare-ssdlite.json").read_text())
    assert filed["results"]["setup"]["machine"]["kernel_class"]  # every figure names its CPU
    assert f"on {filed['results']['setup']['machine']['model']}" in first
    take(ssdlite_run(tmp_path / "compare-ssdlite", 0.5123), None, None, root=root)
    second = render(root)
    assert "0.512" in second and "0.457" not in second  # a stale figure cannot survive a re-run


def test_kinds_are_read_from_the_file_and_a_foreign_file_is_refused_in_one_line(tmp_path, capsys):
    kernels = tmp_path / "runs" / "demo" / "kernels" / "kernels.json"
    kernels.parent.mkdir(parents=True)
    kernels.write_text(json.dumps({"hardware": {}, "max_drop": 0.005, "profiles": {}}))
    assert take(kernels, None, None, root=tmp_path / "r").name == "kernels-demo.json"
    foreign = tmp_path / "other.json"
    foreign.write_text(json.dumps({"loss": 1.0}))
    with pytest.raises(ResultsError, match="other.json: not a results file"):
        take(foreign, None, None, root=tmp_path / "r")
    assert main(["--take", str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "missing.json" in err and len(err.splitlines()) == 1


def test_check_fails_on_a_hand_edited_doc(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "docs" / "results").mkdir(parents=True)
    take(ssdlite_run(tmp_path / "compare-ssdlite", 0.4567), None, None, root=tmp_path / "docs" / "results")
    assert main([]) == 0 and main(["--check"]) == 0
    DOC.write_text(DOC.read_text().replace("0.457", "0.600"))
    assert main(["--check"]) == 1 and "make results" in capsys.readouterr().err
