"""python -m datasets check --config CONFIG [--out DIR]   (make check-data)

Per split, before any training: images, boxes, classes, images without labels, boxes per class, box sizes
against the detector's strides (8, 16, 32; the longer box side after the letterbox to the experiment's
detector input size, 320x320 for a bare dataset config), duplicate and unreadable images; for segmentation,
images and the share of pixels per class. Prints one table per task and the problems found, and writes
DIR/check.png (boxes per class and the box-size histogram). Exit 0 clean or warnings only, 1 when a problem
would break training (unreadable images, a split without images, a detection train split without boxes, a
split the reader refuses), 2 when the config cannot be read.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import cv2
import numpy as np

from datasets.coco import read_split
from datasets.config import DatasetConfig, DatasetError, load_dataset_config, read_yaml
from datasets.masks import read_mask, value_lut
from datasets.synthetic import dataset_config_path

SIZE_BINS = (0, 8, 16, 32, 64, 128, 1e9)  # px after the letterbox; below 8 is under the finest stride
SIZE_LABELS = ("<8", "8-16", "16-32", "32-64", "64-128", ">=128")


def detector_input_size(config: Path) -> tuple[int, int]:
    raw = read_yaml(config, DatasetError, "config")
    det = raw.get("detector") if isinstance(raw, dict) else None
    if isinstance(det, dict) and det.get("input_size"):
        return tuple(det["input_size"])
    if isinstance(det, dict) and det.get("preset"):
        preset = read_yaml(Path(det["preset"]), DatasetError, "model preset")
        return tuple(preset.get("input_size", (320, 320)))
    return 320, 320


def scan_images(paths: list[Path]) -> tuple[list[Path], list[tuple[Path, Path]]]:
    """(unreadable images, (duplicate, first seen) pairs by content)."""
    bad, dupes, seen = [], [], {}
    for p in paths:
        data = p.read_bytes() if p.is_file() else b""
        if not data or cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is None:
            bad.append(p)
            continue
        digest = hashlib.sha1(data).hexdigest()
        if digest in seen:
            dupes.append((p, seen[digest]))
        seen.setdefault(digest, p)
    return bad, dupes


def check_detection(data: DatasetConfig, split: str, input_hw: tuple[int, int]) -> tuple[dict, list[str], list[str]]:
    """(row of the table, errors, warnings) for one detection split."""
    coco = read_split(data, split)
    recs = coco.records
    sizes, per_class = [], np.zeros(len(coco.class_names), int)
    for r in recs:
        scale = min(input_hw[0] / r.height, input_hw[1] / r.width)
        keep = ~r.crowd
        sizes += list((r.boxes[keep][:, 2:] - r.boxes[keep][:, :2]).max(1) * scale)
        per_class += np.bincount(r.labels[keep], minlength=len(per_class))
    bad, dupes = scan_images([r.path for r in recs])
    hist = np.histogram(sizes, SIZE_BINS)[0]
    row = {"split": split, "images": len(recs), "boxes": int(per_class.sum()), "classes": len(coco.class_names),
           "no_labels": sum(int((~r.crowd).sum() == 0) for r in recs), "unreadable": len(bad),
           "duplicates": len(dupes), "per_class": dict(zip(coco.class_names, per_class.tolist(), strict=True)),
           "sizes": dict(zip(SIZE_LABELS, hist.tolist(), strict=True))}
    errors = [f"{p}: unreadable image" for p in bad[:5]]
    if not recs:
        errors.append(f"detection {split}: no images")
    elif split == "train" and row["boxes"] == 0:
        errors.append(f"detection {split}: no boxes to learn from")
    warnings = [f"{a.name} duplicates {b.name}" for a, b in dupes[:5]]
    absent = [n for n, k in row["per_class"].items() if k == 0]
    if absent:
        warnings.append(f"{len(absent)} class(es) without boxes in {split}: {', '.join(absent[:8])}"
                        + (", ..." if len(absent) > 8 else ""))
    if sizes and hist[0] > 0.2 * len(sizes):
        warnings.append(f"{hist[0]} of {len(sizes)} {split} boxes are under 8 px at {input_hw[0]}x{input_hw[1]}: "
                        "below the finest stride; a larger input size would see them")
    return row, errors, warnings


def check_segmentation(data: DatasetConfig, split: str) -> tuple[dict, list[str], list[str]]:
    seg = data.segmentation
    pairs = data.segmentation_pairs(split)
    counts = np.zeros(len(seg.classes), np.int64)
    empty, lut = 0, value_lut(seg)
    for _, mask_path in pairs:
        m = read_mask(mask_path, lut)
        c = np.bincount(m[m < len(seg.classes)].ravel(), minlength=len(seg.classes))
        counts += c
        empty += int(c[1:].sum() == 0)
    bad, dupes = scan_images([p for p, _ in pairs])
    share = counts / max(int(counts.sum()), 1)
    row = {"split": split, "images": len(pairs), "no_foreground": empty, "unreadable": len(bad),
           "duplicates": len(dupes), "pixel_share": {n: round(float(s), 5) for n, s in zip(seg.classes, share,
                                                                                            strict=True)}}
    errors = [f"{p}: unreadable image" for p in bad[:5]] + ([f"segmentation {split}: no images"] if not pairs else [])
    return row, errors, [f"{a.name} duplicates {b.name}" for a, b in dupes[:5]]


def print_table(task: str, rows: list[dict]) -> None:
    keys = [k for k in rows[0] if not isinstance(rows[0][k], dict)]
    widths = [max(len(k), *(len(str(r[k])) for r in rows)) for k in keys]
    print(f"{task}:")
    for line in [dict(zip(keys, keys, strict=True)), *rows]:
        print("  " + " | ".join(f"{line[k]!s:>{w}}" for k, w in zip(keys, widths, strict=True)))
    for r in rows:
        for k in (k for k in r if isinstance(r[k], dict)):
            print(f"  {r['split']} {k}: " + ", ".join(f"{n} {v}" for n, v in r[k].items()))


def plot(rows: list[dict], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for r in rows:
        axes[0].bar([f"{n}\n{r['split']}" for n in r["per_class"]], list(r["per_class"].values()), alpha=0.7)
        axes[1].plot(SIZE_LABELS, list(r["sizes"].values()), marker="o", label=r["split"])
    axes[0].set_title("boxes per class")
    axes[1].set_title("box size after letterbox (longer side, px) vs strides 8/16/32")
    axes[1].legend()
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "check.png", dpi=90)
    plt.close(fig)
    return out / "check.png"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m datasets check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="experiment config (with `data:`) or dataset config")
    p.add_argument("--out", default=None, help="folder for check.png (default: runs/check-data/<dataset name>)")
    return p


def run_checks(config: Path, data: DatasetConfig) -> tuple[dict[str, list[dict]], list[str], list[str]]:
    rows: dict[str, list[dict]] = {"detection": [], "segmentation": []}
    errors, warnings = [], []
    seg_splits = (["train", "val"] if data.segmentation and data.segmentation.random_split else
                  list(data.segmentation.splits) if data.segmentation else [])
    input_hw = detector_input_size(config)
    jobs = [("detection", s, lambda s=s: check_detection(data, s, input_hw)) for s in data.detection]
    jobs += [("segmentation", s, lambda s=s: check_segmentation(data, s)) for s in seg_splits]
    for task, split, job in jobs:
        try:
            row, e, w = job()
        except DatasetError as e:  # the reader refuses the split: training would stop here too
            errors.append(f"{task} {split}: {e}")
            continue
        rows[task].append(row)
        errors += e
        warnings += w
    return rows, errors, warnings


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        data = load_dataset_config(dataset_config_path(args.config))
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows, errors, warnings = run_checks(Path(args.config), data)
    for task, task_rows in rows.items():
        if task_rows:
            print_table(task, task_rows)
    if rows["detection"]:
        print(f"distributions: {plot(rows['detection'], Path(args.out or f'runs/check-data/{data.name}'))}")
    for w in warnings:
        print(f"warning: {w}")
    for e in errors:
        print(f"problem: {e}")
    print(f"dataset {data.name}: {len(errors)} problem(s) that would break training, {len(warnings)} warning(s)")
    return 1 if errors else 0
