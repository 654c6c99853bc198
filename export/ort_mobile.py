"""ONNX -> ORT format (.ort) for ONNX Runtime Mobile, plus the operator list for a reduced-size build.

`required_operators.config` lists exactly the kernels the shipped models use; build ORT for the phone with
`--minimal_build --include_ops_by_config required_operators.config` to drop everything else.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path


def convert_to_ort(onnx_paths: Sequence[Path], out_dir: Path) -> tuple[list[Path], Path]:
    """Convert the models (contract metadata included) into out_dir; returns (.ort files, ops config)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for p in onnx_paths:  # the converter takes a folder: one ops config covers every shipped model
            (Path(tmp) / p.name).symlink_to(p.resolve())
        cmd = [sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", tmp,
               "--output_dir", str(out_dir), "--optimization_style", "Fixed"]
        r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"ORT format conversion failed for {[p.name for p in onnx_paths]}: {last}")
    return [out_dir / (p.stem + ".ort") for p in onnx_paths], out_dir / "required_operators.config"


def required_ops(config: Path) -> list[str]:
    """'domain;opset;Op1,Op2' lines -> sorted op names."""
    ops = set()
    for line in config.read_text().splitlines():
        if line and not line.startswith("#"):
            ops.update(line.split(";")[2].split(","))
    return sorted(ops)
