"""Experiment configs: YAML -> dataclasses, with unknown keys refused and a stable config hash."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path

from datasets.augment import SHIFT_P, parse_augment, resolve_augment
from datasets.config import DatasetConfig, load_dataset_config, read_yaml
from deploy.errors import EdgeVisionError
from deploy.preprocess import PreprocessSpec
from train.assign import ASSIGNERS
from train.losses import CLS_LOSSES
from train.models import DECODERS


class ConfigError(EdgeVisionError, ValueError):
    pass


# (section, key) of task options added after runs were hashed: unset, they stay out of the config hash
LATE_KEYS = (("model", "init"), ("model", "box_bins"), ("loss", "dfl_weight"))


@dataclass
class ModelConfig:
    backbone: str = "mobilenet_v3_small"  # mobilenet_v3_{small,large}[_minimal]
    width_mult: float = 1.0
    channels: int = 64  # FPN-lite / decoder width
    head_convs: int = 2
    backbone_weights: str | None = None  # local torchvision ImageNet checkpoint; never downloaded
    decoder: str | None = None  # segmenter only: concat (unset) | subpixel | subpixel8 (train/models.py Segmenter)
    fused_blocks: int = 0  # leading backbone blocks built as Fused-MBConv (train/models.py FusedInvertedResidual)
    init: str | None = None  # a run folder or checkpoint of ours to start from (train.finetune; --init)
    box_bins: int | None = None  # detector: unset regresses softplus distances; N: a distribution over N bins (DFL)


@dataclass
class ScheduleConfig:
    epochs: int = 10
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_iters: int = 50
    grad_clip: float = 10.0
    workers: int = 0
    augment: str = "flip"  # datasets.augment presets joined by '+': none | flip | vflip | camera | lighting | weather
    #                        | season | shift (= camera+lighting+weather+season) | mosaic | scale | auto (the
    #                        recipe for the epoch count: flip, or flip+mosaic+scale for long runs)
    augment_target: str | None = None  # folder of target-domain images: the season preset matches towards them
    shift_p: float = SHIFT_P  # fraction of the samples that get the domain-shift presets (the rest stay clean)
    close_epochs: int = 0  # the last N epochs train without the shift, mosaic and scale presets (YOLO close_mosaic)
    seed: int = 0
    cache_images: bool = True  # keep decoded training images in memory
    ema_decay: float = 0.999  # 0 disables the weight EMA
    ema_tau: float = 500.0  # updates over which the EMA decay ramps up (train/ema.py)
    deterministic: bool = False  # torch deterministic algorithms (bit-exact --resume on CPU)
    crop: list[int] | None = None  # segmenter: train on [h, w] windows of the input-size samples (train/data.py)
    crop_fg: float = 0.5  # fraction of those windows placed around a foreground pixel (class-balanced crops)


@dataclass
class LossConfig:
    box_weight: float = 2.0  # detector: GIoU weight vs focal classification
    assigner: str = "fcos"  # detector: fcos (centre sampling) | tal (task-aligned, TOOD / YOLOv8)
    cls_loss: str = "focal"  # detector: focal | vfl (varifocal) | qfl (quality focal)
    tal_topk: int = 10  # detector, tal: locations per box
    dfl_weight: float | None = None  # detector with model.box_bins: distribution loss weight (unset: GFL's 0.25)
    dice_weight: float = 1.0  # segmenter: soft Dice over non-background classes
    class_weights: list[float] | None = None  # segmenter: cross-entropy weight per class
    cldice_weight: float = 0.0  # segmenter: soft clDice (centreline) weight; 0 = off
    lovasz_weight: float = 0.0  # segmenter: Lovasz-softmax (a convex surrogate of 1 - IoU) weight; 0 = off


@dataclass
class PostprocessConfig:
    conf_thres: float = 0.05
    iou_thres: float = 0.6
    max_det: int = 100
    class_conf_thres: dict[str, float] | None = None  # per-class overrides of conf_thres, by class name

    def for_classes(self, names: list[str]) -> dict:
        """What the contract stores: conf_thres as one value, or a list aligned with the class names."""
        extra = self.class_conf_thres or {}
        unknown = sorted(set(extra) - set(names))
        if unknown:
            raise ConfigError(f"class_conf_thres names {unknown} that are not classes of the dataset {names}")
        conf = [float(extra.get(n, self.conf_thres)) for n in names] if extra else self.conf_thres
        return {"conf_thres": conf, "iou_thres": self.iou_thres, "max_det": self.max_det}


@dataclass
class TaskConfig:
    preset: str | None = None  # a YAML file of TaskConfig keys (configs/models/*.yaml) under this section's own
    input_size: list[int] = field(default_factory=lambda: [320, 320])  # (H, W)
    channel_order: str = "RGB"
    resize: str = "letterbox"
    interpolation: str = "linear"
    pad_value: int = 114
    model: ModelConfig = field(default_factory=ModelConfig)
    train: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)

    def preprocess_spec(self) -> PreprocessSpec:
        return PreprocessSpec(
            input_size=tuple(self.input_size),
            channel_order=self.channel_order,
            resize=self.resize,
            interpolation=self.interpolation,
            pad_value=self.pad_value,
        )


@dataclass
class ExportConfig:
    calib_images: int = 200  # training images for INT8 calibration
    calib_method: str = "percentile"  # minmax | entropy | percentile
    opset: int = 18  # the dynamo exporter's lowest; TensorRT 10 and ORT 1.17+ take it
    int8_max_drop: float = 0.005  # val accuracy budget (map / thin_iou units); over it, sensitive convs go float
    int8_max_rounds: int = 4  # exclusion rounds (2 convs each) before giving up and reporting the drop
    sensitivity_images: int = 16  # images for the qdq_loss_debug SQNR table
    dynamic_batch: bool = False  # ONNX with a dynamic batch axis (parity checked at two batch sizes)


@dataclass
class ExperimentConfig:
    name: str
    data: str  # dataset config path
    detector: TaskConfig | None = None
    segmenter: TaskConfig | None = None
    export: ExportConfig = field(default_factory=ExportConfig)

    def dataset(self) -> DatasetConfig:
        return load_dataset_config(self.data)

    def hash(self) -> str:
        """sha256 over this config and the dataset config it names (16 hex chars)."""
        payload = {"experiment": asdict(self), "dataset": asdict(self.dataset())}
        payload["dataset"].pop("source", None)
        for task in ("detector", "segmenter"):  # keys added later and left unset keep the hashes runs were made with
            for section, key in LATE_KEYS:
                values = (payload["experiment"].get(task) or {}).get(section, {})
                if key in values and values[key] is None:
                    del values[key]
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def build_dataclass(cls: type, raw: dict, where: str):
    """Recursively build dataclass `cls` from a dict, refusing unknown keys, missing required keys and values
    of the wrong type, each with its dotted path (`where` names the file)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    names = {f.name for f in fields}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(names)}")
    required = [f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [k for k in required if k not in raw]
    if missing:
        raise ConfigError(f"{where}: missing required key(s) {missing}")
    return cls(**{k: _typed(hints[k], v, f"{where}.{k}") for k, v in raw.items()})


def _typed(t, v, where: str):
    """`v` checked against the annotation `t` (an int is taken where a float is asked for)."""
    args = typing.get_args(t)
    if isinstance(t, types.UnionType) or typing.get_origin(t) is typing.Union:
        if v is None and type(None) in args:
            return None
        t = next(a for a in args if a is not type(None))
        args = typing.get_args(t)
    if dataclasses.is_dataclass(t):
        return build_dataclass(t, v, where)
    origin = typing.get_origin(t) or t
    ok = {float: isinstance(v, int | float) and not isinstance(v, bool), int: isinstance(v, int) and
          not isinstance(v, bool), bool: isinstance(v, bool), str: isinstance(v, str),
          list: isinstance(v, list), dict: isinstance(v, dict)}.get(origin, True)
    if not ok:
        raise ConfigError(f"{where}: expected {getattr(t, '__name__', t)}, got {type(v).__name__} {v!r}")
    if origin is list and args:
        return [_typed(args[0], x, f"{where}[{i}]") for i, x in enumerate(v)]
    if origin is dict and args:
        return {_typed(args[0], k, f"{where} key"): _typed(args[1], x, f"{where}.{k}") for k, x in v.items()}
    return v


def apply_preset(section: object) -> object:
    """A task section with `preset: FILE` -> the preset's keys with the section's own on top; nested sections
    merge key by key, so `model: {channels: 96}` changes one model key of the preset."""
    if not isinstance(section, dict) or not section.get("preset"):
        return section
    path = Path(section["preset"])
    preset = read_yaml(path, ConfigError, "model preset")
    build_dataclass(TaskConfig, preset, str(path))  # its own errors name the preset file
    merged = dict(preset)
    for k, v in section.items():
        merged[k] = {**merged[k], **v} if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return merged


def load_config(path: str | Path) -> ExperimentConfig:
    path = Path(path)
    raw = read_yaml(path, ConfigError, "config")
    if isinstance(raw, dict):
        raw = {k: apply_preset(v) if k in ("detector", "segmenter") else v for k, v in raw.items()}
    try:
        cfg = build_dataclass(ExperimentConfig, raw or {}, str(path))
    except TypeError as e:
        raise ConfigError(f"{path}: {e}") from None
    for task in (cfg.detector, cfg.segmenter):
        if task is not None:
            task.preprocess_spec()  # validates channel order, resize rule, sizes
            if task.loss.assigner not in ASSIGNERS or task.loss.cls_loss not in CLS_LOSSES:
                raise ConfigError(f"{path}: loss.assigner must be one of {ASSIGNERS} and loss.cls_loss one of "
                                  f"{CLS_LOSSES}; got {task.loss.assigner!r} and {task.loss.cls_loss!r}")
            try:
                parse_augment(resolve_augment(task.train.augment, task.train.epochs))
            except ValueError as e:
                raise ConfigError(f"{path}: {e}") from None
            s = task.train
            if not 0.0 <= s.shift_p <= 1.0 or not 0 <= s.close_epochs <= s.epochs or s.ema_tau <= 0:
                raise ConfigError(f"{path}: train.shift_p must be in [0, 1], train.close_epochs in [0, epochs] "
                                  f"and train.ema_tau > 0; got {s.shift_p}, {s.close_epochs} and {s.ema_tau}")
            m = task.model
            if m.box_bins is not None and (task is cfg.segmenter or m.box_bins < 2):
                raise ConfigError(f"{path}: model.box_bins is a detector option, 2 or more bins (16 is YOLOv8's); "
                                  f"got {m.box_bins}" + (" in the segmenter section" if task is cfg.segmenter else ""))
            if m.fused_blocks < 0 or (m.fused_blocks and not m.backbone.endswith("_minimal")):
                raise ConfigError(f"{path}: model.fused_blocks must be >= 0 and needs a *_minimal backbone; "
                                  f"got {m.fused_blocks} with {m.backbone}")
    check_decoder(cfg, path)
    check_crop(cfg, path)
    return cfg


def check_crop(cfg: ExperimentConfig, path: Path) -> None:
    if cfg.detector is not None and cfg.detector.train.crop is not None:
        raise ConfigError(f"{path}: detector.train.crop is a segmenter option (boxes are not cropped); remove it")
    s = cfg.segmenter.train if cfg.segmenter is not None else None
    if s is None or s.crop is None:
        return
    h_w = tuple(cfg.segmenter.input_size)
    if len(s.crop) != 2 or not all(0 < c <= m for c, m in zip(s.crop, h_w, strict=True)) \
            or not 0.0 <= s.crop_fg <= 1.0:
        raise ConfigError(f"{path}: segmenter.train.crop must be [h, w] within {list(h_w)}, the input size, and "
                          f"train.crop_fg in [0, 1]; got {s.crop} and {s.crop_fg}")


def check_decoder(cfg: ExperimentConfig, path: Path) -> None:
    if cfg.detector is not None and cfg.detector.model.decoder is not None:
        raise ConfigError(f"{path}: detector.model.decoder is a segmenter option; remove it")
    if cfg.segmenter is not None and cfg.segmenter.model.decoder not in (None, *DECODERS):
        raise ConfigError(f"{path}: segmenter.model.decoder must be one of {DECODERS}; "
                          f"got {cfg.segmenter.model.decoder!r}")
