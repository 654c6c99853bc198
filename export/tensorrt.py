"""python -m export.tensorrt --run runs/demo [--precision int8 fp16] [--cache DIR]

Builds TensorRT engines from the exported ONNX files on this machine, cached per device, TensorRT version
and build recipe (deploy.trt_cache), and prints the equivalent trtexec command and the precision each
engine's layers really got. TensorRT 10: INT8+FP16 from the QDQ model and FP16 from the fp32 model, with the
builder flags; TensorRT 11: the same from their FP16 siblings (export/fp16.py). Without TensorRT or a GPU it
prints the commands and exits 2; a model TensorRT cannot parse or build exits 2 with one line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import onnx

from deploy.trt_cache import cached, cached_engine, engine_path
from deploy.trt_engine import (
    BuildRecipe,
    TensorRTError,
    TensorRTUnavailable,
    device_info,
    engine_source,
    trt_major,
    trtexec_command,
)
from train.run_dir import RunDir

SOURCES = {"int8": "int8-trt", "fp16": "fp32", "fp32": "fp32"}  # engine precision -> the ONNX variant it is built from


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export.tensorrt", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True)
    p.add_argument("--precision", nargs="+", default=["int8", "fp16"], choices=sorted(SOURCES))
    p.add_argument("--cache", default=None, help="engine cache folder (default: <run>/export/engines)")
    p.add_argument("--workspace-mb", type=int, default=1024)
    p.add_argument("--max-batch", type=int, default=8, help="dynamic-batch ONNX: the largest batch the engine takes")
    return p


def input_shape(path: Path) -> tuple[int, ...]:
    dims = onnx.load(path, load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims)


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    run = RunDir.of(args.run)
    cache = Path(args.cache) if args.cache else run.export / "engines"
    jobs = [(task, BuildRecipe(prec, args.workspace_mb, max_batch=args.max_batch), run.model(task, SOURCES[prec]))
            for task in ("detector", "segmenter") for prec in args.precision]
    jobs = [j for j in jobs if j[2].is_file()]
    if not jobs:
        print(f"error: no exported ONNX under {run.export}; run `make export` first", file=sys.stderr)
        return 2
    try:
        dev = device_info()
    except TensorRTUnavailable as e:
        for task, recipe, onnx_path in jobs:
            out = cache / "<device>" / f"{task}.{recipe.precision}.engine"
            print(trtexec_command(onnx_path, out, recipe, cache / "timing.cache", input_shape=input_shape(onnx_path)))
        print(f"error: {e}; the trtexec commands above (TensorRT 10 flags; TensorRT 11 takes the *.fp16.onnx "
              "files for fp16 and int8, without flags) build the same engines on the target", file=sys.stderr)
        return 2
    try:
        for task, recipe, onnx_path in jobs:
            source = engine_source(onnx_path, recipe.precision, dev.tensorrt)
            target = engine_path(onnx_path, recipe, cache, dev)
            print(trtexec_command(source, target, recipe, target.parent / "timing.cache", trt_major(dev.tensorrt),
                                  input_shape(source)))
            path, built = cached_engine(onnx_path, recipe, cache)
            layers = cached(path)["layer_precisions"]
            print(f"{task} {recipe.precision}: {'built' if built else 'cached'} {path} "
                  f"({path.stat().st_size / 2**20:.1f} MB; layers by precision {layers})")
    except TensorRTError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
