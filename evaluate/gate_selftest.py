"""python -m evaluate.gate_selftest [--out runs/gate-selftest] [--runs 1]

Proves the gate blames the right stage. Trains a small detector and segmenter on generated data, exports
them, then runs the gate on the clean pipeline and on injected faults:
  preprocessing: RGB/BGR swap; C-style integer scale in the letterbox (a downscale becomes 1:1 and the
                 frame is cropped); nearest instead of bilinear resizing; letterbox padding at the
                 top-left instead of centred (the device still reports a centred letterbox);
  quantization:  INT8 calibrated on blank mid-grey frames; a detection head quantized with nothing excluded:
                 output convolutions and the box decode in INT8, the class logits on the box coordinates'
                 8-bit scale (what a fused box+score output tensor gets: the classic all-zero-confidence
                 collapse; our separate logits/boxes outputs and float decode are what avoid it); the shipped
                 INT8 file with its weights rounded to 3 bits. The gate's weights/activations split must name
                 the activations for the first two and the weights for the third;
  runtime:       (same INT8 file and input tensors, against exact QDQ semantics) a saturating INT8 kernel,
                 emulated through the --runtime hook by clipping every quantized activation to 7 bits; real
                 AVX2 kernels: the file quantized the saturating way (8-bit dense-conv weights, made for VNNI)
                 and run by ONNX Runtime's u8s8 AVX2 kernels, natively on an AVX2 machine, under
                 `qemu -cpu Haswell` elsewhere (skipped, and said so, where neither can run); benign: the
                 outputs perturbed by a fixed tiny noise; the frames re-encoded as JPEG at quality 95 (a drop
                 the size of the set's noise, which the gate's bootstrap intervals must not blame).
The clean pipeline and the benign cases must pass and each fault must be blamed on exactly its stage, for
each model it applies to, with the same verdicts on every run. Exit code 0 when all hold, 1 otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import onnx

from deploy.errors import EdgeVisionError
from deploy.preprocess import Letterbox, PreprocessSpec, compute_letterbox, preprocess, read_image
from deploy.runtime import OrtModel
from train.run_dir import RunDir

SCENARIOS = {  # name -> (stage the gate must blame, models it applies to)
    "clean": ("none", ("detector", "segmenter")),
    "rgb_bgr_swap": ("preprocessing", ("detector", "segmenter")),
    "integer_scale": ("preprocessing", ("detector", "segmenter")),
    "nearest_resize": ("preprocessing", ("detector", "segmenter")),
    "top_left_padding": ("preprocessing", ("detector", "segmenter")),
    "blank_calibration": ("quantization", ("detector", "segmenter")),
    "nothing_excluded": ("quantization", ("detector",)),  # a detection-head fault
    "three_bit_weights": ("quantization", ("detector", "segmenter")),
    "saturating_int8": ("runtime", ("detector", "segmenter")),
    "avx2_kernels": ("runtime", ("detector", "segmenter")),
    "tiny_output_noise": ("none", ("detector", "segmenter")),
    "jpeg_q95": ("none", ("detector", "segmenter")),  # benign: a drop within the noise of the set
}
QUANT_PART = {"blank_calibration": "activations", "nothing_excluded": "activations", "three_bit_weights": "weights"}
RUNTIME_FAULTS = {name: f"evaluate.gate_selftest:{name}" for name in ("saturating_int8", "tiny_output_noise")}
FAULT_FILES = ("blank_calibration", "nothing_excluded", "three_bit_weights", "avx2_kernels")  # fault_int8 writes


def avx2_runtime() -> tuple[str | None, str | None]:
    """(--runtime spec that runs ONNX Runtime's AVX2 u8s8 kernels here, or None and why it cannot)."""
    from deploy.emulate import unavailable
    from deploy.hardware import fingerprint

    if fingerprint()["kernel_class"] == "x86-avx2":
        return "ort", None
    why = unavailable("x86-avx2")
    return (None, why) if why else ("qemu:x86-avx2", None)


def swap_channels(img: np.ndarray, spec: PreprocessSpec):
    other = "BGR" if spec.channel_order == "RGB" else "RGB"
    return preprocess(img, dataclasses.replace(spec, channel_order=other))


def integer_scale(img: np.ndarray, spec: PreprocessSpec):
    h, w = img.shape[:2]
    H, W = spec.input_size
    s = max(1, min(H // h, W // w))  # the bug: int / int
    lb = compute_letterbox((h, w), spec)  # what the device believes it did
    big = cv2.resize(img, (w * s, h * s)) if s > 1 else img
    canvas = np.full((H, W, 3), spec.pad_value, np.uint8)
    y0, x0 = max(0, (big.shape[0] - H) // 2), max(0, (big.shape[1] - W) // 2)
    crop = big[y0 : y0 + H, x0 : x0 + W]
    canvas[: crop.shape[0], : crop.shape[1]] = crop
    if spec.channel_order == "RGB":
        canvas = cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(canvas.transpose(2, 0, 1)), lb


def nearest_resize(img: np.ndarray, spec: PreprocessSpec):
    return preprocess(img, dataclasses.replace(spec, interpolation="nearest"))


def top_left_padding(img: np.ndarray, spec: PreprocessSpec):
    t, lb = preprocess(img, spec)
    inner = t[:, lb.pad_y : lb.pad_y + lb.new_h, lb.pad_x : lb.pad_x + lb.new_w]
    out = np.full_like(t, spec.pad_value)
    out[:, : lb.new_h, : lb.new_w] = inner
    return out, Letterbox(**dataclasses.asdict(lb))  # still reports the centred placement


def jpeg_q95(img: np.ndarray, spec: PreprocessSpec):
    """Benign: the frame re-encoded as JPEG at quality 95 (a camera's compression) before the same preprocessing.
    Its small drop is within the noise of the set and must not be blamed."""
    ok, data = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return preprocess(cv2.imdecode(data, cv2.IMREAD_COLOR), spec)


PREPROCESS_FAULTS = {"jpeg_q95": jpeg_q95, "rgb_bgr_swap": swap_channels, "integer_scale": integer_scale,
                     "nearest_resize": nearest_resize, "top_left_padding": top_left_padding}


def _ort_runner(model: onnx.ModelProto, name: str):
    """An ONNX Runtime runner for a model rewritten in memory (the file on disk is not touched)."""
    path = Path(tempfile.mkdtemp(prefix="gate-selftest-")) / name
    onnx.save(model, path)
    return OrtModel(path, threads=1).infer


def saturating_int8(model_path: Path):
    """The INT8 file on a runtime whose kernels saturate: every quantized activation clipped to 0..127."""
    model = onnx.load(model_path)
    g = model.graph
    nodes = []
    for n in g.node:
        nodes.append(n)
        if n.op_type == "QuantizeLinear":
            out = n.output[0]
            n.output[0] = out + "_unclipped"
            g.initializer.extend([onnx.numpy_helper.from_array(np.array(0, np.uint8), out + "_lo"),
                                  onnx.numpy_helper.from_array(np.array(127, np.uint8), out + "_hi")])
            nodes.append(onnx.helper.make_node("Clip", [n.output[0], out + "_lo", out + "_hi"], [out],
                                               name=out + "_clip"))
    del g.node[:]
    g.node.extend(nodes)
    return _ort_runner(model, Path(model_path).name)


def tiny_output_noise(model_path: Path):
    """The reference runtime with its outputs perturbed by a fixed noise 60 dB below them (benign)."""
    model = OrtModel(model_path, threads=1)
    rng = np.random.default_rng(0)

    def run(x):
        return [o + (1e-3 * o.std() * rng.standard_normal(o.shape)).astype(o.dtype) for o in model.infer(x)]

    return run


def prepare(config: Path, out: Path, fresh: bool = False) -> Path:
    """Data, training and export for the self-test config; reused by later runs unless `fresh`."""
    from datasets.synthetic import prepare_dataset
    from export.pipeline import export_run
    from train.config import load_config
    from train.loop import train_run

    run = out / "run"
    if fresh:
        shutil.rmtree(run, ignore_errors=True)
    if (RunDir.of(run).export / "manifest.json").is_file():
        return run
    prepare_dataset(config)
    train_run(load_config(config), RunDir.of(run))
    export_run(run)
    return run


def fault_int8(run: Path, task: str, scenario: str, work: Path) -> Path:
    from export.onnx_export import contract_from_checkpoint
    from export.quantize import quantize_int8
    from train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(RunDir.of(run).checkpoint(task))
    fp32 = RunDir.of(run).model(task)
    out = work / f"{task}.{scenario}.int8.onnx"
    contract = contract_from_checkpoint(ckpt)
    if scenario == "three_bit_weights":  # the shipped file with every conv weight rounded to 8 of its 256 levels
        # (at 4 bits the self-test detector lost no more than INT8's own noise: a fault must have a real effect)
        model = onnx.load(RunDir.of(run).model(task, "int8"))
        for w in [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4]:
            q = onnx.numpy_helper.to_array(w).astype(np.int16)
            w.CopyFrom(onnx.numpy_helper.from_array(np.clip(np.round(q / 32) * 32, -128, 127).astype(np.int8), w.name))
        onnx.save(model, out)
        return out
    if scenario == "avx2_kernels":  # full-range weights: what a VNNI-only target ships
        quantize_int8(fp32, out, contract, _calib(ckpt), "percentile", target="cpu", kernels="x86-avx512vnni")
    elif scenario == "blank_calibration":  # every activation range comes from a flat frame
        # mid-grey, not white or black: a saturated frame still drives the activations to their extremes,
        # so on a weak segmenter white calibration cost only 2.2 thin-IoU points (grey: 19)
        blank = work / "blank.png"
        cv2.imwrite(str(blank), np.full((240, 320, 3), 128, np.uint8))
        quantize_int8(fp32, out, contract, [blank] * 8, "minmax", target="cpu")
    else:  # nothing_excluded: output convs and the decode in int8, logits on the box coordinates' 8-bit scale
        calib = _calib(ckpt)
        box_max = max(float(OrtModel(fp32).infer(preprocess(read_image(p), contract.preprocess)[0][None])[1].max())
                      for p in calib[:8])
        shared = [{"scale": np.array(box_max / 255, np.float32), "zero_point": np.array(0, np.uint8)}]
        quantize_int8(fp32, out, contract, calib, "minmax", exclude=[], target="cpu", float_decode=False,
                      overrides={"cls_logits": shared, "boxes": shared})
    return out


def _calib(ckpt: dict) -> list[Path]:
    from export.pipeline import training_images
    from export.quantize import sample_paths

    return sample_paths(training_images(ckpt), 64)


def run_scenarios(run: Path, work: Path, gate_config: Path) -> dict:
    """Each scenario through the gate with the shipped config's limits (blame reads its attribution checks)."""
    from evaluate.gate import blame, gate_model
    from evaluate.gate_config import load_gate_config

    limits = load_gate_config(gate_config)

    work.mkdir(parents=True, exist_ok=True)
    verdicts = {}
    avx2, why = avx2_runtime()
    for scenario, (expected, tasks) in SCENARIOS.items():
        if scenario == "avx2_kernels" and avx2 is None:
            print(f"  {scenario:<18} skipped: {why}", flush=True)
            continue
        for task in tasks:
            fn = PREPROCESS_FAULTS.get(scenario)
            int8 = fault_int8(run, task, scenario, work) if scenario in FAULT_FILES else None
            runtime = avx2 if scenario == "avx2_kernels" else RUNTIME_FAULTS.get(scenario)
            r = gate_model(task, run, limits.limits(task), deployed_fn=fn, int8_path=int8,
                           evidence_dir=work / scenario, runtime=runtime)
            got = blame(r)
            part = r["evidence"]["quantization_split"]["guilty"]
            verdicts[f"{scenario}/{task}"] = {
                "expected": expected, "blamed": got,
                "ok": got == expected and QUANT_PART.get(scenario, part) == part,
                "quantization": round(r["deltas"]["quantization"], 4),
                "preprocessing": round(r["deltas"]["preprocessing"], 4),
                "runtime": round(r["evidence"]["runtime"]["drop"], 4),  # the judged part: beyond integer rounding
                "quantization_split": {k: (round(v, 4) if isinstance(v, float) else v)
                                       for k, v in r["evidence"]["quantization_split"].items()
                                       if k in ("weights", "activations", "interaction", "guilty")},
                "runtime_sqnr": round(min(r["evidence"]["runtime"]["output_sqnr_db"].values()), 1),
                "input_psnr": round(r["evidence"]["input_tensor"]["min_psnr"], 1)}
            v = verdicts[f"{scenario}/{task}"]
            sqnr = f" (output SQNR {v['runtime_sqnr']:.1f} dB)"
            if expected == "quantization":
                qs = v["quantization_split"]
                sqnr += f" [weights {qs['weights']:+.4f} activations {qs['activations']:+.4f}: {qs['guilty']}]"
            print(f"  {scenario:<18} {task:<9} quant {v['quantization']:+.4f}  preproc {v['preprocessing']:+.4f}  "
                  f"runtime {v['runtime']:+.4f}{sqnr}  input PSNR {v['input_psnr']:5.1f} dB  blamed {got:<14} "
                  f"expected {expected:<14} "
                  f"{'ok' if v['ok'] else 'WRONG'}", flush=True)
    return verdicts


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evaluate.gate_selftest", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/gate-selftest.yaml")
    p.add_argument("--out", default="runs/gate-selftest")
    p.add_argument("--gate-config", default="configs/gate.yaml", help="the gate config whose limits are proven")
    p.add_argument("--runs", type=int, default=1, help="repeat the scenarios; verdicts must be identical")
    p.add_argument("--fresh", action="store_true", help="retrain and re-export instead of reusing --out's models")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    out = Path(args.out)
    try:
        run = prepare(Path(args.config), out, args.fresh)
    except EdgeVisionError as e:
        print(f"gate self-test: could not prepare the models: {e}", file=sys.stderr)
        return 2
    results = []
    for i in range(args.runs):
        print(f"gate self-test, run {i + 1}/{args.runs}:", flush=True)
        results.append(run_scenarios(run, out / "scenarios", Path(args.gate_config)))
    blamed = [{k: v["blamed"] for k, v in r.items()} for r in results]
    stable = all(b == blamed[0] for b in blamed)
    ok = stable and all(v["ok"] for v in results[0].values())
    (out / "selftest.json").write_text(json.dumps({"ok": ok, "stable": stable, "runs": results}, indent=2))
    wrong = [k for k, v in results[0].items() if not v["ok"]]
    detail = ("" if stable else ", verdicts differ between runs") + (": wrong " + ", ".join(wrong) if wrong else "")
    print(f"gate self-test: {'PASS' if ok else 'FAIL'} ({len(results[0]) - len(wrong)}/{len(results[0])} "
          f"verdicts right{detail})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
