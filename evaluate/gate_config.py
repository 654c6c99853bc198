"""The release gate's config (configs/gate.yaml) as dataclasses, through the experiment configs' strict loader.

A gate must never pass because of a typo: an unknown or misspelled key, a threshold of the wrong type, a
metric or latency target the gate does not know, or a name under `skip:` that is not a task is refused
(exit 2, one line naming the key and the file). Which trained models the config must judge is checked in
`evaluate.gate`, where the run is known.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from datasets.config import read_yaml
from datasets.metrics import METRICS
from deploy.contract import TASKS
from train.config import ConfigError, build_dataclass

MEASURED_TARGETS = ("cpu-1thread",)  # latency measured by the gate itself, timed side by side with fp32
DEVICE_TARGETS = ("jetson-orin",)  # measured where TensorRT runs the engine (python -m export.tensorrt)


class GateConfigError(ConfigError):
    """A gate config that cannot be trusted to judge (the message names the file, the key and the fix)."""


@dataclass
class ModelLimits:
    """One task's thresholds. The two attribution limits are required: without them the gate blames nothing."""

    max_quantization_drop: float  # ref/fp32 - ref/int8, metric units
    max_preprocessing_drop: float  # ref/fp32 - deployed/fp32
    metric: str | None = None  # default: the primary metric (datasets.metrics.PRIMARY)
    min_input_psnr: float | None = None  # dB, reference vs deployed input tensors, worst image
    min_accuracy: float | None = None  # deployed int8, with labels
    latency_ms: dict[str, float] = field(default_factory=dict)  # int8, batch 1, p50, per target
    max_size_mb: float | None = None
    max_runtime_drop: float | None = None  # runtime/reference - runtime/deployed (checked with --runtime/captures)
    min_runtime_sqnr: float | None = None  # dB, deployed runtime's outputs vs the reference's, worst tensor


@dataclass
class BaselineTolerance:
    accuracy: float = 0.01  # deployed int8 may fall this far below the baseline
    speedup_ratio: float = 0.8  # the INT8 speed-up may fall to this fraction of the baseline's
    size_ratio: float = 1.05


@dataclass
class GateConfig:
    detector: ModelLimits | None = None
    segmenter: ModelLimits | None = None
    skip: list[str] = field(default_factory=list)  # trained tasks this gate deliberately does not judge
    baseline: str | None = None  # committed figures (JSON keyed by run name); absent: regression is skipped
    baseline_tolerance: BaselineTolerance = field(default_factory=BaselineTolerance)

    def limits(self, task: str) -> ModelLimits | None:
        return self.detector if task == "detector" else self.segmenter


def load_gate_config(path: str | Path) -> GateConfig:
    path = Path(path)
    raw = read_yaml(path, GateConfigError, "gate config") or {}
    try:
        cfg = build_dataclass(GateConfig, raw, str(path))
    except ConfigError as e:
        raise GateConfigError(str(e)) from None
    _validate(cfg, path)
    return cfg


def _validate(cfg: GateConfig, path: Path) -> None:
    bad = sorted(set(cfg.skip) - set(TASKS))
    if bad:
        raise GateConfigError(f"{path}: skip: names {bad}, which are not tasks; allowed: {list(TASKS)}")
    both = [t for t in cfg.skip if cfg.limits(t) is not None]
    if both:
        raise GateConfigError(f"{path}: {both} both have limits and are listed under skip:; keep one")
    for task in TASKS:
        lim = cfg.limits(task)
        if lim is None:
            continue
        if lim.metric is not None and lim.metric not in METRICS[task]:
            raise GateConfigError(f"{path}: {task}.metric {lim.metric!r} is not a {task} metric; "
                                  f"allowed: {list(METRICS[task])}")
        unknown = sorted(set(lim.latency_ms) - set(MEASURED_TARGETS + DEVICE_TARGETS))
        if unknown:
            raise GateConfigError(f"{path}: {task}.latency_ms has unknown target(s) {unknown}; "
                                  f"allowed: {list(MEASURED_TARGETS + DEVICE_TARGETS)}")
        if lim.max_quantization_drop < 0 or lim.max_preprocessing_drop < 0:
            raise GateConfigError(f"{path}: {task}: drop limits are in metric units and may not be negative")
