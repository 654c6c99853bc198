"""Device captures: the raw frame and the exact input tensor the device fed its model, for the gate.

A capture folder holds, per sampled frame, `<id>.png` (the decoded BGR frame, lossless) and `<id>.npz`
with `tensor` ((3, H, W) uint8, what the runtime's preprocessing produced), `letterbox` (the Letterbox
fields in declaration order) and, from `deploy run`, the raw outputs the device's runtime gave for that
tensor (`out_0`, `out_1`, ... in contract order) and `model` (the file name of the model it ran).
`python -m evaluate.gate --capture DIR` compares those tensors with the reference preprocessing of the same
frames and those outputs with ONNX Runtime's on the same tensors and file, without labels. numpy + OpenCV
only.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np

from deploy.atomic import atomic_path, write_atomic
from deploy.errors import EdgeVisionError
from deploy.preprocess import ImageReadError, Letterbox, read_image

# the input size (in_h, in_w) is not stored: it is the tensor's
LETTERBOX_FIELDS = [f.name for f in dataclasses.fields(Letterbox) if f.name not in ("in_h", "in_w")]


class CaptureError(EdgeVisionError, ValueError):
    """A capture folder or file that cannot be used; the message names the file and the fix."""


def save_capture(folder: str | Path, frame_id: str, frame: np.ndarray, tensor: np.ndarray, lb: Letterbox,
                 outputs: list[np.ndarray] | None = None, model: str | None = None) -> None:
    """Write <id>.png and <id>.npz (with the runtime's `outputs` of `model` when given); each lands complete or
    not at all (temp file + rename)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ok, png = cv2.imencode(".png", frame)
    if not ok:
        raise CaptureError(f"{folder / frame_id}.png: OpenCV could not encode the frame")
    write_atomic(folder / f"{frame_id}.png", png.tobytes(), hidden=True)
    with atomic_path(folder / f"{frame_id}.npz", hidden=True) as tmp, open(tmp, "wb") as f:
        recorded = {f"out_{i}": np.asarray(o) for i, o in enumerate(outputs or [])}
        if outputs is not None:
            recorded["model"] = np.array(str(model))
        np.savez(f, tensor=np.ascontiguousarray(tensor), letterbox=np.array(
            [getattr(lb, k) for k in LETTERBOX_FIELDS], dtype=np.float64), **recorded)


def save_hardware(folder: str | Path, hardware: dict) -> None:
    """The capturing machine's fingerprint (deploy.hardware), once per capture folder: hardware.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / "hardware.json", json.dumps(hardware, indent=2))


def load_hardware(folder: str | Path) -> dict | None:
    """The fingerprint save_hardware wrote, or None (older captures, or a broken file: the kernels unknown)."""
    try:
        hw = json.loads((Path(folder) / "hardware.json").read_text())
    except (OSError, ValueError):
        return None
    return hw if isinstance(hw, dict) else None


def load_capture(npz_path: str | Path) -> tuple[np.ndarray, Letterbox]:
    """-> ((3, H, W) uint8 tensor, Letterbox) from one <id>.npz."""
    try:
        with np.load(npz_path) as z:
            tensor, raw = z["tensor"], z["letterbox"]
    except (OSError, ValueError, KeyError) as e:
        raise CaptureError(f"{npz_path}: not a capture file ({type(e).__name__}); re-capture with "
                           "`python -m deploy run --capture DIR`") from None
    if tensor.ndim == 4:
        tensor = tensor[0]
    if tensor.dtype != np.uint8 or tensor.ndim != 3 or len(raw) != len(LETTERBOX_FIELDS):
        raise CaptureError(f"{npz_path}: tensor {tensor.dtype} {tensor.shape}, expected (3, H, W) uint8 and "
                           f"{len(LETTERBOX_FIELDS)} letterbox fields")
    vals = {k: (float(v) if k.startswith("scale") else int(v)) for k, v in zip(LETTERBOX_FIELDS, raw, strict=True)}
    return tensor, Letterbox(**vals, in_h=tensor.shape[1], in_w=tensor.shape[2])


def load_outputs(npz_path: str | Path) -> tuple[str, np.ndarray, list[np.ndarray]] | None:
    """-> (model file name, (3, H, W) tensor, outputs in contract order), or None for a capture without outputs."""
    try:
        with np.load(npz_path) as z:
            if "model" not in z.files:
                return None
            n = sum(k.startswith("out_") for k in z.files)
            model, tensor, outputs = str(z["model"]), z["tensor"], [z[f"out_{i}"] for i in range(n)]
    except (OSError, ValueError, KeyError) as e:
        raise CaptureError(f"{npz_path}: not a capture file ({type(e).__name__}); re-capture with "
                           "`python -m deploy run --capture DIR`") from None
    return model, tensor[0] if tensor.ndim == 4 else tensor, outputs


def capture_frames(folder: str | Path) -> list[Path]:
    """The frames of a capture folder that have their tensor beside them, sorted by id."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CaptureError(f"{folder}: no such capture folder")
    frames = [p for p in sorted(folder.glob("*.png")) if p.with_suffix(".npz").is_file()]
    if not frames:
        raise CaptureError(f"{folder}: no <id>.png + <id>.npz pairs; capture with `python -m deploy run --capture`")
    return frames


def captured_preprocess(frames: list[Path]):
    """A preprocess function for the gate's deployed cells: frame -> the tensor the device captured for it.

    Frames are matched by content (the gate reads the same PNG files), so the function needs no ids.
    """
    table = {}
    for p in frames:
        try:
            key = read_image(p).tobytes()
        except ImageReadError as e:
            raise CaptureError(str(e)) from None
        table[hash(key)] = p.with_suffix(".npz")

    def fn(img: np.ndarray, spec=None) -> tuple[np.ndarray, Letterbox]:
        npz = table.get(hash(img.tobytes()))
        if npz is None:
            raise CaptureError("a frame has no captured tensor; the capture folder changed during the gate")
        return load_capture(npz)

    return fn
