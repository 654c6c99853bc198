"""The runtime refuses what it cannot run before the first frame, and stops or skips cleanly in the field."""

import json
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import onnx
import pytest

from deploy import sources
from tests.conftest import REPO
from tests.deploy.test_cli import deploy, summary, write_video


def with_metadata(src, dst, **changes):
    """A copy of the ONNX file with some edge_vision.* metadata values replaced."""
    model = onnx.load(str(src))
    for prop in model.metadata_props:
        key = prop.key.removeprefix("edge_vision.")
        if key in changes:
            prop.value = changes[key]
    onnx.save(model, str(dst))
    return dst


@pytest.mark.parametrize("change, words", [
    ({"class_names": json.dumps(["a", "b"])}, "cls_logits has 4 channels on axis -1, the contract expects 2 class"),
    ({"postprocess": json.dumps({"conf_thres": 0.05, "iou_thres": 0.6, "max_det": 100, "nms": "fast"})},
     "unknown postprocess key(s) ['nms']"),
    ({"postprocess": json.dumps({"conf_thres": "0.05", "iou_thres": 0.6, "max_det": 100})},
     "conf_thres '0.05' must be a number in [0, 1]"),
    ({"postprocess": json.dumps({"conf_thres": 0.05, "iou_thres": 1.5, "max_det": 100})}, "iou_thres 1.5"),
    ({"postprocess": json.dumps({"conf_thres": 0.05, "iou_thres": 0.6, "max_det": 0})}, "max_det 0"),
    ({"postprocess": json.dumps({"family": "yolov5", "conf_thres": 0.05})}, "postprocess family 'yolov5' is not one"),
    ({"postprocess": json.dumps({"family": "yolo", "conf_thres": 0.05})},  # our outputs under a YOLO family
     "outputs ['cls_logits', 'boxes'] in metadata, a detector (yolo) has ['output0']"),
])
def test_metadata_that_disagrees_with_the_graph_is_refused_at_load(tiny_run, tmp_path, change, words):
    bad = with_metadata(tiny_run / "export" / "detector.onnx", tmp_path / "bad.onnx", **change)
    out = tmp_path / "preds.jsonl"
    r = deploy("run", "--model", bad, "--source", tiny_run / "export", "--out", out)  # no frames needed
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 and words in r.stderr and "bad.onnx" in r.stderr
    assert not out.exists() and not (tmp_path / "preds.jsonl.part").exists()


def test_output_paths_are_checked_before_the_first_frame(tiny_run, tmp_path):
    model = tiny_run / "export" / "detector.onnx"
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [(["--out", tmp_path], "is a directory"),
             (["--out", a_file / "preds.jsonl"], "cannot be the folder it goes in"),
             (["--out", "/sys/preds.jsonl"], "cannot write there (Permission denied)"),  # read-only even to root
             (["--annotate", a_file], "cannot be a folder"),
             (["--heartbeat", tmp_path / "missing" / "alive.json"], "does not exist or is not writable")]
    for extra, words in cases:
        r = deploy("run", "--model", model, "--source", tiny_run / "export", *extra)
        assert r.returncode == 2 and "Traceback" not in r.stderr, (extra, r.stderr)
        assert r.stderr.count("\n") == 1 and words in r.stderr and "summary" not in r.stderr, (extra, r.stderr)


@pytest.mark.parametrize("option, value", [("--drift-window", 0), ("--max-frames", 0), ("--drift-every", 0),
                                           ("--capture-every", -1), ("--heartbeat-seconds", "nan")])
def test_out_of_range_options_are_refused(tiny_run, option, value):
    r = deploy("run", "--model", tiny_run / "export" / "detector.onnx", "--source", tiny_run, option, value)
    assert r.returncode == 2 and f"argument {option}: must be" in r.stderr and "Traceback" not in r.stderr


def test_sigterm_during_the_reconnect_backoff_stops_at_once(tiny_run):
    p = subprocess.Popen([sys.executable, "-m", "deploy", "run", "--model", tiny_run / "export" / "detector.onnx",
                          "--source", "rtsp://127.0.0.1:9/none", "--max-reopen", "10"], cwd=REPO,
                         stderr=subprocess.PIPE, text=True)
    lines = []
    for line in p.stderr:  # attempts 1-3 take 0.5 + 1 + 2 s; the fourth backoff is 4 s long
        lines.append(line)
        if "reopen attempt 3/10 failed" in line:
            break
    t0 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    err = "".join(lines) + p.communicate(timeout=30)[1]
    assert time.monotonic() - t0 < 2.0, err  # the 4 s backoff did not run out
    assert p.returncode == 0 and summary(err)["stopped_by"] == "SIGTERM" and summary(err)["frames"] == 0


def test_a_stop_flag_wakes_the_backoff(monkeypatch):
    monkeypatch.setattr(sources.VideoSource, "_open", lambda self: None)  # the camera never comes back
    stop = sources.StopFlag()
    threading.Timer(0.2, stop.set, ("SIGTERM",)).start()
    t0 = time.monotonic()
    src = sources.VideoSource("rtsp://camera", live=True, max_reopen=3, backoff=(30.0, 30.0), stop=stop)
    assert list(src) == [] and time.monotonic() - t0 < 2.0


def test_the_frame_a_truncated_mjpg_file_was_cut_in_is_a_bad_frame(tmp_path, capsys):
    video = tmp_path / "clip.avi"
    write_video(video, frames=40)
    whole = [f.image for f in sources.open_source(str(video))]
    data = video.read_bytes()
    video.write_bytes(data[: len(data) // 2])  # the recorder died mid-frame
    src = sources.open_source(str(video))
    frames = [f.image for f in src]
    assert 0 < len(frames) < 40 and src.stats.bad_frames == 1
    assert "is cut short (no JPEG end marker)" in capsys.readouterr().err
    for got, want in zip(frames, whole, strict=False):  # nothing half new, half the previous frame
        assert np.array_equal(got, want)


def test_a_crash_mid_run_leaves_the_part_file_not_the_final_name(tiny_run, tiny_data, tmp_path, monkeypatch):
    from deploy import __main__ as cli

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in postprocessing")

    monkeypatch.setattr(cli, "process", broken)
    out = tmp_path / "preds.jsonl"
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        with pytest.raises(RuntimeError):
            cli.main(["run", "--model", str(tiny_run / "export" / "detector.onnx"), "--source",
                      str(tiny_data.parent / "data" / "images" / "test"), "--out", str(out), "--no-drift"])
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    assert not out.exists() and (tmp_path / "preds.jsonl.part").exists()


def test_sigterm_while_a_stream_stalls_in_its_open_stops_within_two_seconds(tiny_run, tmp_path):
    """A server that accepts the connection and never answers holds OpenCV's open for its whole timeout (30 s in
    FFmpeg by default); docker/compose.yaml gives the container 20 s to stop."""
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    held = []
    threading.Thread(target=lambda: held.append(server.accept()), daemon=True).start()
    out = tmp_path / "preds.jsonl"
    p = subprocess.Popen([sys.executable, "-m", "deploy", "run", "--model", tiny_run / "export" / "detector.onnx",
                          "--source", f"rtsp://127.0.0.1:{server.getsockname()[1]}/stream", "--out", out], cwd=REPO,
                         stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not held and time.monotonic() < deadline:  # the runtime is inside its open now
        time.sleep(0.05)
    time.sleep(0.5)
    t0 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    err = p.communicate(timeout=30)[1]
    server.close()
    assert held and time.monotonic() - t0 < 2.0, err
    assert p.returncode == 0 and summary(err)["stopped_by"] == "SIGTERM"
    assert out.exists() and not (tmp_path / "preds.jsonl.part").exists()


@pytest.mark.parametrize("files, words", [({}, "no frame to run on (empty)"),
                                          ({"a.jpg": b"not a jpeg"}, "no frame to run on (1 unreadable)")])
def test_a_source_with_no_frame_is_an_error_not_an_idle_run(tiny_run, tmp_path, files, words):
    src = tmp_path / "mount"
    src.mkdir()
    for name, data in files.items():
        (src / name).write_bytes(data)
    r = deploy("run", "--model", tiny_run / "export" / "detector.onnx", "--source", src)
    assert r.returncode == 3 and f"error: {src}: {words}" in r.stderr and "Traceback" not in r.stderr
    # and why the drift summary has no score: too few measured frames
    assert "a score needs" in summary(r.stderr)["drift"]["why_no_score"]


def test_a_refused_run_creates_no_folder(tiny_run, tmp_path):
    r = deploy("run", "--model", tmp_path / "missing.onnx", "--source", tiny_run / "export",
               "--out", tmp_path / "newdir" / "sub" / "preds.jsonl", "--annotate", tmp_path / "ann")
    assert r.returncode == 2 and "missing.onnx" in r.stderr
    assert not (tmp_path / "newdir").exists() and not (tmp_path / "ann").exists()


def test_a_video_cut_inside_its_header_is_our_one_line_only(tiny_run, tmp_path):
    video = tmp_path / "clip.avi"
    write_video(video, frames=5)
    video.write_bytes(video.read_bytes()[:300])  # inside the AVI header
    r = deploy("run", "--model", tiny_run / "export" / "detector.onnx", "--source", video)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr  # not OpenCV's "Unexpected element ..."
    assert r.stderr.startswith(f"error: {video}: OpenCV cannot open this video")
