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
OUTPUT_NAMES = {"detector": ["cls_logits", "boxes"], "segmenter": ["logits"]}  # our own models' outputs
# a detector's postprocess family (postprocess["family"], default ours) -> its outputs; decoded by
# deploy.postprocess.decode_detector. "yolo": Ultralytics YOLOv8/11 raw head (B, 4 + C, N); "yolo-e2e":
# YOLO26 end-to-end (B, K, 6). Both come in through `python -m export.adopt`.
FAMILIES = {"edge-vision": OUTPUT_NAMES["detector"], "yolo": ["output0"], "yolo-e2e": ["output0"]}
POSTPROCESS_KEYS = {"detector": ("family", "conf_thres", "iou_thres", "max_det"), "segmenter": ()}
FIX = "re-export it with `python -m export --run runs/<name>`"


class ContractError(EdgeVisionError, ValueError):
    """A model whose metadata is missing or inconsistent (the message names the file and the fix)."""


@dataclass(frozen=True)
class Contract:
    task: str  # "detector" | "segmenter"
    preprocess: PreprocessSpec
    class_names: list[str]
    config_hash: str
    outputs: list[str]  # output tensor names, in order
    precision: str = "fp32"  # "fp32" | "fp16" (the TensorRT 11 files) | "int8"
    postprocess: dict = field(default_factory=dict)  # e.g. {"conf_thres": .., "iou_thres": ..}
    output_shapes: dict = field(default_factory=dict)  # name -> shape, "batch" where the axis is dynamic
    drift: dict = field(default_factory=dict)  # training-set input statistics (deploy.drift); {} if none
    kernels: str = ""  # INT8: the kernel class the file was made for (deploy.hardware; "portable": every CPU)

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
        if self.kernels:
            values["kernels"] = self.kernels
        if self.drift:
            values["drift"] = json.dumps(self.drift, separators=(",", ":"))
        return {PREFIX + k: v for k, v in values.items()}

    @classmethod
    def from_metadata(cls, meta: dict[str, str], source: str = "model") -> Contract:
        missing = [k for k in REQUIRED if PREFIX + k not in meta]
        if missing:
            raise ContractError(f"{source}: no edge-vision contract in its metadata ({missing}); {FIX}")
        get = lambda k: meta[PREFIX + k]  # noqa: E731
        try:
            spec = PreprocessSpec.from_json(get("preprocess"))
            names = json.loads(get("class_names"))
            outputs = json.loads(get("outputs"))
            post = json.loads(meta.get(PREFIX + "postprocess", "{}"))
            shapes = json.loads(meta.get(PREFIX + "output_shapes", "{}"))
            drift = json.loads(meta.get(PREFIX + "drift", "{}"))
        except (ValueError, TypeError, KeyError) as e:
            raise ContractError(f"{source}: malformed contract metadata ({e}); {FIX}") from None
        if get("task") not in TASKS:
            raise ContractError(f"{source}: unknown task {get('task')!r} in metadata; {FIX}")
        if not names or not all(isinstance(n, str) for n in names):
            raise ContractError(f"{source}: class_names in metadata must be a non-empty list of strings; {FIX}")
        check_postprocess(get("task"), post, len(names), source)
        if outputs != output_names(get("task"), post):
            raise ContractError(f"{source}: outputs {outputs} in metadata, a {get('task')} "
                                f"({post.get('family', 'edge-vision')}) has {output_names(get('task'), post)}; {FIX}")
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
            kernels=meta.get(PREFIX + "kernels", ""),
        )

    @property
    def family(self) -> str:
        """How the outputs decode: "edge-vision" (ours, and every segmenter), "yolo" or "yolo-e2e" (FAMILIES)."""
        return self.postprocess.get("family", "edge-vision")

    @property
    def ranked(self) -> bool:
        """Outputs that are ranked top-K rows (YOLO26 end-to-end): near-tied rows swap between two runs, so they
        are compared by accuracy or matched rows, never tensor to tensor."""
        return self.family == "yolo-e2e"

    def check_outputs(self, shapes: dict[str, list], source: str) -> None:
        """The graph's output shapes (ints, or names/None for dynamic axes) against the class list: a model
        whose metadata names 3 classes but whose head has 80 channels is refused at load, not at frame 1."""
        n = len(self.class_names)
        names = f"{n} class names in metadata"
        if self.task == "segmenter":  # logits (B, K, h, w)
            want = {"logits": (1, n, names)}
        elif self.family == "yolo":  # output0 (B, 4 + C, N): cx, cy, w, h, then C class scores
            want = {"output0": (1, 4 + n, f"4 box coordinates + {names}")}
        elif self.family == "yolo-e2e":  # output0 (B, K, 6): x1, y1, x2, y2, score, class
            want = {"output0": (-1, 6, "x1, y1, x2, y2, score, class")}
        else:  # cls_logits (B, N, C), boxes (B, N, 4)
            want = {"cls_logits": (-1, n, names), "boxes": (-1, 4, "4 box coordinates")}
        for name, (axis, size, what) in want.items():
            shape = shapes.get(name)
            if shape is None or len(shape) < 3:
                raise ContractError(f"{source}: output {name} has shape {shape}, a {self.task} output has at least "
                                    f"3 axes; {FIX}")
            dim = shape[axis]
            if isinstance(dim, int) and dim != size:
                raise ContractError(f"{source}: output {name} has {dim} channels on axis {axis}, the contract "
                                    f"expects {what}; {FIX}")


def _is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and v == v  # not NaN


def output_names(task: str, post: dict) -> list[str]:
    """The output tensors a model of this task and postprocess family has, in order."""
    return FAMILIES[post.get("family", "edge-vision")] if task == "detector" else OUTPUT_NAMES[task]


def check_postprocess(task: str, post: dict, num_classes: int, source: str) -> None:
    """The postprocess metadata: known keys and thresholds in range, checked when the model loads."""
    if not isinstance(post, dict):
        raise ContractError(f"{source}: postprocess metadata must be a JSON object; {FIX}")
    unknown = sorted(set(post) - set(POSTPROCESS_KEYS[task]))
    if unknown:
        raise ContractError(f"{source}: unknown postprocess key(s) {unknown} for a {task} "
                            f"(allowed: {list(POSTPROCESS_KEYS[task])}); {FIX}")
    family = post.get("family", "edge-vision")
    if not isinstance(family, str) or family not in FAMILIES:
        raise ContractError(f"{source}: postprocess family {family!r} is not one of {list(FAMILIES)}; {FIX}")
    conf = post.get("conf_thres", 0.25)
    confs = conf if isinstance(conf, list) else [conf]
    if isinstance(conf, list) and len(conf) != num_classes:
        raise ContractError(f"{source}: {len(conf)} per-class thresholds for {num_classes} classes; {FIX}")
    if not confs or not all(_is_number(c) and 0 <= c <= 1 for c in confs):
        raise ContractError(f"{source}: postprocess conf_thres {conf!r} must be a number in [0, 1] or one per "
                            f"class; {FIX}")
    iou = post.get("iou_thres", 0.5)
    if not (_is_number(iou) and 0 <= iou <= 1):
        raise ContractError(f"{source}: postprocess iou_thres {iou!r} must be a number in [0, 1]; {FIX}")
    max_det = post.get("max_det", 100)
    if not (isinstance(max_det, int) and not isinstance(max_det, bool) and max_det >= 1):
        raise ContractError(f"{source}: postprocess max_det {max_det!r} must be a positive integer; {FIX}")
