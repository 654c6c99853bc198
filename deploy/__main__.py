"""python -m deploy run --model DET.onnx [--seg SEG.onnx] --source SRC [--out preds.jsonl] ...
python -m deploy bench --model DET.onnx [--seg SEG.onnx] [--frames 300] [--size 1280x720] [--threads 1]
python -m deploy health --heartbeat FILE [--max-age 30]

The field runtime: numpy + OpenCV + ONNX Runtime only (never torch). SRC is an image folder, a video file,
a camera index or an RTSP / GStreamer pipeline string. Per frame it writes one JSON line (frame id,
timestamp, boxes with class names and scores, per-class thin-structure pixel counts, latency pre / infer /
post per model, and `drift`: the input drift score against the training statistics in the model's metadata,
see deploy.drift) and at exit a summary (frames, FPS, p50 / p99 per stage, drift). Corrupt frames are counted and
skipped; a live source that drops is reopened with backoff; SIGTERM / SIGINT stop after the current frame
(or at once during a reconnect backoff), flush and exit 0; the output file appears under its name only when
complete (written as .part first; a run that crashes leaves the .part). The model's contract and every path
the run writes are checked before the first frame.
Exit code: 0 done, 2 could not start (model, contract, option, output path or source), 3 a live source
stayed down or the source gave no frame at all (an empty folder, nothing decodable).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from deploy.atomic import write_atomic
from deploy.capture import save_capture, save_hardware
from deploy.contract import ContractError
from deploy.drift import DriftMonitor
from deploy.errors import EdgeVisionError
from deploy.hardware import fingerprint, kernel_mismatch
from deploy.health import add_arguments as health_args
from deploy.health import health
from deploy.options import check_paths, frame_size, make_paths, number
from deploy.runtime import EXECUTION_PROVIDERS, ModelLoadError, OrtModel
from deploy.sources import Frame, SourceError, StopFlag, open_source

EMULATED = "EDGE_VISION_EMULATED"  # set by deploy.emulate to the CPU profile the process runs under


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m deploy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run detector (+ segmenter) over a folder, video, camera or stream")
    models(r)
    r.add_argument("--source", required=True, help="image folder, video file, camera index, rtsp://..., or a "
                                                   "GStreamer pipeline ending in appsink")
    r.add_argument("--out", help="JSON Lines output (FILE.part while running, renamed when done); default stdout")
    r.add_argument("--annotate", help="folder for annotated frames (JPEG)")
    r.add_argument("--capture", help="folder for sampled raw frames + exact input tensors (for the gate)")
    r.add_argument("--capture-every", type=number(int, 1), default=30, help="capture one frame in N")
    r.add_argument("--heartbeat", help="file rewritten every --heartbeat-seconds (container health checks)")
    r.add_argument("--heartbeat-seconds", type=number(float, 0, strict=True), default=5.0)
    r.add_argument("--max-frames", type=number(int, 1), default=None, help="stop after N frames (default: no limit)")
    r.add_argument("--pipeline", action="store_true", help="read and preprocess the next frame in a thread "
                                                           "while the current one runs")
    r.add_argument("--max-reopen", type=number(int, 0), default=10, help="reopen attempts for a live source that drops")
    r.add_argument("--drift-window", type=number(int, 1), default=100,
                   help="frames in the drift monitor's rolling window")
    r.add_argument("--drift-threshold", type=number(float, 0), default=None,
                   help="drift score (PSI) that raises a warning (default: the model's, 0.25)")
    r.add_argument("--drift-every", type=number(int, 1), default=4,
                   help="frames between drift measurements (each costs about 0.6 ms on one x86 core at 320 px)")
    r.add_argument("--no-drift", action="store_true", help="skip the input drift monitor")
    health_args(sub.add_parser("health", help="exit 0 if the heartbeat file is fresh (the same as python -m "
                                              "deploy.health, which containers call: it imports no OpenCV)"))
    b = sub.add_parser("bench", help="per-stage latency from camera-sized frames to results")
    models(b)
    b.add_argument("--frames", type=number(int, 1), default=300)
    b.add_argument("--size", type=frame_size, default=(1280, 720), help="WxH of the synthetic BGR frames")
    return p


def models(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="detector ONNX or .ort (reads its contract from the metadata)")
    p.add_argument("--seg", help="segmenter ONNX or .ort, run on the same frames")
    p.add_argument("--backend", default="ort", choices=["ort", "trt"],
                   help="ort: ONNX Runtime; trt: a TensorRT engine built here from the ONNX and cached")
    p.add_argument("--ep", default="cpu", choices=sorted(EXECUTION_PROVIDERS),
                   help="ONNX Runtime execution provider (cuda / tensorrt need onnxruntime-gpu)")
    p.add_argument("--precision", default="int8", choices=["fp32", "fp16", "int8"],
                   help="--backend trt: engine precision (int8 takes the QDQ file, e.g. detector.int8-trt.onnx)")
    p.add_argument("--engine-cache", default="engines", help="--backend trt: engine cache folder")
    p.add_argument("--threads", type=number(int, 1), default=None, help="ONNX Runtime intra-op threads (and OpenCV's)")


def load_model(path: str, args):
    if args.backend == "trt":
        from deploy.trt_engine import TensorRTUnavailable
        from deploy.trt_runtime import TrtModel

        try:
            return TrtModel(path, args.precision, args.engine_cache)
        except TensorRTUnavailable as e:
            raise ModelLoadError(f"--backend trt: {e}") from None
    providers = EXECUTION_PROVIDERS[args.ep]
    missing = [p for p in providers if p not in ort.get_available_providers()]
    if missing:
        raise ModelLoadError(f"--ep {args.ep}: {missing[0]} is not in this onnxruntime build "
                             f"({', '.join(ort.get_available_providers())}); install onnxruntime-gpu or use --ep cpu")
    return OrtModel(path, threads=args.threads, providers=providers)


def load_models(args):
    if args.threads:
        cv2.setNumThreads(args.threads)
    det = load_model(args.model, args)
    seg = load_model(args.seg, args) if args.seg else None
    if det.task != "detector" or (seg is not None and seg.task != "segmenter"):
        raise ContractError("--model takes a detector and --seg a segmenter (see each file's edge_vision.task)")
    warn_kernels([m for m in (det, seg) if isinstance(m, OrtModel) and args.ep == "cpu"])
    return det, seg


def warn_kernels(models: list[OrtModel]) -> None:
    """Once per file at start: an INT8 file whose weights this CPU's integer kernels saturate (deploy.hardware)."""
    kernels = fingerprint()["kernel_class"]
    for m in models:
        why = kernel_mismatch(m.contract.kernels, kernels) if m.contract.precision == "int8" else None
        if why:
            print(f"warning: {m.path}: this CPU runs {kernels} kernels; the file was {why}", file=sys.stderr)


def drift_monitor(det, seg, window: int = 100, threshold: float | None = None) -> DriftMonitor | None:
    """On the detector's input (else the segmenter's), with the training statistics from its metadata."""
    for m in (det, seg):
        if m is not None and m.contract.drift:
            try:
                return DriftMonitor(m.contract.drift, m.contract.preprocess.channel_order, window,
                                    min_frames=min(30, window), threshold=threshold, model=m.task)
            except ValueError as e:
                raise ContractError(f"{m.path}: {e}") from None
    return None


def prepare_all(frame: Frame, det, seg) -> dict:
    """Each model's (tensor, letterbox, ms) for one frame: the step the pipeline thread runs ahead."""
    out = {}
    for name, m in (("detector", det), ("segmenter", seg)):
        if m is not None:
            t0 = time.perf_counter()
            tensor, lb = m.prepare(frame.image)
            out[name] = (tensor, lb, (time.perf_counter() - t0) * 1e3)
    return out


def pipelined(source, det, seg, depth: int = 2):
    """Read and preprocess in a thread while the caller infers: yields (frame, prepared)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()

    def reader():
        try:
            for frame in source:
                q.put((frame, prepare_all(frame, det, seg)))
        except Exception as e:  # handed to the consumer, which raises it in the main thread
            q.put(e)
        q.put(done)

    threading.Thread(target=reader, daemon=True).start()
    while (item := q.get()) is not done:
        if isinstance(item, Exception):
            raise item
        yield item


def process(frame: Frame, det, seg, capture: Path | None = None, prepared: dict | None = None,
            drift: DriftMonitor | None = None, drift_every: int = 1) -> tuple[dict, dict]:
    """One frame through both models -> (the JSON record with the per-stage latency in ms, the results by
    task: Detections and the class-index mask, for annotation)."""
    results: dict = {}
    rec: dict = {"frame": frame.id, "source": frame.name, "timestamp": round(frame.timestamp, 3), "latency_ms": {}}
    prepared = prepared or prepare_all(frame, det, seg)
    for name, m in (("detector", det), ("segmenter", seg)):
        if m is None:
            continue
        tensor, lb, pre_ms = prepared[name]
        t1 = time.perf_counter()
        outs = m.infer(tensor)
        t2 = time.perf_counter()
        result = results[name] = m.postprocess(outs, lb)
        t3 = time.perf_counter()
        rec["latency_ms"][name] = {"pre": round(pre_ms, 3), "infer": round((t2 - t1) * 1e3, 3),
                                   "post": round((t3 - t2) * 1e3, 3)}
        if capture is not None:
            save_capture(capture / name, f"{frame.id:08d}", frame.image, tensor, lb, outs, m.path.name)
        if name == "detector":
            names = m.contract.class_names
            rec["boxes"] = [{"label": names[int(c)], "score": round(float(s), 4),
                             "xyxy": [round(float(v), 1) for v in b]}
                            for b, s, c in zip(result.boxes, result.scores, result.labels, strict=True)]
        else:
            counts = np.bincount(result.ravel(), minlength=len(m.contract.class_names))
            rec["thin_pixels"] = {n: int(k) for n, k in zip(m.contract.class_names, counts, strict=True)
                                  if n != "background"}
    rec["drift"] = None
    if drift is not None:
        if frame.id % max(1, drift_every) == 0:  # sampled frames: the statistics cost more than pre + post
            t0 = time.perf_counter()
            tensor, lb, _ = prepared[drift.model]
            drift.update(tensor, lb)
            rec["latency_ms"]["drift"] = {"stats": round((time.perf_counter() - t0) * 1e3, 3)}
        rec["drift"] = drift.last
    return rec, results


def annotate(img: np.ndarray, rec: dict, results: dict) -> np.ndarray:
    out = img.copy()
    mask = results.get("segmenter")
    if mask is not None:
        out[mask > 0] = (0.5 * out[mask > 0] + [0, 0, 127]).astype(np.uint8)
    for b in rec.get("boxes", []):
        x0, y0, x1, y1 = (int(v) for v in b["xyxy"])
        cv2.rectangle(out, (x0, y0), (x1, y1), (0, 255, 0), 2)
        cv2.putText(out, f"{b['label']} {b['score']:.2f}", (x0, max(0, y0 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (0, 255, 0), 1)
    return out


def summarize(latencies: dict[str, list[float]], frames: int, seconds: float, stats) -> dict:
    out = {"frames": frames, "bad_frames": stats.bad_frames if stats else 0, "reopens": stats.reopens if stats else 0,
           "seconds": round(seconds, 3), "fps": round(frames / seconds, 1) if seconds > 0 else None, "latency_ms": {}}
    for k, v in latencies.items():
        if v:
            p50, p99 = np.percentile(v, [50, 99])
            out["latency_ms"][k] = {"p50": round(float(p50), 3), "p99": round(float(p99), 3)}
    return out


def run(args: argparse.Namespace) -> int:
    check_paths(args)
    det, seg = load_models(args)
    drift = None if args.no_drift else drift_monitor(det, seg, args.drift_window, args.drift_threshold)
    stop = StopFlag()  # installed before the source opens: a live source may start in its reconnect backoff
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: stop.set(signal.Signals(signum).name))
    source = open_source(args.source, max_reopen=args.max_reopen, stop=stop)
    make_paths(args)  # every check has passed: only now is anything created
    part = Path(str(args.out) + ".part") if args.out else None
    out = open(part, "w") if part else sys.stdout
    annotate_dir = Path(args.annotate) if args.annotate else None
    capture = Path(args.capture) if args.capture else None
    if capture is not None:  # the kernels that computed the recorded outputs, for the gate's runtime factor
        save_hardware(capture, fingerprint(args.threads))
    latencies: dict[str, list[float]] = {}
    done, t_start, last_beat, rc, finished = 0, time.perf_counter(), 0.0, 0, False
    drifting, drift_frames, drift_max = False, 0, None
    try:
        frames = pipelined(source, det, seg) if args.pipeline else ((f, None) for f in source)
        for frame, prepared in frames:
            t0 = time.perf_counter()
            cap = capture if capture is not None and frame.id % args.capture_every == 0 else None
            rec, results = process(frame, det, seg, cap, prepared, drift, args.drift_every)
            d = rec["drift"]
            if d and d["score"] is not None:
                drift_max = max(drift_max or 0.0, d["score"])
                drift_frames += d["warning"]
                if d["warning"] and not drifting:  # once per crossing, not every frame
                    print(f"warning: input drift at frame {frame.id}: {d['stat']} PSI {d['score']:.3f} > "
                          f"{drift.threshold} over the last {d['frames']} frames; the inputs no longer look like "
                          "the training data", file=sys.stderr)
                drifting = d["warning"]
            if annotate_dir:
                cv2.imwrite(str(annotate_dir / f"{frame.id:08d}.jpg"), annotate(frame.image, rec, results))
            for name, stages in rec["latency_ms"].items():
                for s, v in stages.items():
                    latencies.setdefault(f"{name}.{s}", []).append(v)
            latencies.setdefault("frame", []).append((time.perf_counter() - t0) * 1e3)
            out.write(json.dumps(rec) + "\n")
            done += 1
            if args.heartbeat and time.time() - last_beat >= args.heartbeat_seconds:
                last_beat = time.time()
                beat = {"time": last_beat, "frames": done, "source": args.source}
                write_atomic(Path(args.heartbeat), json.dumps(beat))
            if stop.reason or (args.max_frames and done >= args.max_frames):
                break
        finished = True
    except SourceError as e:
        print(f"error: {e}", file=sys.stderr)
        rc, finished = 3, True
    finally:
        out.flush()
        if part:
            out.close()
            if finished:  # complete lines only, under the final name; a crash leaves FILE.part
                os.replace(part, args.out)
    if done == 0 and rc == 0 and not stop.reason:  # a misconfigured mount must not look like a healthy idle run
        bad = source.stats.bad_frames if source.stats else 0
        print(f"error: {args.source}: no frame to run on ({'empty' if not bad else f'{bad} unreadable'}); check "
              "the source (the folder, the video, the camera mount)", file=sys.stderr)
        rc = 3
    summary = summarize(latencies, done, time.perf_counter() - t_start, source.stats)
    if drift is not None:
        summary["drift"] = {"max_score": drift_max, "frames_over_threshold": drift_frames,
                            "threshold": drift.threshold}
        if drift_max is None:
            summary["drift"]["why_no_score"] = (f"a score needs {drift.min_frames} measured frames (one frame in "
                                                f"{args.drift_every}); this run measured {len(drift.frames)}")
    if stop.reason:
        summary["stopped_by"] = stop.reason
    if os.environ.get(EMULATED):  # under QEMU (deploy.emulate): the latencies are the emulator's, not a device's
        summary["emulated"] = os.environ[EMULATED]
    print("summary: " + json.dumps(summary), file=sys.stderr)
    return rc


def bench(args: argparse.Namespace) -> int:
    """Camera-sized frames -> results, per stage: what a device's frame budget is spent on."""
    det, seg = load_models(args)
    drift = drift_monitor(det, seg)
    w, h = args.size
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 3)  # image-like, not noise
    lat: dict[str, list[float]] = {}
    for i in range(args.frames + 20):
        rec, _ = process(Frame(i, str(i), time.time(), np.roll(base, i, axis=1)), det, seg, drift=drift)
        if i < 20:  # warm-up
            continue
        for name, stages in rec["latency_ms"].items():
            for s, v in stages.items():
                lat.setdefault(name, {}).setdefault(s, []).append(v)
    print(f"{w}x{h} BGR frames -> results, {args.frames} frames, threads={args.threads or 'default'}"
          + (f"; EMULATED ({os.environ[EMULATED]}): not a device's latency" if os.environ.get(EMULATED) else ""))
    total = 0.0
    for name, stages in lat.items():
        p50 = {s: float(np.median(v)) for s, v in stages.items()}
        if name == "drift":  # not in the total: `run` measures every --drift-every (4th) frame
            print(f"  drift monitor: {p50['stats']:.3f} ms per measured frame (p50)")
            continue
        frame = sum(p50.values())
        total += frame
        print(f"  {name}: pre {p50['pre']:.3f} ms, infer {p50['infer']:.3f} ms, post {p50['post']:.3f} ms (p50); "
              f"pre+post {100 * (p50['pre'] + p50['post']) / frame:.1f}% of {frame:.3f} ms -> {1e3 / frame:.0f} FPS")
    print(f"  all models: {total:.3f} ms per frame -> {1e3 / total:.0f} FPS")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.cmd == "health":
        return health(args)
    try:
        return run(args) if args.cmd == "run" else bench(args)
    except EdgeVisionError as e:  # bad input: one line; anything else is a bug and keeps its traceback
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
