"""The gate's evidence: the 2x2 of (reference | deployed preprocessing) x (fp32 | int8), with or without labels,
and a third factor, the runtime, measured after it. INT8 in the 2x2 means exact QDQ semantics (ONNX Runtime
with no graph optimisation: DequantizeLinear -> float op -> QuantizeLinear), which no CPU changes, so the
quantization term is the quantization's own error.

  quantization  = ref/fp32 - ref/int8      same input tensors, different precision
  preprocessing = ref/fp32 - dep/fp32      same model, different input tensors
  interaction   = (ref/fp32 - dep/int8) - quantization - preprocessing
  runtime       = runtime/reference - runtime/deployed    same model file, same (deployed) input tensors,
                  exact QDQ semantics vs the deployed runtime (this machine's ONNX Runtime CPU kernels by
                  default; another ORT setting or EP, another CPU's kernels under QEMU, the .ort file, a
                  TensorRT engine, a hook, or the outputs a device recorded)
The decomposition is sequential: the 2x2 holds the runtime fixed at the reference, and the runtime term is
measured on the deployed cell's inputs, so deployed accuracy = ref/fp32 - quantization - preprocessing -
interaction - runtime exactly when the runtime's model file is the gate's INT8 file.
Without labels (frames captured in the field) the fp32 model's predictions on reference inputs are the
pseudo ground truth and every cell is scored by agreement with them, so the same attribution works on
unlabeled captures. Tensor-level evidence says *where* a drop comes from: the input-tensor difference
per image, the fp32-vs-int8 output divergence, the layers with the worst SQNR, and the worst images.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from datasets.metrics import EvalSet, PreprocessFn, Runner
from deploy.postprocess import Detections
from deploy.preprocess import read_image

CELLS = ("reference/fp32", "reference/int8", "deployed/fp32", "deployed/int8")


def predict_cells(ev: EvalSet, models: dict[str, Runner], fns: dict[str, PreprocessFn], post: dict) -> dict:
    """Predictions of the four cells: models {"fp32", "int8"} x preprocessing {"reference", "deployed"}."""
    return {c: ev.predict(models[c.split("/")[1]], fns[c.split("/")[0]], post) for c in CELLS}


def score_cells(ev: EvalSet, preds: dict, metric: str, labels: bool) -> dict[str, float]:
    """Every cell predicted (the 2x2, and the runtime pair when there is one)."""
    ref = None if labels else preds["reference/fp32"]
    return {c: float(ev.score_predictions(p, reference=ref)[metric]) for c, p in preds.items()}


def deltas(cells: dict[str, float]) -> dict[str, float]:
    q = cells["reference/fp32"] - cells["reference/int8"]
    p = cells["reference/fp32"] - cells["deployed/fp32"]
    both = cells["reference/fp32"] - cells["deployed/int8"]
    runtime = cells.get("runtime/reference", 0.0) - cells.get("runtime/deployed", 0.0)
    return {"quantization": q, "preprocessing": p, "interaction": both - q - p, "runtime": runtime}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def input_evidence(ref_fn: PreprocessFn, dep_fn: PreprocessFn, images: list[Path], n: int = 16) -> dict:
    """Reference vs deployed input tensors on the first n images: per image max |diff| and PSNR (dB)."""
    per_image = []
    for p in images[:n]:
        img = read_image(p)
        a, b = ref_fn(img)[0], dep_fn(img)[0]
        if a.shape != b.shape:
            per_image.append({"image": str(p), "max_abs": 255, "psnr": 0.0, "note": f"shape {a.shape} vs {b.shape}"})
            continue
        per_image.append({"image": str(p), "max_abs": int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max()),
                          "psnr": min(psnr(a, b), 99.0)})  # 99 dB stands for identical (JSON has no inf)
    worst = min(per_image, key=lambda r: r["psnr"])
    return {"max_abs": max(r["max_abs"] for r in per_image), "min_psnr": worst["psnr"],
            "worst_image": worst["image"], "per_image": per_image}


def match_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Ranked detection rows (1, K, 6) x1 y1 x2 y2 score class: b's rows reordered to pair with a's, each of
    a's rows (best first) taking the nearest unused row of b of its class. Near-tied scores swap places between
    two runs of the same model; compared in place, the swaps would read as noise on whole rows."""
    ra, rb = a.reshape(-1, 6).astype(np.float64), b.reshape(-1, 6).astype(np.float64)
    dist = ((ra[:, None, :5] - rb[None, :, :5]) ** 2).sum(-1)  # (K, K)
    dist[ra[:, None, 5] != rb[None, :, 5]] = np.inf
    order, free = np.empty(len(ra), np.int64), np.ones(len(rb), bool)
    for i in range(len(ra)):
        j = int(np.argmin(np.where(free, dist[i], np.inf)))
        j = j if free[j] else int(np.flatnonzero(free)[0])  # no row of its class left: the first free one
        order[i], free[j] = j, False
    return rb[order].reshape(b.shape)


def output_divergence(fp32: Runner, int8: Runner, ref_fn: PreprocessFn, images: list[Path], names: list[str],
                      n: int = 16, ranked: bool = False) -> dict:
    """SQNR (dB) of the int8 outputs against the fp32 outputs on reference inputs, per output tensor.
    `ranked`: the outputs are ranked detection rows (an adopted YOLO26, family yolo-e2e), paired by match_rows."""
    sig = {k: 0.0 for k in names}
    err = {k: 0.0 for k in names}
    for p in images[:n]:
        x = ref_fn(read_image(p))[0][None]
        for k, a, b in zip(names, fp32(x), int8(x), strict=True):
            b = match_rows(a, b) if ranked else b
            sig[k] += float(np.sum(a.astype(np.float64) ** 2))
            err[k] += float(np.sum((a.astype(np.float64) - b) ** 2))
    return {k: (99.0 if err[k] == 0 else float(10 * np.log10(max(sig[k], 1e-12) / err[k]))) for k in names}


def per_image_agreement(ev: EvalSet, reference, candidate) -> list[float]:
    """Per image: F1 of box matches (IoU >= 0.5, same class, score >= 0.3) or pixel agreement of masks."""
    if ev.task == "segmenter":
        return [float((a.mask == b.mask).mean()) for a, b in zip(reference, candidate, strict=True)]
    out = []
    for image_id in sorted(reference):
        out.append(_box_f1(reference[image_id], candidate.get(image_id)))
    return out


def _box_f1(ref: Detections, cand: Detections | None, min_score: float = 0.3) -> float:
    a = ref.boxes[ref.scores >= min_score], ref.labels[ref.scores >= min_score]
    if cand is None:
        return 1.0 if len(a[0]) == 0 else 0.0
    b = cand.boxes[cand.scores >= min_score], cand.labels[cand.scores >= min_score]
    if len(a[0]) == 0 and len(b[0]) == 0:
        return 1.0
    if len(a[0]) == 0 or len(b[0]) == 0:
        return 0.0
    lt = np.maximum(a[0][:, None, :2], b[0][None, :, :2])
    rb = np.minimum(a[0][:, None, 2:], b[0][None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    iou = inter / (area(a[0])[:, None] + area(b[0])[None] - inter + 1e-9)
    iou[a[1][:, None] != b[1][None]] = 0
    matched = int(((iou >= 0.5).any(1)).sum())
    return 2 * matched / (len(a[0]) + len(b[0]))


def save_worst(ev: EvalSet, preds: dict, out_dir: Path, k: int = 3) -> list[dict]:
    """The k images where each stage changed the fp32/reference result most, drawn side by side."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if ev.task == "detector":  # predictions are keyed by image id; per_image_agreement walks them sorted
        path_of = {r.image_id: r.path for r in ev.coco.records}
        keys = sorted(preds["reference/fp32"])
        paths = [path_of[i] for i in keys]
    else:
        keys, paths = list(range(len(ev.images))), list(ev.images)
    rows = []
    for stage, cell in (("quantization", "reference/int8"), ("preprocessing", "deployed/fp32")):
        scores = per_image_agreement(ev, preds["reference/fp32"], preds[cell])
        for rank, i in enumerate(np.argsort(scores, kind="stable")[:k]):
            if scores[i] >= 1.0:
                break
            img = read_image(paths[i])
            panel = np.concatenate([_draw(ev, img, preds["reference/fp32"][keys[i]]),
                                    _draw(ev, img, preds[cell][keys[i]])], axis=1)
            name = f"{stage}_{rank}_{Path(paths[i]).stem}.jpg"
            cv2.imwrite(str(out_dir / name), panel)
            rows.append({"stage": stage, "image": str(paths[i]), "agreement": float(scores[i]), "file": name})
    return rows


def _draw(ev: EvalSet, img: np.ndarray, pred) -> np.ndarray:
    img = img.copy()
    if ev.task == "detector":
        keep = pred.scores >= 0.3
        for b in pred.boxes[keep].astype(int):
            cv2.rectangle(img, (b[0], b[1]), (b[2], b[3]), (0, 255, 0), 1)
        return img
    colours = np.array([[0, 0, 0], [0, 0, 255], [0, 255, 255], [255, 0, 255]] * 16, np.uint8)
    overlay = colours[pred.mask % len(colours)]
    return np.where(pred.mask[..., None] > 0, (0.4 * img + 0.6 * overlay).astype(np.uint8), img)


def top_sqnr_layers(fp32_path: Path, int8_path: Path, images: list[Path], spec, k: int = 5) -> list[dict]:
    """The k activations with the lowest own-Q/DQ SQNR (qdq_loss_debug) on a few reference inputs."""
    from export.sensitivity import sensitivity  # workstation-side: onnxruntime.quantization

    rows = sensitivity(fp32_path, int8_path, images, spec)
    return [{"tensor": r["tensor"], "consumers": r["consumers"][:3], "qdq_sqnr": r["qdq_sqnr"],
             "xmodel_sqnr": r["xmodel_sqnr"]} for r in rows[:k]]
