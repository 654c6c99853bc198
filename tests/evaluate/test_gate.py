"""The gate fails closed: a typo, a missing section or a missing baseline can never make it pass quietly."""

import json

import pytest
import yaml

from evaluate import gate
from evaluate.gate import main as gate_main
from evaluate.gate_config import GateConfigError, load_gate_config
from tests.conftest import REPO

LOOSE = {"max_quantization_drop": 1.0, "max_preprocessing_drop": 1.0, "min_input_psnr": 0,
         "latency_ms": {"cpu-1thread": 5000}, "max_size_mb": 50}


def write(tmp_path, cfg: dict, name: str = "gate.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def refused(capsys, argv) -> str:
    assert gate_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("gate: could not run: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("key", ["max_quantisation_drop", "min_acuracy"])
def test_a_misspelled_threshold_is_refused_naming_key_and_file(tmp_path, capsys, tiny_run, key):
    cfg = {"detector": {**LOOSE, key: 0.01}, "segmenter": LOOSE}
    err = refused(capsys, ["--run", str(tiny_run), "--config", str(write(tmp_path, cfg))])
    assert key in err and "gate.yaml" in err


def test_a_misspelled_model_section_is_refused(tmp_path, capsys, tiny_run):
    err = refused(capsys, ["--run", str(tiny_run), "--config", str(write(tmp_path, {"detectr": LOOSE}))])
    assert "unknown key(s) ['detectr']" in err


def test_a_string_threshold_is_refused_not_a_traceback(tmp_path, capsys, tiny_run):
    cfg = {"detector": {**LOOSE, "min_accuracy": "0.5"}, "segmenter": LOOSE}
    err = refused(capsys, ["--run", str(tiny_run), "--config", str(write(tmp_path, cfg))])
    assert "detector.min_accuracy: expected float, got str '0.5'" in err


@pytest.mark.parametrize("text, words", [
    ("max_quantization_drop: 0.03\n  max_quantization_drop: 0.5",
     "line 3: key 'max_quantization_drop' is given twice (first on line 2); keep one"),
    ("max_quantization_drop: .nan", "line 2: '.nan' is not a finite number"),
    ("min_accuracy: -.inf", "line 2: '-.inf' is not a finite number")])
def test_a_duplicate_key_or_a_non_finite_limit_is_refused_at_load(tmp_path, capsys, tiny_run, text, words):
    """PyYAML takes the last of two keys and parses .nan: either would loosen a check without a word."""
    path = tmp_path / "gate.yaml"
    path.write_text(f"detector:\n  {text}\n")
    err = refused(capsys, ["--run", str(tiny_run), "--config", str(path)])
    assert words in err and "gate.yaml" in err


@pytest.mark.parametrize("bad, words", [({"metric": "mAP50"}, "metric 'mAP50' is not a detector metric"),
                                         ({"latency_ms": {"cpu-1thred": 60}}, "unknown target(s) ['cpu-1thred']")])
def test_an_unknown_metric_or_latency_target_is_refused(tmp_path, bad, words):
    with pytest.raises(GateConfigError, match=words.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        load_gate_config(write(tmp_path, {"detector": {**LOOSE, **bad}}))


def test_the_attribution_limits_are_required(tmp_path):
    with pytest.raises(GateConfigError, match=r"missing required key\(s\) \['max_preprocessing_drop'\]"):
        load_gate_config(write(tmp_path, {"detector": {"max_quantization_drop": 0.03}}))


def test_a_trained_model_without_limits_must_be_skipped_explicitly(tmp_path, capsys, tiny_run):
    err = refused(capsys, ["--run", str(tiny_run), "--config", str(write(tmp_path, {"detector": LOOSE}))])
    assert "no `segmenter:` section for the segmenter trained in" in err and "skip:" in err
    path = write(tmp_path, {"detector": LOOSE, "skip": ["segmenter"]})
    assert gate_main(["--run", str(tiny_run), "--config", str(path), "--limit", "2"]) == 0
    out = capsys.readouterr().out
    assert "[skip] segmenter: not judged (listed under skip:" in out
    g = json.loads((tiny_run / "gate" / "gate.json").read_text())
    assert set(g["models"]) == {"detector"} and "segmenter" in g["skipped"]


def test_the_segmenter_can_be_judged_on_its_ods_f1(tmp_path, tiny_run):
    path = write(tmp_path, {"detector": LOOSE, "segmenter": {**LOOSE, "metric": "ods_f1"}})
    assert gate_main(["--run", str(tiny_run), "--config", str(path), "--limit", "2"]) in (0, 1)
    seg = json.loads((tiny_run / "gate" / "gate.json").read_text())["models"]["segmenter"]
    assert seg["metric"] == "ods_f1" and all(0 <= v <= 1 for v in seg["cells"].values())


def test_a_missing_baseline_is_a_loud_skip_and_fails_with_require_baseline(tmp_path, capsys, tiny_run):
    path = write(tmp_path, {"detector": LOOSE, "segmenter": LOOSE, "baseline": str(tmp_path / "none.json")})
    assert gate_main(["--run", str(tiny_run), "--config", str(path), "--limit", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("[skip] ") >= 2 and "baseline regression: " in out and "none.json not found" in out
    junit = (tiny_run / "gate" / "gate.junit.xml").read_text()
    assert "none.json not found" in junit  # a <skipped> case, not silence
    err = refused(capsys, ["--run", str(tiny_run), "--config", str(path), "--require-baseline"])
    assert "--require-baseline" in err and "none.json not found" in err
    (tmp_path / "none.json").write_text(json.dumps({"demo": {}}))  # another run's figures only
    err = refused(capsys, ["--run", str(tiny_run), "--config", str(path), "--require-baseline"])
    assert f"no entry for run {tiny_run.name!r} (has ['demo'])" in err


def test_a_bug_in_the_gate_is_a_traceback_not_could_not_run(tmp_path, tiny_run, monkeypatch):
    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(gate, "gate_model", broken)
    path = write(tmp_path, {"detector": LOOSE, "segmenter": LOOSE})
    with pytest.raises(KeyError):
        gate_main(["--run", str(tiny_run), "--config", str(path)])


def test_shipped_gate_configs_load():
    cfg = load_gate_config(REPO / "configs/gate.yaml")
    assert cfg.detector.metric == "map50" and cfg.segmenter.max_quantization_drop == 0.03 and not cfg.skip


def test_ranked_rows_are_compared_row_by_matched_row():
    """Two runs of a YOLO26-style model whose near-tied rows swapped places: the same detections, so the
    output SQNR must stay high; a moved box must still count."""
    import numpy as np

    from evaluate.attribution import match_rows

    a = np.array([[[10, 10, 50, 50, 0.9, 1], [60, 60, 90, 90, 0.5001, 0], [5, 5, 9, 9, 0.5, 2]]], np.float32)
    swapped = a[:, [0, 2, 1]]
    np.testing.assert_array_equal(match_rows(a, swapped), a)
    moved = swapped.copy()
    moved[0, 1, :4] += 3  # the class-2 row, now second, moved by 3 px
    assert np.abs(match_rows(a, moved) - a).max() == 3
