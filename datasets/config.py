"""Dataset configs (YAML) -> dataclasses. A dataset config says where images and labels lie, nothing else.

Paths in a dataset config are relative to `root`; `root` is relative to the working directory (the repo
root when run through make). See configs/data/*.yaml.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from deploy.errors import EdgeVisionError


class DatasetError(EdgeVisionError, ValueError):
    """Broken dataset input; the message is one line naming the file and the fix."""


DETECTION_FORMATS = ("coco", "yolo", "voc")


@dataclass
class DetectionSplit:
    """coco: `images` folder + `annotations` JSON; yolo: `annotations` = an Ultralytics data.yaml (its entry of
    this split's name); voc: `images` = JPEGImages, `annotations` = Annotations, `image_set` = ImageSets/Main
    list (without one, every XML; with random_split, a fixed-seed part of them)."""

    images: str = ""
    annotations: str = ""
    val_count: int | None = None  # set by `random_split`: this split is one side of a fixed-seed split
    seed: int = 0
    format: str = "coco"
    image_set: str | None = None  # voc only

    def __post_init__(self):
        if self.format not in DETECTION_FORMATS:
            raise ValueError(f"detection format {self.format!r} is not one of {DETECTION_FORMATS}")
        if not self.annotations or (self.format != "yolo" and not self.images):
            raise ValueError(f"a {self.format} detection split needs `annotations`"
                             + ("" if self.format == "yolo" else " and `images`"))


@dataclass
class SegmentationSplit:
    images: str
    masks: str


@dataclass
class RandomSplit:
    """Split one folder pair into train/val with a fixed seed (for sets that ship unsplit)."""

    images: str
    masks: str
    val_count: int
    seed: int = 0


@dataclass
class SegmentationConfig:
    classes: list[str]
    thin_classes: list[str] = field(default_factory=list)  # classes scored as thin-structure IoU
    mask_values: dict[int, int] | None = None  # PNG value -> class index; None: value is the index
    splits: dict[str, SegmentationSplit] = field(default_factory=dict)
    random_split: RandomSplit | None = None
    match_tolerance: float | str = 2.0  # ODS / OIS match distance: px (crack benchmarks: 2), or "bsds"

    def __post_init__(self):
        check_match_tolerance(self.match_tolerance)  # a typo fails at load, not after training


def check_match_tolerance(t: float | str) -> None:
    """ODS / OIS match distance: a number of pixels >= 0, or "bsds" (datasets.thin_metrics.tolerance_px)."""
    if t != "bsds" and (isinstance(t, str) or t < 0):
        raise ValueError(f"segmentation.match_tolerance {t!r}: a distance in px >= 0, or 'bsds'")


@dataclass
class DatasetConfig:
    name: str
    root: str
    detection: dict[str, DetectionSplit] = field(default_factory=dict)
    segmentation: SegmentationConfig | None = None
    synthetic: dict | None = None  # generator settings when the set is generated (python -m datasets)
    source: str = ""  # the YAML file it came from

    def path(self, rel: str) -> Path:
        return Path(self.root) / rel

    def detection_split(self, split: str) -> DetectionSplit:
        if split not in self.detection:
            raise DatasetError(f"{self.source}: no detection split {split!r} (has {sorted(self.detection)})")
        return self.detection[split]

    def segmentation_pairs(self, split: str) -> list[tuple[Path, Path]]:
        """(image, mask) paths of a split, matched by file stem."""
        seg = self.segmentation
        if seg is None:
            raise DatasetError(f"{self.source}: no `segmentation:` section; add one to train a segmenter")
        if seg.random_split is not None and split in ("train", "val"):
            rs = seg.random_split
            pairs = _pairs(self.path(rs.images), self.path(rs.masks))
            order = list(range(len(pairs)))
            random.Random(rs.seed).shuffle(order)
            val = set(order[: rs.val_count])
            return [p for i, p in enumerate(pairs) if (i in val) == (split == "val")]
        if split not in seg.splits:
            raise DatasetError(f"{self.source}: no segmentation split {split!r} (has {sorted(seg.splits)})")
        s = seg.splits[split]
        return _pairs(self.path(s.images), self.path(s.masks))


def _pairs(images: Path, masks: Path) -> list[tuple[Path, Path]]:
    for d in (images, masks):
        if not d.is_dir():
            raise DatasetError(f"{d}: folder not found; check `root` and the split paths in the dataset config")
    by_stem = {p.stem: p for p in masks.iterdir() if p.suffix.lower() == ".png"}
    imgs = sorted(p for p in images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp"))
    missing = [p.name for p in imgs if p.stem not in by_stem]
    if missing:
        raise DatasetError(f"{masks}: no mask PNG for {len(missing)} images (e.g. {missing[0]}); add or remove them")
    return [(p, by_stem[p.stem]) for p in imgs]


class StrictYAMLError(yaml.YAMLError):
    """What YAML allows and a config must not have; the message names the line."""


class StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses two things PyYAML accepts silently: a key given twice in one mapping (the
    last one would win: `max_quantization_drop: 0.03`, then `0.5`, loosens the gate) and a non-finite number
    (`.nan`, `.inf`, 1e999: a limit no value can fail, or none can pass)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise StrictYAMLError(f"line {key_node.start_mark.line + 1}: key {key!r} is given twice (first on "
                                      f"line {seen[key]}); keep one")
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)

    def construct_yaml_float(self, node):
        value = super().construct_yaml_float(node)
        if not math.isfinite(value):
            raise StrictYAMLError(f"line {node.start_mark.line + 1}: {node.value!r} is not a finite number; "
                                  "give a number")
        return value


StrictLoader.add_constructor("tag:yaml.org,2002:float", StrictLoader.construct_yaml_float)


def read_yaml(path: Path, error: type[Exception], what: str) -> object:
    """Parse a YAML file, turning a missing file, bad syntax, a duplicate key or a non-finite number into a
    one-line `error` naming it (and the line)."""
    try:
        return yaml.load(path.read_text(), Loader=StrictLoader)  # noqa: S506 (a SafeLoader)
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except StrictYAMLError as e:
        raise error(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        raise error(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None


def load_dataset_config(path: str | Path) -> DatasetConfig:
    path = Path(path)
    return parse_dataset_config(read_yaml(path, DatasetError, "dataset config"), path)


def parse_dataset_config(raw: object, path: Path) -> DatasetConfig:
    """A dataset config's parsed YAML -> DatasetConfig; errors name `path`."""
    if not isinstance(raw, dict) or "root" not in raw:
        raise DatasetError(f"{path}: a dataset config needs at least `name` and `root`")
    try:
        det_raw = dict(raw.get("detection") or {})
        rs = det_raw.pop("random_split", None)  # {images, annotations, val_count, seed}: train/val of one file
        det = {k: DetectionSplit(**v) for k, v in det_raw.items()}
        if rs:
            det.update({k: DetectionSplit(**rs) for k in ("train", "val")})
        seg = None
        if raw.get("segmentation"):
            s = dict(raw["segmentation"])
            s["splits"] = {k: SegmentationSplit(**v) for k, v in (s.get("splits") or {}).items()}
            if s.get("random_split"):
                s["random_split"] = RandomSplit(**s["random_split"])
            if s.get("mask_values") is not None:
                s["mask_values"] = {int(k): int(v) for k, v in s["mask_values"].items()}
            seg = SegmentationConfig(**s)
        return DatasetConfig(
            name=raw.get("name", path.stem),
            root=str(raw["root"]),
            detection=det,
            segmentation=seg,
            synthetic=raw.get("synthetic"),
            source=str(path),
        )
    except TypeError as e:
        raise DatasetError(f"{path}: unexpected or missing key ({e})") from None
    except ValueError as e:
        raise DatasetError(f"{path}: {e}") from None
