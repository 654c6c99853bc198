"""python -m deploy run --model DET.onnx [--seg SEG.onnx] --source DIR [--out preds.jsonl]"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from deploy.contract import ContractError
from deploy.preprocess import ImageReadError, read_image
from deploy.runtime import ModelLoadError, OrtModel

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m deploy", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run detector (+ segmenter) over an image folder")
    r.add_argument("--model", required=True, help="detector ONNX (reads its contract from the metadata)")
    r.add_argument("--seg", help="segmenter ONNX, run on the same frames")
    r.add_argument("--source", required=True, help="folder of images")
    r.add_argument("--out", help="JSON Lines output (written atomically); default: stdout")
    r.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    return p


def frame_record(frame_id: int, name: str, det: OrtModel, seg: OrtModel | None, img: np.ndarray) -> dict:
    t0 = time.perf_counter()
    d = det.predict(img)
    t1 = time.perf_counter()
    names = det.contract.class_names
    rec = {
        "frame": frame_id,
        "source": name,
        "boxes": [
            {"label": names[int(c)], "score": round(float(s), 4), "xyxy": [round(float(v), 1) for v in b]}
            for b, s, c in zip(d.boxes, d.scores, d.labels, strict=True)
        ],
        "latency_ms": {"detector": round((t1 - t0) * 1e3, 2)},
    }
    if seg is not None:
        mask = seg.predict(img)
        counts = np.bincount(mask.ravel(), minlength=len(seg.contract.class_names))
        rec["thin_pixels"] = {n: int(k) for n, k in zip(seg.contract.class_names, counts, strict=True)}
        rec["latency_ms"]["segmenter"] = round((time.perf_counter() - t1) * 1e3, 2)
    return rec


def run(args: argparse.Namespace) -> int:
    det = OrtModel(args.model, threads=args.threads)
    seg = OrtModel(args.seg, threads=args.threads) if args.seg else None
    if det.task != "detector" or (seg is not None and seg.task != "segmenter"):
        raise ContractError("--model takes a detector and --seg a segmenter (see each file's edge_vision.task)")
    src = Path(args.source)
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: not a folder of images (video and camera sources: not yet supported)")
    files = sorted(p for p in src.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    tmp = Path(str(args.out) + ".part") if args.out else None
    out = open(tmp, "w") if tmp else sys.stdout
    done = skipped = 0
    try:
        for i, f in enumerate(files):
            try:
                img = read_image(f)
            except ImageReadError as e:
                print(f"skip: {e}", file=sys.stderr)
                skipped += 1
                continue
            out.write(json.dumps(frame_record(i, f.name, det, seg, img)) + "\n")
            done += 1
    finally:
        if tmp:
            out.close()
    if tmp:
        os.replace(tmp, args.out)  # never leave a half-written result under the final name
    print(f"frames: {done} processed, {skipped} skipped", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        return run(args)
    except (ModelLoadError, ContractError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
