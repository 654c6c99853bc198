"""The run folder's layout, in one place: where a run's checkpoints, exported models and reports lie.

    runs/<name>/<task>/{best,last}.pt, log.csv, tb/        python -m train
    runs/<name>/<task>/adopted.json, runs/<name>/data.yaml  python -m export.adopt (a model trained elsewhere)
    runs/<name>/export/<variant file>, manifest.json       python -m export (VARIANT_FILES)
    runs/<name>/bench/, runs/<name>/gate/                  python -m evaluate.bench / evaluate.gate
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from deploy.contract import TASKS

# variant -> file under export/: fp32, INT8 for ONNX Runtime CPUs, INT8 QDQ for TensorRT, and the phones' .ort
VARIANT_FILES = {"fp32": "{task}.onnx", "int8": "{task}.int8.onnx", "int8-trt": "{task}.int8-trt.onnx",
                 "fp32.ort": "mobile/{task}.ort", "int8.ort": "mobile/{task}.int8.ort"}
INT8_VARIANTS = {"cpu": "int8", "tensorrt": "int8-trt"}  # export target -> the INT8 variant it writes


@dataclass(frozen=True)
class RunDir:
    root: Path

    @classmethod
    def of(cls, path: str | Path) -> RunDir:
        return cls(Path(path))

    @property
    def name(self) -> str:  # the key of the gate's committed baseline
        return self.root.name

    def task_dir(self, task: str) -> Path:
        return self.root / task

    def checkpoint(self, task: str, which: str = "best") -> Path:
        return self.root / task / f"{which}.pt"

    def trained(self) -> list[str]:
        """The tasks with a best.pt, in TASKS order."""
        return [t for t in TASKS if self.checkpoint(t).is_file()]

    def adopted(self, task: str) -> Path:
        """The record `python -m export.adopt` writes in place of best.pt (train.checkpoint.load_model_record)."""
        return self.root / task / "adopted.json"

    def tasks(self) -> list[str]:
        """The tasks trained here or adopted into here, in TASKS order: what export, bench and gate work on."""
        return [t for t in TASKS if self.checkpoint(t).is_file() or self.adopted(t).is_file()]

    @property
    def dataset_config(self) -> Path:
        """The dataset config `python -m export.adopt` writes for an Ultralytics data.yaml."""
        return self.root / "data.yaml"

    @property
    def export(self) -> Path:
        return self.root / "export"

    def model(self, task: str, variant: str = "fp32") -> Path:
        return self.export / VARIANT_FILES[variant].format(task=task)

    @property
    def bench(self) -> Path:
        return self.root / "bench"

    @property
    def gate(self) -> Path:
        return self.root / "gate"

    @property
    def kernels(self) -> Path:  # accuracy per CPU kernel class (python -m evaluate.kernels)
        return self.root / "kernels"
