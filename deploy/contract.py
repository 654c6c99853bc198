"""The model contract carried in the ONNX file's metadata_props.

Everything downstream (runtime, bench, gate, TensorRT) reads input geometry, channel order, resize rule,
class names and the training config hash from the artefact itself, never from flags.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from deploy.errors import EdgeVisionError
from deploy.preprocess import PreprocessSpec

PREFIX = "edge_vision."
TASKS = ("detector", "segmenter")
REQUIRED = ("task", "preprocess", "class_names", "config_hash", "outputs")


class ContractError(EdgeVisionError, ValueError):
    """A model whose metadata is missing or inconsistent (the message names the file and the fix)."""


@dataclass(frozen=True)
class Contract:
    task: str  # "detector" | "segmenter"
    preprocess: PreprocessSpec
    class_names: list[str]
    config_hash: str
    outputs: list[str]  # output tensor names, in order
    precision: str = "fp32"  # "fp32" | "int8"
    postprocess: dict = field(default_factory=dict)  # e.g. {"conf_thres": .., "iou_thres": ..}
    output_shapes: dict = field(default_factory=dict)  # name -> shape, "batch" where the axis is dynamic
    drift: dict = field(default_factory=dict)  # training-set input statistics (deploy.drift); {} if none

    def to_metadata(self) -> dict[str, str]:
        values = {
            "task": self.task,
            "preprocess": self.preprocess.to_json(),
            "class_names": json.dumps(self.class_names),
            "config_hash": self.config_hash,
            "outputs": json.dumps(self.outputs),
            "precision": self.precision,
            "postprocess": json.dumps(self.postprocess, sort_keys=True),
            "output_shapes": json.dumps(self.output_shapes),
        }
        if self.drift:
            values["drift"] = json.dumps(self.drift, separators=(",", ":"))
        return {PREFIX + k: v for k, v in values.items()}

    @classmethod
    def from_metadata(cls, meta: dict[str, str], source: str = "model") -> Contract:
        fix = "re-export it with `python -m export --run runs/<name>`"
        missing = [k for k in REQUIRED if PREFIX + k not in meta]
        if missing:
            raise ContractError(f"{source}: no edge-vision contract in its metadata ({missing}); {fix}")
        get = lambda k: meta[PREFIX + k]  # noqa: E731
        try:
            spec = PreprocessSpec.from_json(get("preprocess"))
            names = json.loads(get("class_names"))
            outputs = json.loads(get("outputs"))
            post = json.loads(meta.get(PREFIX + "postprocess", "{}"))
            shapes = json.loads(meta.get(PREFIX + "output_shapes", "{}"))
            drift = json.loads(meta.get(PREFIX + "drift", "{}"))
        except (ValueError, TypeError, KeyError) as e:
            raise ContractError(f"{source}: malformed contract metadata ({e}); {fix}") from None
        if get("task") not in TASKS:
            raise ContractError(f"{source}: unknown task {get('task')!r} in metadata; {fix}")
        if not names or not all(isinstance(n, str) for n in names):
            raise ContractError(f"{source}: class_names in metadata must be a non-empty list of strings; {fix}")
        conf = post.get("conf_thres")
        if isinstance(conf, list) and len(conf) != len(names):
            raise ContractError(f"{source}: {len(conf)} per-class thresholds for {len(names)} classes; {fix}")
        return cls(
            task=get("task"),
            preprocess=spec,
            class_names=names,
            config_hash=get("config_hash"),
            outputs=outputs,
            precision=meta.get(PREFIX + "precision", "fp32"),
            postprocess=post,
            output_shapes=shapes,
            drift=drift,
        )
