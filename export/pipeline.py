"""The export of one run as a library: fp32 ONNX with parity, INT8 for ONNX Runtime CPUs and TensorRT within
the accuracy budget, .ort files for phones, and the manifest. `python -m export` and the gate self-test call
`export_run`."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch

from datasets.config import load_dataset_config
from datasets.metrics import PRIMARY, EvalSet
from deploy.atomic import write_atomic
from deploy.contract import TASKS, Contract
from deploy.emulate import PROFILES, EmulatedModel, unavailable
from deploy.hardware import fingerprint
from deploy.preprocess import PreprocessSpec, preprocess, read_image
from deploy.runtime import OrtModel
from export.check_trt import check_model
from export.fp16 import export_fp16
from export.onnx_export import contract_from_checkpoint, export_onnx, parity
from export.ort_mobile import convert_to_ort, required_ops
from export.quantize import file_mb, quantize_int8, resolve_kernels, sample_paths
from export.sensitivity import sensitivity, to_markdown
from train.checkpoint import CheckpointError, load_checkpoint, load_model_record, model_from_checkpoint
from train.config import ExportConfig
from train.data import build_dataset, image_paths
from train.run_dir import INT8_VARIANTS, VARIANT_FILES, RunDir

PARITY_TOL = 1e-4  # max |torch - ORT| relative to the output's range
FP32_TARGETS = "onnxruntime-cpu,tensorrt-fp32,tensorrt-10-fp16"  # the manifest's targets of the fp32 file


def training_images(ckpt: dict) -> list[Path]:
    data = load_dataset_config(ckpt["config"]["data"])
    return image_paths(build_dataset(ckpt["task"], data, "train", PreprocessSpec.from_dict(ckpt["preprocess"])))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export_settings(ckpt: dict) -> ExportConfig:
    """The checkpoint's export settings; keys added since it was written take their defaults."""
    raw = ckpt["config"].get("export", {})
    return ExportConfig(**{k: v for k, v in raw.items() if k in ExportConfig.__dataclass_fields__})


def val_scorer(ckpt: dict) -> Callable[..., float]:
    """(model file, exact=False, profile=None) -> its primary val metric, through its own contract's pre- and
    postprocessing; `exact`: the INT8 file's QDQ graph as written (deploy.runtime), not this CPU's integer
    kernels; `profile`: another x86 class's kernels under QEMU (deploy.emulate)."""
    ev, metric = EvalSet.from_checkpoint(ckpt, "val"), PRIMARY[ckpt["task"]]

    def score(path: Path, exact: bool = False, profile: str | None = None) -> float:
        m = OrtModel(path, exact=exact)
        runner = EmulatedModel(path, profile) if profile else m
        try:
            return ev.score(runner.infer, lambda img: preprocess(img, m.contract.preprocess),
                            m.contract.postprocess)[metric]
        finally:
            if profile:
                runner.close()
    return score


def quantize_within_budget(ckpt: dict, fp32: Path, int8: Path, contract, calib: list[Path], method: str,
                           target: str, score: Callable[..., float], kernels: str) -> tuple[list[str], dict]:
    """Quantize; while the val accuracy drop under exact QDQ semantics (`score`: val_scorer) exceeds the budget,
    keep the most sensitive convs in float.

    The loop measures quantization error only: a loss that the integer kernels of a CPU add is not helped by
    float convs. This machine's kernels are scored once at the end, and a loss of theirs beyond the budget is
    reported with its fix (a `--target` whose weights cannot saturate them). Starts from quantize_int8's default
    exclusions for the target and adds, per round, the two Conv nodes fed by the tensors with the lowest own-Q/DQ
    SQNR. Writes <int8 file>.sensitivity.md beside the model.
    """
    ex = export_settings(ckpt)
    quantize = lambda exclude=None: quantize_int8(fp32, int8, contract, calib, method, exclude=exclude,  # noqa: E731
                                                  target=target, kernels=kernels)
    kept = quantize()
    metric = PRIMARY[ckpt["task"]]
    ref = score(fp32)
    rows = sensitivity(fp32, int8, calib[: ex.sensitivity_images], contract.preprocess)
    convs = {n.name for n in onnx.load(fp32).graph.node if n.op_type == "Conv"}
    rounds, best = 0, None
    while True:
        got = score(int8, exact=True)
        if best is None or got > best[0]:
            best = (got, kept)
        if ref - got <= ex.int8_max_drop or rounds >= ex.int8_max_rounds:
            break
        more = [c for r in rows for c in r["consumers"] if c in convs and c not in kept][:2]
        if not more:
            break
        rounds += 1
        print(f"  int8 ({target}) {metric} {got:.4f} (exact) vs fp32 {ref:.4f}: keeping {more} in float", flush=True)
        kept = quantize(kept + more)
    if best[1] != kept:  # a float exclusion can also lower accuracy: ship the best set that was tried
        got, kept = best
        print(f"  int8 ({target}): keeping the best tried ({metric} {got:.4f}, {len(kept)} float convs)", flush=True)
        kept = quantize(kept)
    here = fingerprint()["kernel_class"]
    scored = {here: score(int8)}  # this CPU's kernels, and the target's where QEMU can run them here
    if target == "cpu" and kernels in PROFILES and kernels != here and unavailable(kernels) is None:
        scored[kernels] = score(int8, profile=kernels)
    for kclass, value in scored.items() if target == "cpu" else ():  # TensorRT's file is not for CPUs
        if ref - value > ex.int8_max_drop and value < got - ex.int8_max_drop / 2:
            print(f"  int8 ({target}): {kclass} kernels score {metric} {value:.4f} against {got:.4f} under exact QDQ "
                  f"semantics; the file was made for {kernels} kernels: export with --target portable for CPUs "
                  "like this one", flush=True)
    (int8.parent / f"{int8.name.removesuffix('.onnx')}.sensitivity.md").write_text(
        f"# {int8.name} INT8 sensitivity (qdq_loss_debug, {ex.sensitivity_images} images)\n\n"
        f"val {metric}: fp32 {ref:.4f}, int8 {got:.4f} under exact QDQ semantics (drop {ref - got:+.4f}, budget "
        f"{ex.int8_max_drop}), " + ", ".join(f"{v:.4f} under {k} kernels" for k, v in scored.items())
        + f"; made for {kernels} kernels; {rounds} exclusion round(s); float convs: {', '.join(kept)}\n\n"
        + to_markdown(rows))
    return kept, {"metric": metric, "fp32": ref, "int8": got, "drop": ref - got, "rounds": rounds,
                  "kernels": scored}


def export_fp32(task: str, ckpt_path: Path, out_dir: Path, dynamic_batch: bool) -> tuple[dict, Path, Contract,
                                                                                         list[np.ndarray], dict]:
    """The checkpoint's fp32 ONNX, parity-checked against torch -> (checkpoint, file, contract, the parity
    inputs, its manifest entry)."""
    ckpt = load_checkpoint(ckpt_path)
    model = model_from_checkpoint(ckpt)
    ex = export_settings(ckpt)
    dynamic_batch = dynamic_batch or ex.dynamic_batch
    spec = PreprocessSpec.from_dict(ckpt["preprocess"])
    H, W = spec.input_size
    rng = np.random.default_rng(0)
    rand = rng.integers(0, 256, (1, 3, H, W), dtype=np.uint8)
    with torch.no_grad():
        outs = model(torch.from_numpy(rand))
    outs = outs if isinstance(outs, tuple) else (outs,)
    contract = contract_from_checkpoint(ckpt)
    shapes = {n: ["batch" if dynamic_batch and i == 0 else d for i, d in enumerate(o.shape)]
              for n, o in zip(contract.outputs, outs, strict=True)}
    contract = dataclasses.replace(contract, output_shapes=shapes)
    fp32 = export_onnx(model, contract, out_dir / f"{task}.onnx", opset=ex.opset, dynamic_batch=dynamic_batch)
    real, _ = preprocess(read_image(training_images(ckpt)[0]), spec)
    inputs = [rand, real[None]]
    if dynamic_batch:  # a second batch size through the same file
        inputs.append(rng.integers(0, 256, (3, 3, H, W), dtype=np.uint8))
    err = parity(model, fp32, inputs)
    if err > PARITY_TOL:
        fp32.unlink()  # a file that disagrees with its checkpoint must not be picked up downstream
        raise RuntimeError(f"{fp32}: ONNX Runtime differs from torch by {err:.2e} (> {PARITY_TOL}); not exported")
    return ckpt, fp32, contract, inputs, fp32_entry(fp32, contract, err, checkpoint=str(ckpt_path))


def fp32_entry(fp32: Path, contract: Contract, parity_err: float, **origin: str) -> dict:
    """The fp32 file's manifest entry; `origin`: checkpoint= or adopted= (the source file)."""
    return {"model": contract.task, "config_hash": contract.config_hash, **origin, "file": fp32.name,
            "precision": "fp32", "target": FP32_TARGETS, "size_bytes": fp32.stat().st_size, "sha256": sha256(fp32),
            "parity_max_rel_err": parity_err}


def adopted_fp32(task: str, run: RunDir) -> tuple[dict, Path, Contract, list[np.ndarray], dict]:
    """The fp32 ONNX `python -m export.adopt` wrote, checked against its record; the same tuple as export_fp32."""
    record = load_model_record(run, task)
    fp32 = run.model(task)
    contract = OrtModel(fp32).contract
    if contract.config_hash != record["config_hash"]:
        raise CheckpointError(f"{fp32}: not the model adopted into {run.adopted(task)} (config hash differs); run "
                              "`python -m export.adopt` again")
    H, W = contract.preprocess.input_size
    real, _ = preprocess(read_image(training_images(record)[0]), contract.preprocess)
    inputs = [np.random.default_rng(0).integers(0, 256, (1, 3, H, W), dtype=np.uint8), real[None]]
    # parity: against the source file, as export.adopt measured it
    entry = fp32_entry(fp32, contract, record["parity_max_rel_err"], adopted=record["source"])
    return record, fp32, contract, inputs, entry


def export_derived(ckpt: dict, fp32: Path, contract: Contract, inputs: list[np.ndarray], calib_images: int | None,
                   origin: dict, kernels: str = "portable") -> tuple[list[dict], list[str]]:
    """INT8 for ONNX Runtime CPUs and TensorRT within the accuracy budget, and the TensorRT 11 FP16 files, from
    the fp32 ONNX -> (manifest entries, report lines). `origin`: the keys every entry repeats; `kernels`: the
    kernel class the CPU file is made for (export.quantize.resolve_kernels)."""
    ex = export_settings(ckpt)
    calib = sample_paths(training_images(ckpt), calib_images or ex.calib_images)
    method = ex.calib_method
    task, out_dir = ckpt["task"], fp32.parent
    entries, report = [], []
    score = val_scorer(ckpt)
    for target, manifest_target in (("cpu", "onnxruntime-cpu"), ("tensorrt", "tensorrt-qdq")):
        int8 = out_dir / Path(VARIANT_FILES[INT8_VARIANTS[target]].format(task=task)).name
        kept, acc = quantize_within_budget(ckpt, fp32, int8, contract, calib, method, target, score, kernels)
        entry = {**origin, "file": int8.name, "precision": "int8", "target": manifest_target,
                 "kernels": kernels if target == "cpu" else "tensorrt",
                 "size_bytes": int8.stat().st_size, "sha256": sha256(int8), "calibration_images": len(calib),
                 "calibration_method": method, "float_nodes": kept, "val_accuracy": acc,
                 "sensitivity": f"{int8.name.removesuffix('.onnx')}.sensitivity.md"}
        note = ""
        if target == "tensorrt":
            entry["tensorrt_lint"] = [str(f) for f in check_model(onnx.load(int8))]
            note = f", TensorRT lint: {'clean' if not entry['tensorrt_lint'] else 'see manifest.json'}"
        entries.append(entry)
        report.append(f"{int8.name} {file_mb(int8):.2f} MB ({entry['size_bytes'] / fp32.stat().st_size:.0%}, "
                      f"{acc['metric']} {acc['fp32']:.4f} -> {acc['int8']:.4f} exact, "
                      f"{', '.join(f'{v:.4f} {k}' for k, v in acc['kernels'].items())}{note})")
    # ranked rows (YOLO26 end-to-end): FP16 rounding reorders near-tied rows, so accuracy, not tensors
    ranked = (score, ex.int8_max_drop) if contract.ranked else None
    for src in (fp32, out_dir / Path(VARIANT_FILES[INT8_VARIANTS["tensorrt"]].format(task=task)).name):
        half, half_err = export_fp16(src, inputs, fp32, ranked)
        key = "val_drop" if ranked else "parity_rel_l2"
        entries.append({**origin, "file": half.name, "precision": "int8" if "int8" in src.name else "fp16",
                        "target": "tensorrt-11", "size_bytes": half.stat().st_size, "sha256": sha256(half),
                        "source": src.name, key: half_err})
        report.append(f"{half.name} {file_mb(half):.2f} MB (TensorRT 11, "
                      f"{'val drop' if ranked else 'relative L2 error'} {half_err:.1e})")
    report[-1] += f" [{len(calib)} calibration images, {method}]"
    return entries, report


def export_one(task: str, run: RunDir, checkpoint: str, calib_images: int | None,
               dynamic_batch: bool = False, kernels: str = "portable") -> list[dict]:
    """One task's files: its fp32 ONNX (exported from the checkpoint, or the adopted one) and what derives from it."""
    if run.checkpoint(task, checkpoint).is_file() or not run.adopted(task).is_file():
        ckpt, fp32, contract, inputs, entry = export_fp32(task, run.checkpoint(task, checkpoint), run.export,
                                                          dynamic_batch)
        head = f"{task}: fp32 {file_mb(fp32):.2f} MB (parity {entry['parity_max_rel_err']:.1e})"
    else:
        ckpt, fp32, contract, inputs, entry = adopted_fp32(task, run)
        head = f"{task}: fp32 {file_mb(fp32):.2f} MB (adopted from {entry['adopted']})"
    origin = {k: entry[k] for k in ("model", "config_hash", "checkpoint", "adopted") if k in entry}
    entries, report = export_derived(ckpt, fp32, contract, inputs, calib_images, origin, kernels)
    print("; ".join([head, *report]), flush=True)
    return [entry, *entries]


def export_run(run: str | Path, checkpoint: str = "best", calib_images: int | None = None,
               dynamic_batch: bool = False, target: str = "portable") -> list[dict]:
    """Export every task trained in `run`; writes <run>/export/ and its manifest.json -> the manifest entries.
    `target`: the CPU kernels the INT8 CPU files are made for ("portable", "auto" or a kernel class)."""
    kernels = resolve_kernels(target)
    rd = RunDir.of(run)
    rd.export.mkdir(parents=True, exist_ok=True)
    entries = []
    for task in [t for t in TASKS if rd.checkpoint(t, checkpoint).is_file() or rd.adopted(t).is_file()]:
        entries += export_one(task, rd, checkpoint, calib_images, dynamic_batch, kernels)
    if not entries:
        raise CheckpointError(f"{run}: no detector/ or segmenter/ checkpoint; run `make train` (or "
                              "`python -m export.adopt` for a model trained elsewhere) first")
    mobile, ops_config = export_mobile(entries, rd.export)
    entries += mobile
    write_atomic(rd.export / "manifest.json", json.dumps(
        {"files": entries, "ort_mobile_ops_config": str(ops_config.relative_to(rd.export)),
         "hardware": fingerprint()}, indent=2))
    return entries


def export_mobile(entries: list[dict], out_dir: Path) -> tuple[list[dict], Path]:
    """.ort files for phones from the ONNX Runtime CPU files (the TensorRT file is not for phones)."""
    phone = [e for e in entries if "onnxruntime-cpu" in e["target"]]
    ort_files, ops_config = convert_to_ort([out_dir / e["file"] for e in phone], out_dir / "mobile")
    ops = required_ops(ops_config)
    print(f"ORT mobile: {len(ort_files)} .ort files in {out_dir / 'mobile'}, reduced build needs {len(ops)} "
          f"ops ({', '.join(ops)}); see {ops_config.name}", flush=True)
    return [{**{k: src[k] for k in ("model", "config_hash", "precision")}, "file": f"mobile/{f.name}",
             "target": "onnxruntime-mobile", "size_bytes": f.stat().st_size, "sha256": sha256(f)}
            for src, f in zip(phone, ort_files, strict=True)], ops_config
