import json
import shutil
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from deploy.capture import load_capture
from deploy.hardware import fingerprint
from tests.conftest import REPO


def deploy(*args, **kw):
    return subprocess.run([sys.executable, "-m", "deploy", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, **kw)


def summary(stderr: str) -> dict:
    line = next(x for x in stderr.splitlines() if x.startswith("summary: "))
    return json.loads(line[len("summary: "):])


def write_video(path, frames: int = 30, size=(320, 240)) -> None:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 15, size)
    rng = np.random.default_rng(0)
    for i in range(frames):
        img = np.full((size[1], size[0], 3), 90, np.uint8)
        cv2.rectangle(img, (20 + 5 * i, 60), (80 + 5 * i, 140), tuple(int(v) for v in rng.integers(0, 255, 3)), -1)
        w.write(img)
    w.release()


def test_runs_on_an_image_folder_and_skips_corrupt_frames(tiny_run, tiny_data, tmp_path):
    src = tmp_path / "frames"
    shutil.copytree(tiny_data.parent / "data" / "images" / "test", src)
    (src / "zz_broken.jpg").write_bytes(b"\xff\xd8 truncated")
    out = tmp_path / "preds.jsonl"
    exp = tiny_run / "export"
    r = deploy("run", "--model", exp / "detector.onnx", "--seg", exp / "segmenter.onnx", "--source", src,
               "--out", out, "--heartbeat", tmp_path / "alive.json", "--annotate", tmp_path / "ann")
    assert r.returncode == 0, r.stderr
    assert "zz_broken.jpg: cannot decode" in r.stderr and "Traceback" not in r.stderr
    s = summary(r.stderr)
    assert s["frames"] == 4 and s["bad_frames"] == 1
    assert {"detector.pre", "detector.infer", "detector.post", "segmenter.infer", "frame"} <= set(s["latency_ms"])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4 and not (tmp_path / "preds.jsonl.part").exists()
    assert set(rows[0]["thin_pixels"]) == {"wire", "lane", "crack"}
    assert sum(rows[0]["thin_pixels"].values()) <= 240 * 320  # mask is back in source pixels
    assert set(rows[0]["latency_ms"]["detector"]) == {"pre", "infer", "post"} and "timestamp" in rows[0]
    assert json.loads((tmp_path / "alive.json").read_text())["frames"] >= 1
    assert len(list((tmp_path / "ann").glob("*.jpg"))) == 4
    # the drift monitor reads the training statistics from the ONNX metadata; 4 frames are too few to score
    assert rows[-1]["drift"] == {"score": None, "stat": None, "warning": False, "frames": 1}  # --drift-every 4
    assert s["drift"]["threshold"] == 0.25 and s["drift"]["max_score"] is None
    assert deploy("health", "--heartbeat", tmp_path / "alive.json").returncode == 0


def test_drift_over_the_threshold_warns_once_and_is_counted(tiny_run, tiny_data, tmp_path):
    out = tmp_path / "preds.jsonl"
    r = deploy("run", "--model", tiny_run / "export" / "detector.int8.onnx", "--source",
               tiny_data.parent / "data" / "images" / "test_lowlight", "--out", out, "--drift-every", 1,
               "--drift-window", 2, "--drift-threshold", 0)  # any PSI > 0 crosses it
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("warning: input drift at frame") == 1  # once per crossing, not every frame
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["drift"]["score"] is None and rows[-1]["drift"]["warning"] and rows[-1]["drift"]["frames"] == 2
    s = summary(r.stderr)["drift"]
    assert s["frames_over_threshold"] == len(rows) - 1 and s["max_score"] >= rows[-1]["drift"]["score"] > 0


def test_runs_on_a_video_file_and_captures_input_tensors(tiny_run, tmp_path):
    video = tmp_path / "clip.avi"
    write_video(video, frames=30)
    out = tmp_path / "preds.jsonl"
    r = deploy("run", "--model", tiny_run / "export" / "detector.int8.onnx", "--source", video, "--out", out,
               "--capture", tmp_path / "cap", "--capture-every", 10)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [x["frame"] for x in rows] == list(range(30)) and summary(r.stderr)["fps"] > 0
    npz = sorted((tmp_path / "cap" / "detector").glob("*.npz"))
    assert [p.stem for p in npz] == ["00000000", "00000010", "00000020"]
    tensor, lb = load_capture(npz[0])
    assert tensor.dtype == np.uint8 and tensor.shape[0] == 3 and (lb.src_h, lb.src_w) == (240, 320)
    assert (lb.in_h, lb.in_w) == tensor.shape[1:]
    with np.load(npz[0]) as z:  # the stored letterbox has no input size: it comes back from the tensor
        np.savez(tmp_path / "old.npz", tensor=z["tensor"], letterbox=z["letterbox"][:8])
    assert load_capture(tmp_path / "old.npz")[1] == lb
    hw = json.loads((tmp_path / "cap" / "hardware.json").read_text())  # which kernels computed the outputs
    assert hw["kernel_class"] == fingerprint()["kernel_class"] and hw["onnxruntime"] == ort.__version__
    assert "kernels; the file was made for" not in r.stderr  # a portable INT8 file warns on no CPU


@pytest.mark.parametrize("kernels, machine, warns", [("x86-avx512vnni", "x86-avx2", True),
                                                      ("portable", "x86-avx2", False),
                                                      ("x86-avx512vnni", "x86-avx512vnni", False)])
def test_an_int8_file_that_this_cpu_saturates_warns_once(tmp_path, capsys, monkeypatch, kernels, machine, warns):
    import deploy.__main__ as cli
    from deploy.runtime import OrtModel
    from tests.deploy import qdq_graph

    monkeypatch.setattr(cli, "fingerprint", lambda *a: {"kernel_class": machine})
    cli.warn_kernels([OrtModel(qdq_graph.build(tmp_path / "m.onnx", 127, 1 / 127, kernels))])
    err = capsys.readouterr().err
    assert err.count("warning: ") == int(warns)
    if warns:
        assert "m.onnx: this CPU runs x86-avx2 kernels" in err and "--target portable" in err


def test_a_truncated_video_ends_cleanly_where_its_data_ends(tiny_run, tmp_path):
    video = tmp_path / "clip.avi"
    write_video(video, frames=40)
    data = video.read_bytes()
    video.write_bytes(data[: len(data) // 2])  # the recorder died mid-file
    out = tmp_path / "preds.jsonl"
    r = deploy("run", "--model", tiny_run / "export" / "detector.onnx", "--source", video, "--out", out)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    n = len(out.read_text().splitlines())
    assert 0 < n < 40 and summary(r.stderr)["frames"] == n


def test_sigterm_flushes_complete_lines_and_exits_zero(tiny_run, tmp_path):
    video = tmp_path / "long.avi"
    write_video(video, frames=400)
    out = tmp_path / "preds.jsonl"
    p = subprocess.Popen([sys.executable, "-m", "deploy", "run", "--model", tiny_run / "export" / "detector.onnx",
                          "--source", video, "--out", out], cwd=REPO, stderr=subprocess.PIPE, text=True)
    part = tmp_path / "preds.jsonl.part"
    deadline = time.time() + 60
    while time.time() < deadline and (not part.exists() or part.stat().st_size == 0):
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]  # every line is whole JSON
    assert 0 < len(rows) < 400 and not part.exists()
    assert summary(err)["stopped_by"] == "SIGTERM"


def test_refuses_a_segmenter_passed_as_detector_and_a_missing_source(tiny_run, tmp_path):
    exp = tiny_run / "export"
    r = deploy("run", "--model", exp / "segmenter.onnx", "--source", tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "--model takes a detector" in r.stderr
    r = deploy("run", "--model", exp / "detector.onnx", "--source", tmp_path / "nope.mp4")
    assert r.returncode == 2 and "nope.mp4: not a folder, video file" in r.stderr


def test_bench_prints_the_per_stage_breakdown(tiny_run):
    r = deploy("bench", "--model", tiny_run / "export" / "detector.int8.onnx", "--frames", 5, "--threads", 1)
    assert r.returncode == 0, r.stderr
    assert "pre+post" in r.stdout and "FPS" in r.stdout


def test_pipelined_run_gives_the_same_results(tiny_run, tmp_path):
    video = tmp_path / "clip.avi"
    write_video(video, frames=12)
    rows = {}
    for mode in ("plain", "pipeline"):
        out = tmp_path / f"{mode}.jsonl"
        extra = ["--pipeline"] if mode == "pipeline" else []
        r = deploy("run", "--model", tiny_run / "export" / "detector.onnx", "--seg",
                   tiny_run / "export" / "segmenter.onnx", "--source", video, "--out", out, *extra)
        assert r.returncode == 0, r.stderr
        rows[mode] = [{k: v for k, v in json.loads(x).items() if k in ("frame", "boxes", "thin_pixels")}
                      for x in out.read_text().splitlines()]
    assert rows["plain"] == rows["pipeline"] and len(rows["plain"]) == 12


def test_a_live_source_that_stays_down_is_reported_not_a_traceback(tiny_run, tmp_path):
    r = deploy("run", "--model", tiny_run / "export" / "detector.onnx", "--source", "rtsp://127.0.0.1:9/none",
               "--max-reopen", 2, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "reopen attempt 1/2 failed" in r.stderr and "source down after 2 reopen attempts" in r.stderr
    r = deploy("run", "--model", tiny_run / "export" / "detector.onnx", "--source", tmp_path, "--ep", "cuda")
    assert r.returncode == 2 and "--ep cuda: CUDAExecutionProvider is not in this onnxruntime build" in r.stderr


def test_a_live_source_that_drops_mid_stream_is_reopened(monkeypatch):
    from deploy import sources

    class FakeCap:  # delivers `n` frames, then the link drops
        def __init__(self, n):
            self.n = n

        def read(self):
            self.n -= 1
            return (True, np.zeros((8, 8, 3), np.uint8)) if self.n >= 0 else (False, None)

        def release(self):
            pass

    caps = [FakeCap(3), None, FakeCap(2)]  # first stream, one failed reopen, then a working one
    monkeypatch.setattr(sources.VideoSource, "_open", lambda self: caps.pop(0) if caps else None)
    monkeypatch.setattr(sources.time, "sleep", lambda s: None)
    src = sources.VideoSource("rtsp://camera", live=True, max_reopen=3, backoff=(0.01, 0.02))
    got = []
    with pytest.raises(sources.SourceError, match="source down after 3 reopen attempts"):
        for frame in src:
            got.append(frame.id)
    assert got == [0, 1, 2, 3, 4] and src.stats.reopens == 1
