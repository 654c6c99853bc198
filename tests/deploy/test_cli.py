import json
import shutil
import subprocess
import sys

from tests.conftest import REPO


def test_runs_on_an_image_folder_and_skips_corrupt_frames(tiny_run, tiny_data, tmp_path):
    src = tmp_path / "frames"
    shutil.copytree(tiny_data.parent / "data" / "images" / "test", src)
    (src / "zz_broken.jpg").write_bytes(b"\xff\xd8 truncated")
    out = tmp_path / "preds.jsonl"
    exp = tiny_run / "export"
    r = subprocess.run([sys.executable, "-m", "deploy", "run", "--model", str(exp / "detector.onnx"),
                        "--seg", str(exp / "segmenter.onnx"), "--source", str(src), "--out", str(out)],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "zz_broken.jpg: cannot decode" in r.stderr and "4 processed, 1 skipped" in r.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4 and not (tmp_path / "preds.jsonl.part").exists()
    assert set(rows[0]["thin_pixels"]) == {"background", "wire", "lane", "crack"}
    assert sum(rows[0]["thin_pixels"].values()) == 240 * 320  # mask is back in source pixels


def test_refuses_a_segmenter_passed_as_detector(tiny_run, tmp_path):
    exp = tiny_run / "export"
    r = subprocess.run([sys.executable, "-m", "deploy", "run", "--model", str(exp / "segmenter.onnx"),
                        "--source", str(tmp_path)], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "--model takes a detector" in r.stderr
