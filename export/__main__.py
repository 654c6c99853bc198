"""python -m export --run runs/demo [--checkpoint best|last]

For each model trained in the run: ONNX fp32 (contract in metadata, torch parity checked on two inputs; a model
adopted into the run by `python -m export.adopt` starts from its adopted file),
static INT8 QDQ calibrated on training images for ONNX Runtime CPUs (`<model>.int8.onnx`) and for
TensorRT (`<model>.int8-trt.onnx`, symmetric), and .ort files for phones. Writes runs/<name>/export/ and
its manifest.json.

--target names the CPUs the INT8 CPU file is for (export.quantize): `portable` (default) runs exactly on every
x86 class and on ARM; `auto` is this machine's kernel class; a class (x86-avx512vnni, x86-avx2, arm64-dotprod,
...) makes it for that class: 8-bit weights where its kernels accumulate exactly, 7-bit dense-conv weights
where they saturate (x86 without VNNI).
"""

from __future__ import annotations

import argparse
import sys

from datasets.config import DatasetError
from deploy.preprocess import ImageReadError
from export.pipeline import export_run
from export.quantize import KERNEL_TARGETS
from train.checkpoint import CheckpointError


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export", description=__doc__)
    p.add_argument("--run", required=True, help="run directory holding detector/ and/or segmenter/")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--calib-images", type=int, default=None, help="override the config's calib_images")
    p.add_argument("--dynamic-batch", action="store_true", help="dynamic batch axis (default: static 1x3xHxW)")
    p.add_argument("--target", default="portable", choices=["auto", *KERNEL_TARGETS],
                   help="CPU kernel class the INT8 CPU file is made for (auto: this machine)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        export_run(args.run, args.checkpoint, args.calib_images, args.dynamic_batch, args.target)
        return 0
    except (CheckpointError, DatasetError, ImageReadError, RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
