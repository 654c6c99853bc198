"""The field runtime inside the ARM64 userland: `python -m deploy run` on a video of the val images under an ARM
profile (deploy.emulate --profile), with the INT8 CPU files, against what it must write there.

What it must write: this machine's decoding, preprocessing and postprocessing (deploy/) with the models' raw
outputs computed by the profile's integer kernels (the same files under QEMU). So the only thing allowed to
differ is the kernels, whose effect on accuracy `make kernels` measures; everything else the ARM userland does
(OpenCV's decode and resize, NumPy's postprocessing, the JSON lines) must match, to float rounding (SCORE_EPS,
BOX_EPS px; PIXEL_EPS of a thin class's pixels + PIXEL_SLACK px, where a logit tie after the float resize of the
logits breaks the other way: 2 px of 71 seen on the demo).
The video is lossless (FFV1): JPEG decoders differ across CPUs (x86 and ARM wheels of OpenCV decode the same
MJPG frame up to 2 levels apart), which is a preprocessing difference for the gate's captures to catch, not
the runtime's. The native run is compared too and reported: how far the phone's kernels move the JSON lines.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import cv2

from deploy.emulate import EmulatedModel
from deploy.errors import EdgeVisionError
from deploy.runtime import OrtModel
from deploy.sources import open_source

SCORE_EPS, BOX_EPS, PIXEL_EPS, PIXEL_SLACK = 0.002, 0.2, 0.002, 8
REPO = Path(__file__).resolve().parents[1]


def write_video(images: list[Path], path: Path, fps: int = 10) -> Path:
    """A lossless (FFV1) video of the images, each resized to the first one's size."""
    first = cv2.imread(str(images[0]))
    h, w = first.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), fps, (w, h))
    if not writer.isOpened():
        raise EdgeVisionError(f"{path}: this OpenCV cannot write FFV1 video")
    for p in images:
        img = cv2.imread(str(p))
        writer.write(img if img.shape[:2] == (h, w) else cv2.resize(img, (w, h)))
    writer.release()
    return path


def deploy_run(det: Path, seg: Path | None, video: Path, out: Path, profile: str | None) -> tuple[list[dict], float]:
    """The JSON lines of `deploy run` (natively, or under `profile`) and its wall time in seconds."""
    args = ["-m", "deploy", "run", "--model", str(det), "--source", str(video), "--out", str(out), "--threads", "1"]
    args += ["--seg", str(seg)] if seg else []
    cmd = [sys.executable, *args] if profile is None else [sys.executable, "-m", "deploy.emulate", "--profile",
                                                            profile, "--", *args]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise EdgeVisionError(f"deploy run {'natively' if profile is None else 'under ' + profile} failed "
                              f"(exit {r.returncode}): {last}")
    return [json.loads(line) for line in out.read_text().splitlines()], seconds


def expected_rows(det: Path, seg: Path | None, video: Path, profile: str) -> list[dict]:
    """The records deploy run writes when `profile`'s kernels compute the models' outputs (deploy.__main__.process
    here, with each model's `infer` answered by its file under QEMU)."""
    from deploy.__main__ import process

    models, workers = [], []
    try:
        for path in (det, seg):
            m = None
            if path is not None:
                m = OrtModel(path, threads=1)
                workers.append(EmulatedModel(path, profile))
                m.infer = workers[-1].infer
            models.append(m)
        return [process(frame, *models)[0] for frame in open_source(str(video))]
    finally:
        for w in workers:
            w.close()


def iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def same_box(a: dict, b: dict) -> bool:
    return (a["label"] == b["label"] and abs(a["score"] - b["score"]) <= SCORE_EPS
            and max(abs(x - y) for x, y in zip(a["xyxy"], b["xyxy"], strict=True)) <= BOX_EPS)


def compare(got: list[dict], want: list[dict]) -> dict:
    """{'frames', 'agree', 'disagreeing_frames'}: every box and thin-pixel count of `got` as in `want`, to float
    rounding; a box whose score is within SCORE_EPS of the other run's lowest may be missing (a threshold tie)."""
    if len(got) != len(want):
        return {"frames": [len(got), len(want)], "agree": False, "disagreeing_frames": ["frame count"]}
    bad = []
    for a, b in zip(got, want, strict=True):
        ba, bb = a.get("boxes", []), b.get("boxes", [])
        floor = min([x["score"] for x in ba + bb], default=0.0) + SCORE_EPS
        ok = all(any(same_box(x, y) for y in bb) or x["score"] <= floor for x in ba)
        ok &= all(any(same_box(y, x) for x in ba) or y["score"] <= floor for y in bb)
        for name, n in b.get("thin_pixels", {}).items():
            ok &= abs(a.get("thin_pixels", {}).get(name, -1) - n) <= PIXEL_EPS * n + PIXEL_SLACK
        if not ok:
            bad.append(a["frame"])
    return {"frames": len(got), "agree": not bad, "disagreeing_frames": bad}


def kernel_effect(native: list[dict], emulated: list[dict], confident: float = 0.5) -> dict:
    """How far the profile's kernels move the JSON lines from this machine's: of the native boxes scoring at
    least `confident` (the ones a user acts on), how many the other run has (same label, IoU >= 0.5), the
    largest score change and coordinate shift against the best-overlapping one, and the largest relative change
    of a thin class's pixel count."""
    boxes, matched, score, shift, pixels = 0, 0, 0.0, 0.0, 0.0
    for a, b in zip(native, emulated, strict=True):
        for x in (x for x in a.get("boxes", []) if x["score"] >= confident):
            boxes += 1
            near = [y for y in b.get("boxes", []) if y["label"] == x["label"] and iou(x["xyxy"], y["xyxy"]) >= 0.5]
            if near:
                y = max(near, key=lambda y: iou(x["xyxy"], y["xyxy"]))
                matched += 1
                score = max(score, abs(y["score"] - x["score"]))
                shift = max(shift, max(abs(u - v) for u, v in zip(x["xyxy"], y["xyxy"], strict=True)))
        for name, n in a.get("thin_pixels", {}).items():
            pixels = max(pixels, abs(b.get("thin_pixels", {}).get(name, 0) - n) / max(n, 1))
    return {"confident_boxes": boxes, "matched": matched, "max_score_change": round(score, 4),
            "max_box_shift_px": round(shift, 1), "max_thin_pixel_change": round(pixels, 4)}


def smoke(det: Path, seg: Path | None, images: list[Path], profile: str, workdir: Path) -> dict:
    """deploy run under `profile` on a video of `images`, against what it must write there, and beside the
    native run; the wall times (emulated: the check's cost, not latency)."""
    video = write_video(images, workdir / "val.mkv")
    native, t_native = deploy_run(det, seg, video, workdir / "native.jsonl", None)
    emulated, t_emulated = deploy_run(det, seg, video, workdir / f"{profile}.jsonl", profile)
    return {**compare(emulated, expected_rows(det, seg, video, profile)),
            "kernel_effect": kernel_effect(native, emulated),
            "seconds": {"native": round(t_native, 1), "emulated": round(t_emulated, 1)}}
