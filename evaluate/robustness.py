"""python -m evaluate.robustness --run runs/demo [--model fp32|int8|int8-trt|torch] [--split test] [--limit N]

Robustness of each trained model to camera, lighting and weather changes:
  - a corruption suite applied to the clean split, each corruption at severities 1-5 (fixed parameters,
    seeded per image, so two runs give the same figures);
  - the dataset's domain-shifted splits (`<split>_<shift>`, e.g. test_fog), scored as they are.
Reports, per model, the metric at every corruption x severity, the mean over severities and the relative
drop vs the clean split (detector: mAP@[.5:.95] and mAP@.5; segmenter: mIoU and thin IoU), as
<run>/robustness/robustness.json, report.md and a heat map per model (<model>_robustness.png).
The model is the exported ONNX variant (`--model fp32`, default; int8, int8-trt) or the torch checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import albumentations as A
import numpy as np

from datasets.augment import Augment
from datasets.config import DatasetError, load_dataset_config
from datasets.metrics import METRICS as ALL_METRICS
from datasets.metrics import THIN_EXTRA_METRICS, EvalSet
from deploy.contract import ContractError
from deploy.preprocess import ImageReadError, PreprocessSpec, preprocess
from deploy.runtime import ModelLoadError, OrtModel
from evaluate.plots import plot_robustness
from train.checkpoint import CheckpointError, load_checkpoint
from train.run_dir import RunDir

SEVERITIES = (1, 2, 3, 4, 5)
# thin_metrics=False: no threshold sweep, no skeletons
METRICS = {t: tuple(m for m in ms if m not in THIN_EXTRA_METRICS) for t, ms in ALL_METRICS.items()}
VARIANTS = ("fp32", "int8", "int8-trt")  # the --model names that pick an exported file (train.run_dir)


def _haze(img: np.ndarray, t: float) -> np.ndarray:
    """Fog as atmospheric scattering: blend towards a bright airlight, denser towards the top (far away)."""
    depth = np.linspace(1.0, 0.4, img.shape[0], dtype=np.float32)[:, None, None] * (1 - t)
    return (img * (1 - depth) + 215 * depth).clip(0, 255).astype(np.uint8)


def corruption(name: str, severity: int) -> Callable[[np.ndarray, int], np.ndarray]:
    """(BGR image, seed) -> corrupted BGR image. Parameters grow with severity (1 mild .. 5 severe)."""
    i = severity - 1
    if name == "haze":
        return lambda img, seed: _haze(img, (0.85, 0.72, 0.6, 0.48, 0.36)[i])
    if name == "gaussian_noise":
        t = A.GaussNoise(std_range=((0.02, 0.04, 0.06, 0.09, 0.13)[i],) * 2, p=1)
    elif name == "motion_blur":
        t = A.MotionBlur(blur_limit=((3, 5, 7, 9, 11)[i],) * 2, p=1)
    elif name == "defocus_blur":
        t = A.Defocus(radius=((1, 2, 3, 4, 5)[i],) * 2, alias_blur=(0.1, 0.1), p=1)
    elif name == "jpeg":
        t = A.ImageCompression(quality_range=((80, 60, 40, 25, 12)[i],) * 2, p=1)
    elif name == "low_light":
        g, b = (130, 160, 190, 220, 260)[i], (-0.1, -0.2, -0.3, -0.4, -0.5)[i]
        t = A.Sequential([A.RandomGamma(gamma_limit=(g, g), p=1),
                          A.RandomBrightnessContrast(brightness_limit=(b, b), contrast_limit=(0, 0), p=1)], p=1)
    elif name == "low_contrast":
        c = (-0.2, -0.35, -0.5, -0.65, -0.8)[i]
        t = A.RandomBrightnessContrast(brightness_limit=(0, 0), contrast_limit=(c, c), p=1)
    elif name == "colour_cast":  # warm: a white balance set for daylight under low sun or sodium lamps
        v = (10, 20, 30, 40, 55)[i]
        t = A.RGBShift(r_shift_limit=(v, v), g_shift_limit=(v // 4, v // 4), b_shift_limit=(-v, -v), p=1)
    else:
        raise ValueError(f"unknown corruption {name!r} (one of {', '.join(CORRUPTIONS)})")
    aug = Augment([t], "segmenter")  # BGR in and out, seeded per call

    def apply(img: np.ndarray, seed: int) -> np.ndarray:
        aug.set_random_seed(seed)
        return aug(image=img)["image"]

    return apply


CORRUPTIONS = ("gaussian_noise", "motion_blur", "defocus_blur", "jpeg", "low_light", "low_contrast", "haze",
               "colour_cast")


def image_seed(img: np.ndarray, salt: str) -> int:
    """A seed from the image's own pixels: the same image gets the same noise in every run and variant."""
    return zlib.crc32(np.ascontiguousarray(img[::16, ::16]).tobytes() + salt.encode())


def build_runner(task: str, run: Path, model: str):
    """-> (runner, postprocess settings, preprocessing spec) for an ONNX variant or the torch checkpoint."""
    if model == "torch":
        from train.checkpoint import model_from_checkpoint, torch_runner

        ckpt = load_checkpoint(RunDir.of(run).checkpoint(task))
        return torch_runner(model_from_checkpoint(ckpt)), ckpt.get("postprocess") or {}, \
            PreprocessSpec.from_dict(ckpt["preprocess"])
    path = RunDir.of(run).model(task, model) if model in VARIANTS else Path(model)
    m = OrtModel(path)
    if m.task != task:
        raise ContractError(f"{path}: a {m.task}, not a {task}")
    return m.infer, m.contract.postprocess, m.contract.preprocess


def score(ev: EvalSet, runner, post: dict, prep) -> dict:
    r = ev.score(runner, prep, post, thin_metrics=False)
    return {k: round(float(r[k]), 4) for k in METRICS[ev.task]}


def shifted_splits(data, task: str, split: str) -> list[str]:
    names = data.detection if task == "detector" else (data.segmentation.splits if data.segmentation else {})
    return sorted(s for s in (names or {}) if s.startswith(f"{split}_"))


def drop(value: dict, clean: dict) -> dict:
    return {k: round((clean[k] - v) / clean[k], 4) if clean[k] else None for k, v in value.items()}


def evaluate_model(task: str, run: Path, model: str, split: str, limit: int | None,
                   corruptions=CORRUPTIONS, severities=SEVERITIES, log=print) -> dict:
    ckpt = load_checkpoint(RunDir.of(run).checkpoint(task))
    data = load_dataset_config(ckpt["config"]["data"])
    runner, post, spec = build_runner(task, run, model)
    ev = EvalSet(task, data, split, limit)
    plain = lambda img: preprocess(img, spec)  # noqa: E731
    clean = score(ev, runner, post, plain)
    log(f"{task} ({model}, {split}, {len(ev)} images): clean {clean}")
    out = {"metrics": list(METRICS[task]), "images": len(ev), "clean": clean, "corruptions": {}, "shifted": {}}
    for name in corruptions:
        row = {}
        for s in severities:
            fn = corruption(name, s)
            salt = f"{name}/{s}"
            row[str(s)] = score(ev, runner, post, lambda img, fn=fn, salt=salt: plain(fn(img, image_seed(img, salt))))
        row["mean"] = {k: round(float(np.mean([row[str(s)][k] for s in severities])), 4) for k in clean}
        row["drop"] = drop(row["mean"], clean)
        out["corruptions"][name] = row
        log(f"  {name:<19} " + "  ".join(f"{row[str(s)][METRICS[task][-1]]:.3f}" for s in severities)
            + f"  mean {row['mean']}  relative drop {row['drop']}")
    for sp in shifted_splits(data, task, split):
        got = score(EvalSet(task, data, sp, limit), runner, post, plain)
        out["shifted"][sp] = {**got, "drop": drop(got, clean)}
        log(f"  split {sp:<13} {got}  relative drop {out['shifted'][sp]['drop']}")
    return out


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:+.1%}"


def to_markdown(results: dict) -> str:
    lines = [f"# Robustness: {results['run']} ({results['model']}, {results['split']} split)", ""]
    for task, r in results["models"].items():
        for metric in r["metrics"]:
            c = r["clean"][metric]
            lines += [f"## {task}: {metric} (clean {c:.4f}, {r['images']} images)", "",
                      "| corruption | " + " | ".join(f"sev {s}" for s in SEVERITIES) + " | mean | relative drop |",
                      "|---" * (len(SEVERITIES) + 3) + "|"]
            for name, row in r["corruptions"].items():
                cells = " | ".join(f"{row[str(s)][metric]:.4f}" if str(s) in row else "-" for s in SEVERITIES)
                lines.append(f"| {name} | {cells} | {row['mean'][metric]:.4f} | {_pct(row['drop'][metric])} |")
            if r["shifted"]:
                lines += ["", "| shifted split | value | relative drop |", "|---|---|---|"]
                lines += [f"| {sp} | {v[metric]:.4f} | {_pct(v['drop'][metric])} |" for sp, v in r["shifted"].items()]
            lines.append("")
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evaluate.robustness", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True)
    p.add_argument("--model", default="fp32", help="fp32 | int8 | int8-trt | torch | path to an ONNX file")
    p.add_argument("--split", default="test", help="clean split; its shifted copies are <split>_<shift>")
    p.add_argument("--limit", type=int, default=None, help="first N images of each split")
    p.add_argument("--corruptions", default=",".join(CORRUPTIONS))
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    run = Path(args.run)
    try:
        corruptions = [c for c in args.corruptions.split(",") if c]
        for c in corruptions:
            corruption(c, 1)  # unknown names fail here, before any model runs
        models = {}
        for task in RunDir.of(run).trained():
            if args.model.endswith(".onnx") and OrtModel(args.model).task != task:
                continue
            models[task] = evaluate_model(task, run, args.model, args.split, args.limit, corruptions)
        if not models:
            raise CheckpointError(f"{run}: no trained detector/ or segmenter/; run `make train` first")
    except (CheckpointError, ContractError, ModelLoadError, DatasetError, ImageReadError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    results = {"run": str(run), "model": args.model, "split": args.split, "severities": list(SEVERITIES),
               "models": models}
    out = run / "robustness"
    out.mkdir(parents=True, exist_ok=True)
    (out / "robustness.json").write_text(json.dumps(results, indent=2))
    (out / "report.md").write_text(to_markdown(results))
    for task, r in models.items():
        plot_robustness(task, r, out / f"{task}_robustness.png")
    print(f"robustness: {out / 'report.md'}, {out / 'robustness.json'}, "
          + ", ".join(f"{out / f'{k}_robustness.png'}" for k in models))
    return 0


if __name__ == "__main__":
    sys.exit(main())
