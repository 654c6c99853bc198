"""python -m datasets check: the table and the problems that would break training (exit 1), on generated data."""

from __future__ import annotations

import shutil

import pytest
import yaml

from datasets.check import main as check_main
from tests.conftest import REPO, SHARED


def test_clean_set_prints_its_table_and_exits_0(tiny_data, tmp_path, capsys):
    assert check_main(["--config", str(tiny_data), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "detection:" in out and "segmentation:" in out and "train sizes:" in out and "0 problem(s)" in out
    assert (tmp_path / "check.png").read_bytes()[:4] == b"\x89PNG"


def test_unreadable_and_duplicate_images_are_found(tiny_data, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(tiny_data.parent / "data", root)
    cfg = yaml.safe_load(tiny_data.read_text())
    cfg["root"] = str(root)
    path = tmp_path / "data.yaml"
    path.write_text(yaml.safe_dump(cfg))
    images = sorted((root / "images" / "val").glob("*.jpg"))
    shutil.copy(images[0], images[1])  # a duplicate: a warning
    images[2].write_bytes(b"not a jpeg")  # unreadable: training would stop on it
    assert check_main(["--config", str(path), "--out", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"problem: {images[2]}: unreadable image" in out
    assert f"warning: {images[1].name} duplicates {images[0].name}" in out


@pytest.mark.skipif(not SHARED.is_dir(), reason="the shared sample data is not next to this checkout")
@pytest.mark.parametrize("config", ["configs/coco128.yaml", "configs/crackforest.yaml"])
def test_the_real_sample_sets_check_clean(config, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    assert check_main(["--config", config, "--out", str(tmp_path)]) == 0
