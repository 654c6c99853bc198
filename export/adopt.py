"""python -m export.adopt --onnx best.onnx --data data.yaml [--input-size H [W]] [--out runs/<name>]

Brings a detector trained elsewhere into the pipeline: an Ultralytics detection ONNX (YOLOv8 / YOLO11 raw head
(1, 4 + C, N), or YOLO26 end-to-end (1, 300, 6)) gets a uint8 input (Cast and x/255 prepended, so devices feed
bytes as they do ours) and our contract in its metadata: letterbox with pad 114, RGB, its class names and its
postprocess family (deploy.contract.FAMILIES). Writes runs/<name>/export/detector.onnx and
runs/<name>/detector/adopted.json, the record export, bench and gate read where a trained model has its
checkpoint; then `python -m export --run runs/<name>` (INT8 with the same calibration and budget loop),
`evaluate.bench`, `evaluate.gate` and `deploy run` work on it unchanged.

`--data` is the Ultralytics data.yaml the model was trained with (its train and val images calibrate and
score the model), or one of our dataset configs. Ultralytics is never imported: its ONNX file is plain ONNX.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from datasets.coco import read_split
from datasets.config import DatasetConfig, DatasetError, load_dataset_config, parse_dataset_config, read_yaml
from deploy.atomic import write_atomic
from deploy.contract import FAMILIES, Contract
from deploy.errors import EdgeVisionError
from deploy.preprocess import ImageReadError, PreprocessSpec
from export.onnx_export import INPUT_NAME, save_atomic, write_contract
from train.checkpoint import ADOPTED_FORMAT, CheckpointError
from train.run_dir import RunDir

TASK = "detector"  # Ultralytics segmentation, pose and OBB heads have other outputs: not adopted
POSTPROCESS = {"conf_thres": 0.25, "iou_thres": 0.7, "max_det": 300}  # Ultralytics' predict defaults
PARITY_TOL = 1e-5  # max |source - adopted| relative to the output's range: the same x/255, so ~0


class AdoptError(EdgeVisionError, ValueError):
    """A model or dataset that cannot be adopted (the message names the file and the fix)."""


def load_source(path: Path) -> onnx.ModelProto:
    try:
        model = onnx.load(path)
    except FileNotFoundError:
        raise AdoptError(f"{path}: no such file; pass the ONNX file Ultralytics exported (`yolo export "
                         "format=onnx`)") from None
    except Exception as e:  # protobuf decode errors from a truncated or foreign file
        raise AdoptError(f"{path}: not an ONNX file ({type(e).__name__}); export it again with `yolo export "
                         "format=onnx`") from None
    if len(model.graph.input) != 1 or len(model.graph.output) != 1:
        raise AdoptError(f"{path}: {len(model.graph.input)} inputs and {len(model.graph.output)} outputs; a YOLO "
                         "detection ONNX has one of each (segmentation and pose models are not adopted)")
    return model


def dims(value: onnx.ValueInfoProto) -> list[int | str]:
    """A graph input's or output's shape: ints, or the name of a dynamic axis."""
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in value.type.tensor_type.shape.dim]


def family_of(model: onnx.ModelProto, num_classes: int, source: Path) -> str:
    """"yolo" for a raw head (B, 4 + C, N), "yolo-e2e" for end-to-end rows (B, K, 6)."""
    shape = dims(model.graph.output[0])
    if len(shape) == 3 and shape[2] == 6:
        return "yolo-e2e"
    if len(shape) == 3 and shape[1] == 4 + num_classes:
        return "yolo"
    raise AdoptError(f"{source}: output shape {shape} is neither a YOLO raw head (1, 4 + {num_classes} classes, N) "
                     "nor YOLO26 end-to-end rows (1, K, 6); is --data the dataset this model was trained on?")


def input_size(model: onnx.ModelProto, requested: list[int] | None, source: Path) -> tuple[int, int]:
    """(H, W): the graph's own when static (a different --input-size is refused), else --input-size."""
    shape = dims(model.graph.input[0])
    if len(shape) != 4 or isinstance(shape[1], int) and shape[1] != 3:
        raise AdoptError(f"{source}: input shape {shape}, a YOLO detector takes (B, 3, H, W)")
    if model.graph.input[0].type.tensor_type.elem_type != TensorProto.FLOAT:
        raise AdoptError(f"{source}: input is not float32 x/255 (already adopted, or not an Ultralytics export?); "
                         "pass the file `yolo export format=onnx` wrote")
    want = None if requested is None else (requested[0], requested[-1])
    static = tuple(shape[2:]) if all(isinstance(d, int) and d > 0 for d in shape[2:]) else None
    if static and want and static != want:
        raise AdoptError(f"{source}: exported for {static[0]}x{static[1]} input, --input-size asks "
                         f"{want[0]}x{want[1]}; export it at that size (`yolo export imgsz=...`) or drop the flag")
    if not (static or want):
        raise AdoptError(f"{source}: input size is dynamic ({shape}); pass --input-size H [W]")
    return static or want


def ultralytics_names(model: onnx.ModelProto) -> list[str] | None:
    """The class names Ultralytics writes into the ONNX metadata ("{0: 'person', ...}"), if present."""
    raw = next((p.value for p in model.metadata_props if p.key == "names"), None)
    try:
        names = ast.literal_eval(raw) if raw else None
    except (ValueError, SyntaxError):
        return None
    return [str(names[k]) for k in sorted(names)] if isinstance(names, dict) else None


def yolo_dataset(data: Path) -> dict | None:
    """For an Ultralytics data.yaml, the dataset config that reads its train and val splits in the YOLO layout
    (datasets.formats); None for one of our dataset configs."""
    raw = read_yaml(data, AdoptError, "--data file")
    if isinstance(raw, dict) and "root" in raw:
        return None
    if not (isinstance(raw, dict) and "names" in raw and "train" in raw and "val" in raw):
        raise AdoptError(f"{data}: neither an Ultralytics data.yaml (names, train, val) nor an edge-vision "
                         "dataset config (name, root, detection)")
    split = {"format": "yolo", "annotations": str(data.resolve())}
    return {"name": data.resolve().parent.name, "root": str(data.resolve().parent),
            "detection": {"train": split, "val": split}}


def class_names(dataset: DatasetConfig, model: onnx.ModelProto, source: Path) -> list[str]:
    """The dataset's class names (its val split read and validated now, not at export); refused when the
    model's own metadata names other classes."""
    names = list(read_split(dataset, "val").class_names)
    own = ultralytics_names(model)
    if own is not None and own != names:
        raise AdoptError(f"{source}: trained on {len(own)} classes {own}, --data has {len(names)} {names}; pass "
                         "the data.yaml the model was trained with")
    return names


def with_uint8_input(model: onnx.ModelProto, size: tuple[int, int]) -> onnx.ModelProto:
    """(B, 3, H, W) float x/255 input -> uint8 `images` input, Cast then Div by 255 in front (a pattern
    export.quantize feeds straight into the CPU INT8 file); the one output renamed output0."""
    g = model.graph
    old, unit = g.input[0], "images_unit"
    batch = old.type.tensor_type.shape.dim[0]
    for n in g.node:
        n.input[:] = [unit if t == old.name else t for t in n.input]
    out_old, out_new = g.output[0].name, FAMILIES["yolo"][0]
    for n in g.node:
        n.input[:] = [out_new if t == out_old else t for t in n.input]
        n.output[:] = [out_new if t == out_old else t for t in n.output]
    g.output[0].name = out_new
    shape = [batch.dim_value if batch.HasField("dim_value") else (batch.dim_param or "batch"), 3, *size]
    # x / 255 as Ultralytics computes it (a Div, not a Mul by 1/255: bit-identical inputs, so even tied
    # scores in an end-to-end top-K keep their order)
    g.initializer.append(numpy_helper.from_array(np.array(255, np.float32), "scale_255"))
    g.node.insert(0, helper.make_node("Div", ["images_float", "scale_255"], [unit], name="input_scale"))
    g.node.insert(0, helper.make_node("Cast", [INPUT_NAME], ["images_float"], name="input_cast",
                                      to=TensorProto.FLOAT))
    g.input.remove(old)
    g.input.append(helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, shape))
    return model


def output_shapes(model: onnx.ModelProto, size: tuple[int, int]) -> dict[str, list]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = sess.run(None, {INPUT_NAME: np.zeros((1, 3, *size), np.uint8)})[0]
    dynamic = not isinstance(sess.get_inputs()[0].shape[0], int)
    return {FAMILIES["yolo"][0]: ["batch" if dynamic and i == 0 else d for i, d in enumerate(out.shape)]}


def parity(source: onnx.ModelProto, adopted: onnx.ModelProto, size: tuple[int, int]) -> float:
    """Max relative difference between the source fed x/255 (as Ultralytics feeds it) and the adopted file fed
    the bytes x, on a fixed random frame."""
    x = np.random.default_rng(0).integers(0, 256, (1, 3, *size), dtype=np.uint8)
    src = ort.InferenceSession(source.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = src.run(None, {src.get_inputs()[0].name: x.astype(np.float32) / 255})[0]
    got = ort.InferenceSession(adopted.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {INPUT_NAME: x})[0]
    return float(np.abs(ref - got).max() / (np.abs(ref).max() + 1e-6))


def record(source: Path, data_cfg: Path, contract: Contract, parity_err: float) -> dict:
    """What export, bench and gate read in place of a checkpoint (train.checkpoint.load_model_record)."""
    return {"format": ADOPTED_FORMAT, "task": TASK, "source": str(source.resolve()),
            "config": {"data": str(data_cfg), "export": {}}, "preprocess": asdict(contract.preprocess),
            "class_names": contract.class_names, "config_hash": contract.config_hash,
            "postprocess": contract.postprocess, "parity_max_rel_err": parity_err}


def read_data(data: Path, run: RunDir, model: onnx.ModelProto, source: Path) -> tuple[dict | None, Path, list[str]]:
    """--data -> (the dataset config to write for an Ultralytics data.yaml or None, the dataset config path the
    record names, the class names)."""
    wrapped = yolo_dataset(data)
    data_cfg = run.dataset_config.resolve() if wrapped else data.resolve()
    dataset = parse_dataset_config(wrapped, data_cfg) if wrapped else load_dataset_config(data_cfg)
    return wrapped, data_cfg, class_names(dataset, model, source)


def convert(model: onnx.ModelProto, source: Path, size: tuple[int, int], names: list[str],
            conf_thres: float) -> tuple[onnx.ModelProto, Contract, float]:
    """The source graph -> (the adopted graph with its contract, the contract, parity with the source)."""
    family = family_of(model, len(names), source)
    original = onnx.ModelProto()
    original.CopyFrom(model)
    model = with_uint8_input(model, size)
    spec = PreprocessSpec(input_size=size, channel_order="RGB", resize="letterbox", interpolation="linear",
                          pad_value=114)  # Ultralytics' LetterBox (centred, 114) on RGB
    digest = hashlib.sha256(source.read_bytes() + spec.to_json().encode() + json.dumps(names).encode())
    contract = Contract(TASK, spec, names, digest.hexdigest()[:16], FAMILIES[family],
                        postprocess={**POSTPROCESS, "conf_thres": conf_thres, "family": family},
                        output_shapes=output_shapes(model, size))
    write_contract(model, contract)
    onnx.checker.check_model(model)
    err = parity(original, model, size)
    if err > PARITY_TOL:
        raise AdoptError(f"{source}: the adopted file differs from the source by {err:.1e} (> {PARITY_TOL}); "
                         "the graph does not take x/255 as its input")
    return model, contract, err


def adopt(source: Path, data: Path, out: Path, requested_size: list[int] | None = None,
          conf_thres: float = POSTPROCESS["conf_thres"]) -> Path:
    """Write out/export/detector.onnx and out/detector/adopted.json (and out/data.yaml for an Ultralytics
    data.yaml) after every check has passed -> the adopted ONNX file."""
    run = RunDir.of(out)
    if run.checkpoint(TASK).is_file() or run.export.is_dir():
        raise AdoptError(f"{out}: holds a detector already (trained or exported); adopt into a new --out, or "
                         f"remove {run.export} to replace it")
    model = load_source(source)
    size = input_size(model, requested_size, source)
    wrapped, data_cfg, names = read_data(data, run, model, source)
    model, contract, err = convert(model, source, size, names, conf_thres)
    run.export.mkdir(parents=True)
    if wrapped:
        write_atomic(run.dataset_config, json.dumps(wrapped, indent=2))  # JSON is YAML
    save_atomic(model, run.model(TASK))
    run.task_dir(TASK).mkdir(parents=True, exist_ok=True)
    write_atomic(run.adopted(TASK), json.dumps(record(source, data_cfg, contract, err), indent=2))
    print(f"adopted {source} as a {contract.family} detector: {size[0]}x{size[1]} uint8 input, {len(names)} "
          f"classes, parity {err:.1e} -> {run.model(TASK)}; next: python -m export --run {out}", flush=True)
    return run.model(TASK)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export.adopt", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--onnx", required=True, type=Path, help="the Ultralytics detection ONNX (yolo export format=onnx)")
    p.add_argument("--data", required=True, type=Path,
                   help="its Ultralytics data.yaml, or an edge-vision dataset config")
    p.add_argument("--input-size", type=int, nargs="+", default=None, metavar="N",
                   help="H [W]: needed only when the ONNX input size is dynamic")
    p.add_argument("--out", type=Path, default=None, help="run directory (default runs/<onnx file stem>)")
    p.add_argument("--conf-thres", type=float, default=POSTPROCESS["conf_thres"],
                   help="score threshold in the contract (the runtime's and the gate's); Ultralytics' default")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.input_size is not None and not (1 <= len(args.input_size) <= 2 and min(args.input_size) > 0):
        print(f"error: --input-size {args.input_size}: one or two positive sizes (H [W])", file=sys.stderr)
        return 2
    try:
        adopt(args.onnx, args.data, args.out or Path("runs") / args.onnx.stem, args.input_size, args.conf_thres)
        return 0
    except (AdoptError, CheckpointError, DatasetError, ImageReadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
