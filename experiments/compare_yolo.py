"""python -m experiments.compare_yolo --config experiments/configs/compare-yolo.yaml --yolo .venv-peers/bin/yolo
                                  [--out runs/compare-yolo] [--models ours,yolo11n,yolo26n] [--epochs 12,40,80]

Trains our detector and Ultralytics YOLO11n and YOLO26n from scratch on the same split, input size and epoch
budget; scores all three with our pycocotools code on the same val images and the same preprocessing (our
letterbox, pad 114, RGB); times all three with the same ONNX Runtime benchmark (fp32, batch 1, 1 and 2
threads, alternating rounds); prints one table and writes <out>/results.json.

Ultralytics is AGPL-3.0: it is never imported here. It runs as a separate program, its `yolo` command from
its own virtual environment (`make compare-yolo` installs it into .venv-peers), on a copy of the split in
its YOLO txt layout written to a temporary folder. It trains with its own defaults (batch 16, optimizer,
mosaic, close_mosaic, loss) apart from the shared epochs, input size and seed.

Scoring: all three are decoded with the same settings as Ultralytics' validator (conf 0.001, IoU 0.7, at
most 300 boxes per image). Each model's folder under <out> is reused when it already holds its ONNX file
(a YOLO run takes tens of minutes on a CPU); `--fresh` retrains all.

INT8: `--int8` adds each model of ours as its INT8 CPU file (`python -m export`'s portable file) beside its
fp32 one, so the Pareto plot (<out>/pareto.png: mAP against 1- and 2-thread latency, a curve per budget) shows
both.

Presets: `--presets configs/models/detector-s.yaml,configs/models/detector-m.yaml` trains ours once per model
preset (named ours-s, ours-m: the preset file's name without `detector-`), each at the preset's own input size,
on the config's recipe; peers train at the config's input size. Each model is scored and timed at its own input.

Budgets: `--epochs 12,40,80` trains every model from scratch once per budget (<out>/<E>ep/), so a short budget is
not mistaken for a converged one; each model's validation mAP per epoch (its trainer's own) goes into
results.json and <out>/curves.png, and the table says whether its last epochs still gained. Ultralytics keeps its one
recipe at every budget; ours may train every budget but the shortest with another (`--long-recipe CONFIG`: an
experiment config on the same data and input size, e.g. with mosaic), which the setup records.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from datasets.coco import read_split
from datasets.config import read_yaml
from datasets.formats import write_yolo
from datasets.metrics import EvalSet
from deploy.errors import EdgeVisionError
from deploy.postprocess import decode_detector
from deploy.preprocess import PreprocessSpec, preprocess, read_image
from experiments.curves import flattened, is_ours, model_curve, plot_curves, plot_pareto
from experiments.peer import config_with, export_detector, fit_ours, ort_runner, time_side_by_side, write_results
from export.pipeline import export_run
from train.checkpoint import load_checkpoint
from train.config import ConfigError, ExperimentConfig, TaskConfig, build_dataclass
from train.loop import model_cost
from train.run_dir import RunDir

MODELS = ("ours", "yolo11n", "yolo26n")
FAMILY = {"ours": "edge-vision", "yolo11n": "yolo", "yolo26n": "yolo-e2e"}  # deploy.contract.FAMILIES
EVAL_POST = {"conf_thres": 0.001, "iou_thres": 0.7, "max_det": 300}  # Ultralytics' validator settings
SUMMARY = re.compile(r"summary \(fused\): .*?([\d,]+) parameters.*?([\d.]+) GFLOPs")


class PeerError(EdgeVisionError, RuntimeError):
    pass


def run_yolo(yolo: str, args: list[str], log: Path, env: dict) -> str:
    """One `yolo` command; its output goes to `log` and is returned. A failure is a PeerError naming the log."""
    with open(log, "a") as f:
        f.write(f"$ {yolo} {' '.join(args)}\n")
        f.flush()
        r = subprocess.run([yolo, *args], stdout=f, stderr=subprocess.STDOUT, env=env)
    text = log.read_text()
    if r.returncode != 0:
        raise PeerError(f"`yolo {args[0]} {args[1]}` failed (exit {r.returncode}); see {log}")
    return text


def train_peer(name: str, yolo: str, data_yaml: Path, cfg: ExperimentConfig, out: Path) -> dict:
    """Train one Ultralytics model from scratch and export it to ONNX -> {"onnx", "params", "gflops"}."""
    s, (h, w) = cfg.detector.train, cfg.detector.input_size
    out.mkdir(parents=True, exist_ok=True)
    log = out / "yolo.log"
    env = {**os.environ, "YOLO_CONFIG_DIR": str(out.resolve() / "settings"), "YOLO_OFFLINE": "1"}
    text = run_yolo(yolo, ["detect", "train", f"model={name}.yaml", f"data={data_yaml}", f"epochs={s.epochs}",
                           f"imgsz={max(h, w)}", f"seed={s.seed}", "device=cpu", "workers=2",
                           "pretrained=False", "amp=False", "plots=False", f"project={out.resolve()}", "name=train",
                           "exist_ok=True"], log, env)
    best = out / "train" / "weights" / "best.pt"
    # nms=False exports YOLO26's NMS-free one-to-one head, (1, 300, 6), as Ultralytics validates it; the
    # default would export its one-to-many head for NMS instead. YOLO11 has only the raw head, (1, 4 + C, N).
    end2end = ["nms=False"] if name.startswith("yolo26") else []
    run_yolo(yolo, ["export", f"model={best}", "format=onnx", f"imgsz={h},{w}", "opset=17", "dynamic=False", *end2end],
             log, env)
    found = SUMMARY.findall(text)
    params, gflops_640 = (int(found[-1][0].replace(",", "")), float(found[-1][1])) if found else (None, None)
    info = {"onnx": str(best.with_suffix(".onnx")), "params": params,
            # Ultralytics reports GFLOPs at 640 x 640; FLOPs scale with the pixel count
            "gflops": gflops_640 * h * w / 640**2 if gflops_640 else None}
    (out / "model.json").write_text(json.dumps(info))
    return info


def latency_peers(names: list[str], yolo: str, cfg: ExperimentConfig, out: Path) -> dict[str, dict]:
    """Ultralytics models to time beside ours, not to score: each trained one epoch on cfg's data (so its
    graph has the dataset's classes, as a trained one does) and exported -> {name: model.json + input_size}.
    A model folder already holding its ONNX is reused."""
    unknown = sorted(set(names) - set(MODELS[1:]))
    if unknown:
        raise PeerError(f"--peers: {unknown} unknown; choose from {','.join(MODELS[1:])}")
    short = with_epochs(cfg, 1)
    peers = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            info = trained(name, out, False)
            if info is None:
                if not shutil.which(yolo):
                    raise PeerError(f"{yolo}: Ultralytics' `yolo` command not found; `make peers` installs it")
                data_yaml = write_yolo({k: read_split(cfg.dataset(), k) for k in ("train", "val")}, Path(tmp) / name)
                info = train_peer(name, yolo, data_yaml, short, out / name)
            peers[name] = {**info, "input_size": list(cfg.detector.input_size)}
    return peers


def train_ours(cfg: ExperimentConfig, out: Path) -> dict:
    model, ckpt = fit_ours("detector", cfg, out / "detector")
    onnx_path, model, spec = export_detector(ckpt, out / "detector.onnx")
    params, gflops = model_cost(model, spec.input_size)
    info = {"onnx": str(onnx_path), "params": params, "gflops": gflops, "input_size": list(spec.input_size)}
    (out / "model.json").write_text(json.dumps(info))
    return info


def model_input(x: np.ndarray, model: str) -> np.ndarray:
    """uint8 (1, 3, H, W) -> what the model takes: YOLO float x/255, ours the bytes."""
    return x if is_ours(model) else x.astype(np.float32) * (1.0 / 255.0)


def score(name: str, path: str, ev: EvalSet, spec: PreprocessSpec) -> dict:
    """mAP through pycocotools: the same images, letterbox and scoring for every model."""
    run = ort_runner(path, 2)
    family = FAMILY["ours" if is_ours(name) else name]
    preds = {}
    for rec in ev.coco.records:
        tensor, lb = preprocess(read_image(rec.path), spec)
        outs = run(model_input(tensor[None], name))
        preds[rec.image_id] = decode_detector(outs, lb, family, **EVAL_POST)
    return ev.score_predictions(preds)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.compare_yolo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="experiments/configs/compare-yolo.yaml")
    p.add_argument("--yolo", default=".venv-peers/bin/yolo", help="Ultralytics' `yolo` command (its own venv)")
    p.add_argument("--out", default="runs/compare-yolo")
    p.add_argument("--models", default=",".join(MODELS),
                   help="comma-separated subset to train (when not there yet), score and time")
    p.add_argument("--repeats", type=int, default=200, help="timed runs per model and thread count")
    p.add_argument("--fresh", action="store_true", help="retrain every model even when its ONNX is there")
    p.add_argument("--long-recipe", default=None, metavar="CONFIG",
                   help="experiment config whose detector ours trains with at every budget but the shortest "
                        "(same data and input size); default: --config's at every budget")
    p.add_argument("--presets", default=None, metavar="YAML,...",
                   help="comma-separated model presets (configs/models/detector-*.yaml): ours is trained once per "
                        "preset, named ours-<preset>; default: the config's own model, named ours")
    p.add_argument("--int8", action="store_true",
                   help="also score and time each model of ours as its INT8 CPU file (python -m export's), named "
                        "<model>-int8")
    p.add_argument("--epochs", default=None,
                   help="comma-separated epoch budgets, each trained from scratch (e.g. 12,40,80); default: the "
                        "config's. Each budget's models go to <out>/<E>ep/")
    return p


def trained(name: str, out: Path, fresh: bool, config_hash: str | None = None) -> dict | None:
    """A model folder's model.json when its ONNX is there (and --fresh was not given); for ours only when its
    checkpoint was trained from the config hashed `config_hash` (an edited config retrains, is not reused)."""
    meta = out / name / "model.json"
    if fresh or not meta.is_file():
        return None
    info = json.loads(meta.read_text())
    if config_hash is not None:
        best = out / name / "detector" / "best.pt"
        if not best.is_file() or load_checkpoint(best).get("config_hash") != config_hash:
            return None
    return info if Path(info["onnx"]).is_file() else None


def ours_configs(ours_cfg: ExperimentConfig, presets: str | None) -> dict[str, ExperimentConfig]:
    """Ours' model name -> its config: the recipe's own model as `ours`, or one `ours-<tag>` per preset file
    (its model and input size under the recipe's other keys, as a `preset:` line in the config would give)."""
    if not presets:
        return {"ours": ours_cfg}
    out = {}
    for path in (Path(p) for p in presets.split(",") if p):
        cfg = copy.deepcopy(ours_cfg)
        preset = build_dataclass(TaskConfig, read_yaml(path, ConfigError, "model preset"), str(path))
        cfg.detector.preset, cfg.detector.model, cfg.detector.input_size = str(path), preset.model, preset.input_size
        out[f"ours-{path.stem.removeprefix('detector-')}"] = cfg
    return out


def int8_of(folder: Path) -> dict:
    """Ours' INT8 CPU file, made by the export stage into <folder>/export/ (again when the checkpoint is newer)
    -> a model entry like model.json's, scored and timed as one more model."""
    rd = RunDir.of(folder)
    path = rd.model("detector", "int8")
    if not path.is_file() or path.stat().st_mtime < rd.checkpoint("detector").stat().st_mtime:
        export_run(folder)
    return {**json.loads((folder / "model.json").read_text()), "onnx": str(path)}


def train_all(args, cfg: ExperimentConfig, ours_cfg: ExperimentConfig, out: Path) -> dict[str, dict]:
    names = [m for m in args.models.split(",") if m]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        raise PeerError(f"--models: {unknown} unknown; choose from {','.join(MODELS)}")
    peers = [m for m in names if m != "ours"]
    if any(trained(m, out, args.fresh) is None for m in peers) and not shutil.which(args.yolo):
        raise PeerError(f"{args.yolo}: Ultralytics' `yolo` command not found; run `make compare-yolo`, which "
                        "installs it into .venv-peers")
    models = {}
    if "ours" in names:
        for name, c in ours_configs(ours_cfg, args.presets).items():
            models[name] = trained(name, out, args.fresh, c.hash()) or train_ours(c, out / name)
            if args.int8:
                models[f"{name}-int8"] = int8_of(out / name)
    with tempfile.TemporaryDirectory() as tmp:
        data_yaml = None
        for name in peers:
            info = trained(name, out, args.fresh)
            if info is None:
                data_yaml = data_yaml or write_yolo({k: read_split(cfg.dataset(), k) for k in ("train", "val")},
                                                    Path(tmp))
                print(f"{name}: training {cfg.detector.train.epochs} epochs (log: {out / name / 'yolo.log'})",
                      flush=True)
                info = train_peer(name, args.yolo, data_yaml, cfg, out / name)
            models[name] = info
    return models


def measure(models: dict[str, dict], cfg: ExperimentConfig, repeats: int) -> dict:
    """Score every model at its own input size (ours' presets may differ; peers take the config's) and time
    them all side by side."""
    ev = EvalSet("detector", cfg.dataset(), "val")
    specs = {n: dataclasses.replace(cfg.detector.preprocess_spec(), input_size=tuple(m["input_size"]))
             if m.get("input_size") else cfg.detector.preprocess_spec() for n, m in models.items()}
    image = read_image(ev.images[0])
    # each model's input is prepared outside the timed call: the network alone is timed
    times = time_side_by_side({n: (m["onnx"], model_input(preprocess(image, specs[n])[0][None], n))
                               for n, m in models.items()}, repeats)
    results = {}
    for name, m in models.items():
        results[name] = {**{k: v for k, v in score(name, m["onnx"], ev, specs[name]).items() if k in ("map", "map50")},
                         "latency_ms": times[name], "params": m["params"], "gflops": m["gflops"],
                         "input_size": list(specs[name].input_size)}
    return results


def print_table(results: dict, curves: dict) -> None:
    print(f"\n{'model':<8} {'mAP':>6} {'mAP50':>6} {'best val':>9} {'flat':>5} {'ORT 1t ms':>10} {'ORT 2t ms':>10} "
          f"{'params M':>9} {'GFLOPs':>7}")
    for name, r in results.items():
        params = f"{r['params'] / 1e6:.2f}" if r["params"] else "-"
        gflops = f"{r['gflops']:.2f}" if r["gflops"] else "-"
        flat = {True: "yes", False: "no", None: "-"}[flattened(curves.get(name, []))]
        print(f"{name:<8} {r['map']:>6.3f} {r['map50']:>6.3f} {num(r.get('best_val_map')):>9} {flat:>5} "
              f"{r['latency_ms']['1t']:>10.2f} {r['latency_ms']['2t']:>10.2f} {params:>9} {gflops:>7}")
    peers = [n for n in results if not is_ours(n)]
    for name in (n for n in results if is_ours(n) and peers):
        best = max(peers, key=lambda n: results[n]["map"])
        fast = min(peers, key=lambda n: results[n]["latency_ms"]["1t"])
        o = results[name]
        print(f"{name} - {best} (best mAP): {o['map'] - results[best]['map']:+.3f} mAP; {name} / {fast} (fastest) "
              f"1-thread latency: {o['latency_ms']['1t'] / results[fast]['latency_ms']['1t']:.2f}")


def num(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def budgets(arg: str | None, cfg: ExperimentConfig) -> list[int]:
    if arg is None:
        return [cfg.detector.train.epochs]
    try:
        values = sorted({int(v) for v in arg.split(",") if v.strip()})
    except ValueError:
        values = []
    if not values or values[0] < 1:
        raise PeerError(f"--epochs {arg}: give comma-separated positive epoch counts, e.g. 12,40")
    return values


def long_recipe(path: str | None, cfg: ExperimentConfig) -> ExperimentConfig:
    """The config ours trains the longer budgets with: `path`'s, which must train on cfg's data and input."""
    if path is None:
        return cfg
    long = config_with(path, "detector")
    if long.data != cfg.data or long.detector.input_size != cfg.detector.input_size:
        raise PeerError(f"--long-recipe {path}: trains on {long.data} at {long.detector.input_size}, the "
                        f"comparison on {cfg.data} at {cfg.detector.input_size}; give it the same data and input_size")
    return long


def with_epochs(cfg: ExperimentConfig, epochs: int) -> ExperimentConfig:
    cfg = copy.deepcopy(cfg)
    cfg.detector.train.epochs = epochs
    return cfg


def run_budget(args, cfg: ExperimentConfig, ours_cfg: ExperimentConfig, epochs: int,
               out: Path) -> tuple[dict, dict]:
    """Train (or reuse), score and time every model at one epoch budget -> (results, curves)."""
    cfg, ours_cfg = with_epochs(cfg, epochs), with_epochs(ours_cfg, epochs)
    models = train_all(args, cfg, ours_cfg, out)
    results = measure(models, cfg, args.repeats)
    curves = {name: model_curve(name, out / name) for name in models}
    for name, curve in curves.items():
        results[name]["best_val_map"] = max((m for _, m in curve), default=None)
    return results, curves


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        cfg = config_with(args.config, "detector")
        out = Path(args.out)
        runs = budgets(args.epochs, cfg)
        long = long_recipe(args.long_recipe, cfg)
        per_budget, curves, recipes = {}, {}, {}
        for epochs in runs:
            folder = out if args.epochs is None else out / f"{epochs}ep"
            ours_cfg = cfg if epochs == runs[0] else long
            recipes[str(epochs)] = args.config if ours_cfg is cfg else args.long_recipe
            per_budget[str(epochs)], curves[str(epochs)] = run_budget(args, cfg, ours_cfg, epochs, folder)
    except EdgeVisionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    s = cfg.detector.train
    setup = {"config": args.config, "ours_recipe": recipes, "epochs": runs, "batch_size_ours": s.batch_size,
             "input_size": cfg.detector.input_size, "split": "val", "scoring": EVAL_POST,
             **({"presets": args.presets.split(",")} if args.presets else {})}
    results = per_budget[str(runs[0])] if len(runs) == 1 else {"budgets": per_budget}
    write_results(out, "compare-yolo", {**results, "curves": curves}, setup)
    plot_curves(curves, out / "curves.png", f"{cfg.dataset().name}: val mAP per epoch")
    plot_pareto(per_budget, out / "pareto.png", f"{cfg.dataset().name}: mAP@[.5:.95] against ONNX Runtime latency")
    for epochs in runs:
        print(f"\n{epochs} epochs:", end="")
        print_table(per_budget[str(epochs)], curves[str(epochs)])
    print(f"results: {out / 'results.json'}; curves: {out / 'curves.png'}; Pareto plot: {out / 'pareto.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
