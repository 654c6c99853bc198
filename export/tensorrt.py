"""python -m export.tensorrt --run runs/demo [--precision int8 fp16] [--cache DIR]

Builds TensorRT engines from the exported ONNX files on this machine (INT8+FP16 from the QDQ model, FP16
from the fp32 model), cached per GPU, compute capability and TensorRT version, and prints the equivalent
trtexec command for each. Without TensorRT or a GPU it prints the commands and exits 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deploy.trt_engine import TensorRTUnavailable, cached_engine, device_info, engine_path, trtexec_command
from train.run_dir import RunDir

SOURCES = {"int8": "int8-trt", "fp16": "fp32", "fp32": "fp32"}  # engine precision -> the ONNX variant it is built from


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export.tensorrt", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True)
    p.add_argument("--precision", nargs="+", default=["int8", "fp16"], choices=sorted(SOURCES))
    p.add_argument("--cache", default=None, help="engine cache folder (default: <run>/export/engines)")
    p.add_argument("--workspace-mb", type=int, default=1024)
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    run = RunDir.of(args.run)
    export = run.export
    cache = Path(args.cache) if args.cache else export / "engines"
    jobs = [(task, prec, run.model(task, SOURCES[prec])) for task in ("detector", "segmenter")
            for prec in args.precision]
    jobs = [j for j in jobs if j[2].is_file()]
    if not jobs:
        print(f"error: no exported ONNX under {export}; run `make export` first", file=sys.stderr)
        return 2
    try:
        dev = device_info()
    except TensorRTUnavailable as e:
        for task, prec, onnx_path in jobs:
            out = cache / "<gpu>-sm<cc>-trt<version>" / f"{task}.{prec}.engine"
            print(trtexec_command(onnx_path, out, prec, args.workspace_mb, cache / "timing.cache"))
        print(f"error: {e}; the trtexec commands above build the same engines on the target", file=sys.stderr)
        return 2
    major = int(dev.tensorrt.split(".")[0])
    for task, prec, onnx_path in jobs:
        target = engine_path(onnx_path, prec, cache, dev)
        print(trtexec_command(onnx_path, target, prec, args.workspace_mb, cache / dev.slug() / "timing.cache", major))
        path, built = cached_engine(onnx_path, prec, cache, args.workspace_mb)
        print(f"{task} {prec}: {'built' if built else 'cached'} {path} ({path.stat().st_size / 2**20:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
