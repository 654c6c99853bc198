"""Augmentation presets on albumentations 2.0.8, selected by name in the training config (`train.augment`).

Names combine with '+': `flip+camera+lighting`; `shift` is `camera+lighting+weather+season`, the full
domain-shift set. Every preset is box- and mask-safe (geometry goes through albumentations' bbox and mask
targets) and keeps 1-2 px structures: blur kernels are at most MAX_BLUR_KERNEL px, downscaling keeps at
least MIN_DOWNSCALE of the resolution, fog and contrast losses are bounded, and lens distortion moves
pixels by a few at most (tests/datasets/test_augment.py checks each transform of each preset alone).

  vflip     vertical flip, for views without an up (road surface, aerial): pixel-exact on 1 px masks
  camera    sensor noise, motion / defocus blur, low-resolution sensor, JPEG artefacts, white balance and
            colour response shifts, vignetting, lens distortion
  lighting  gamma, brightness / contrast, low light, cast shadows, sun flare
  weather   fog, rain, snow
  season    hue / saturation shifts; with target-domain images (`train.augment_target`, a folder),
            histogram matching or FDA towards them
  mosaic    four training samples on a 2x2 grid, cropped around a random centre to the input size
            (A.Mosaic, YOLO's mosaic); the partners come with each call (`partners=`)
  scale     random scale and translate (A.Affine, YOLO's scale 0.5 / translate 0.1); the segmenter only
            scales up, so a 1 px mask line never loses pixels to nearest-neighbour downsampling
  auto      the recipe for the budget: `flip` below LONG_EPOCHS epochs, `flip+mosaic+scale` from there on
            (resolve_augment; measured in docs/results.md: flip leads at 12 epochs, mosaic + scale at 80)
The closing `train.close_epochs` train without the shift, mosaic and scale presets (YOLO's close_mosaic).
Images arrive in BGR (deploy.preprocess.read_image) and are augmented in RGB, the order albumentations'
colour transforms (white balance, flare colour, FDA / histogram references) assume.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import albumentations as A
import cv2
import numpy as np

from datasets.masks import IGNORE_INDEX
from deploy.preprocess import read_image

PRESETS = ("none", "flip", "vflip", "camera", "lighting", "weather", "season", "mosaic", "scale")
SHIFT_PRESETS = ("camera", "lighting", "weather", "season")
GEOMETRY_PRESETS = ("mosaic", "scale")  # need the input size and the letterbox pad value
CLOSING_OFF = SHIFT_PRESETS + GEOMETRY_PRESETS  # what the closing epochs train without
# Bounds that keep a 1-2 px structure visible (each keeps >= 25% of its local contrast at worst, about what
# the harshest shifted test split, noise_blur, leaves; tests/datasets/test_augment.py measures it):
MAX_BLUR_KERNEL = 5  # px, Gaussian and defocus; motion blur puts its whole kernel on one line: 3 px
MIN_DOWNSCALE = 0.6  # of the resolution: lower and a 1 px wire is averaged away before the upscale
MAX_DISTORTION = 0.03  # lens distortion: the remap's resampling also softens 1 px lines
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
MAX_REFERENCES = 64  # target-domain images held in memory for histogram matching / FDA
HM_KEY, FDA_KEY, MOSAIC_KEY = "hm_metadata", "fda_metadata", "mosaic_metadata"
MOSAIC_PARTNERS = 3  # a 2x2 grid: the sample and three others
SCALE_RANGE = {"detector": (0.5, 1.5), "segmenter": (1.0, 1.5)}
TRANSLATE = 0.1  # fraction of the input size
MIN_BOX_VISIBILITY = 0.1
SHIFT_P = 0.5  # default fraction of the samples that get the domain-shift presets at all (train.shift_p)


AUTO = "auto"
AUTO_RECIPES = {"short": "flip", "long": "flip+mosaic+scale"}
LONG_EPOCHS = 40  # from this many epochs `auto` trains the long-budget recipe


def resolve_augment(spec: str, epochs: int) -> str:
    """`auto` in a preset list -> the recipe for an `epochs`-long run ('auto+shift' at 80 epochs ->
    'flip+mosaic+scale+shift'); any other list is returned as it is."""
    parts = [p.strip() for p in spec.split("+")]
    if AUTO not in parts:
        return spec
    recipe = AUTO_RECIPES["long" if epochs >= LONG_EPOCHS else "short"]
    return "+".join(recipe if p == AUTO else p for p in parts)


def parse_augment(spec: str) -> list[str]:
    """'flip+camera' -> ['flip', 'camera']; 'shift' expands to the four domain-shift presets."""
    names: list[str] = []
    for part in (p.strip() for p in spec.split("+")):
        for name in SHIFT_PRESETS if part == "shift" else (part,):
            if name not in PRESETS:
                raise ValueError(f"unknown augment preset {name!r} in {spec!r} (choose from "
                                 f"{' | '.join(PRESETS)} | shift | auto, joined with '+')")
            if name != "none" and name not in names:
                names.append(name)
    return names


def closing_augment(spec: str) -> str:
    """`spec` without the domain-shift, mosaic and scale presets ('flip+mosaic+shift' -> 'flip', 'shift' ->
    'none'): what the last `train.close_epochs` epochs train with."""
    plain = [n for n in parse_augment(spec) if n not in CLOSING_OFF]
    return "+".join(plain) or "none"


def target_images(folder: str | Path | None) -> list[Path]:
    """The target-domain images for the season preset (sorted, so a run is reproducible)."""
    if not folder:
        return []
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: augment_target is not a folder of target-domain images")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) for augment_target")
    return paths


def _read_rgb(path) -> np.ndarray:
    return cv2.cvtColor(read_image(path), cv2.COLOR_BGR2RGB)


def geometry_transforms(name: str, task: str, input_hw: tuple[int, int], pad_value: int) -> list[A.BasicTransform]:
    """The mosaic and scale presets: they work on the input-sized canvas (the letterbox that follows is then
    the identity), padding with the letterbox's grey and masks with IGNORE_INDEX (unlabelled, not background)."""
    if name == "mosaic":
        return [A.Mosaic(grid_yx=(2, 2), target_size=input_hw, cell_shape=input_hw, fit_mode="contain",
                         fill=pad_value, fill_mask=IGNORE_INDEX, metadata_key=MOSAIC_KEY, p=1.0)]
    elif name == "scale":
        return [A.Affine(scale=SCALE_RANGE[task], translate_percent=(-TRANSLATE, TRANSLATE), fill=pad_value,
                         fill_mask=IGNORE_INDEX, p=1.0)]
    raise ValueError(f"{name!r} is not a geometry preset ({' | '.join(GEOMETRY_PRESETS)})")


def preset_transforms(name: str, with_references: bool = False) -> list[A.BasicTransform]:
    """The transforms of one appearance preset, each with its own probability (explicit if/elif, no registry)."""
    if name == "flip":
        return [A.HorizontalFlip(p=0.5), A.RandomBrightnessContrast(0.15, 0.15, p=0.5)]
    elif name == "vflip":  # top-down views (road cracks, aerial lines); with flip, all four exact flips
        return [A.VerticalFlip(p=0.5)]
    elif name == "camera":
        k = MAX_BLUR_KERNEL
        return [
            A.OneOf([A.GaussNoise(std_range=(0.02, 0.06)), A.ISONoise(color_shift=(0.01, 0.04), intensity=(0.1, 0.4))],
                    p=0.35),
            A.OneOf([A.MotionBlur(blur_limit=(3, 3)), A.Defocus(radius=(1, k // 2), alias_blur=(0.1, 0.2)),
                     A.GaussianBlur(blur_limit=(3, k), sigma_limit=(0.3, 1.0))], p=0.3),
            A.Downscale(scale_range=(MIN_DOWNSCALE, 0.9),
                        interpolation_pair={"downscale": cv2.INTER_AREA, "upscale": cv2.INTER_LINEAR}, p=0.15),
            A.ImageCompression(quality_range=(40, 90), p=0.3),
            A.OneOf([A.PlanckianJitter(mode="blackbody"),
                     A.RGBShift(r_shift_limit=20, g_shift_limit=12, b_shift_limit=20)], p=0.35),
            A.Illumination(mode="gaussian", intensity_range=(0.05, 0.2), effect_type="darken", p=0.2),  # vignetting
            A.OpticalDistortion(distort_limit=(-MAX_DISTORTION, MAX_DISTORTION), mode="camera", p=0.2),
        ]
    elif name == "lighting":
        return [
            A.RandomGamma(gamma_limit=(70, 180), p=0.35),  # > 100 darkens the shadows most: low light
            A.RandomBrightnessContrast(brightness_limit=(-0.45, 0.2), contrast_limit=(-0.4, 0.2), p=0.5),
            A.RandomShadow(shadow_roi=(0, 0.4, 1, 1), num_shadows_limit=(1, 2), shadow_intensity_range=(0.3, 0.6),
                           p=0.2),
            A.RandomSunFlare(flare_roi=(0, 0, 1, 0.4), src_radius=60, num_flare_circles_range=(3, 6), p=0.1),
        ]
    elif name == "weather":
        # fog as haze (contrast lost, a brighter airlight graded top to bottom), not A.RandomFog:
        # its final blur is min(H, W) / 30 px wide (9 px at 240x320) and wipes out 1-2 px structures
        haze = A.Sequential([
            A.RandomBrightnessContrast(brightness_limit=(0.05, 0.25), contrast_limit=(-0.5, -0.2), p=1),
            A.Illumination(mode="linear", intensity_range=(0.05, 0.2), effect_type="brighten", angle_range=(80, 100),
                           p=1)], p=1)
        return [A.OneOf([
            haze,
            A.RandomRain(slant_range=(-10, 10), drop_length=8, drop_width=1, blur_value=3,
                         brightness_coefficient=0.8, rain_type="drizzle"),
            A.RandomSnow(snow_point_range=(0.05, 0.15), brightness_coeff=1.5, method="bleach"),
        ], p=0.4)]
    elif name == "season":
        out: list[A.BasicTransform] = [A.HueSaturationValue(hue_shift_limit=12, sat_shift_limit=30, val_shift_limit=15,
                                                            p=0.5)]
        if with_references:  # the images come with each call (Augment), under these metadata keys
            out.append(A.OneOf([A.HistogramMatching(blend_ratio=(0.3, 0.8), metadata_key=HM_KEY),
                                A.FDA(beta_limit=(0.01, 0.05), metadata_key=FDA_KEY)], p=0.5))
        return out
    raise ValueError(f"unknown augment preset {name!r} (choose from {' | '.join(PRESETS)})")


class Augment:
    """An A.Compose called on BGR images (converted to RGB around it), with the season preset's
    target-domain images and the mosaic's partner samples passed as albumentations 2.x metadata. Called
    like the Compose: `aug(image=bgr, mask=m)` or `aug(image=bgr, bboxes=b, labels=l)`, plus
    `partners=[{"image": bgr, "mask" or "bboxes"+"labels": ...}, ...]` when `needs_partners`."""

    def __init__(self, transforms: list[A.BasicTransform], task: str, references: Sequence[np.ndarray] = ()):
        # boxes cut to under MIN_BOX_VISIBILITY of their area by a mosaic or scale crop are dropped (YOLO: 10%)
        bbox = (A.BboxParams(format="pascal_voc", label_fields=["labels"], min_visibility=MIN_BOX_VISIBILITY)
                if task == "detector" else None)
        self.compose = A.Compose(transforms, bbox_params=bbox)
        self.references = list(references)
        self.needs_partners = any(isinstance(t, A.Mosaic) for t in transforms)
        self.seed = 0

    def set_random_seed(self, seed: int) -> None:
        self.seed = seed
        self.compose.set_random_seed(seed)

    def pick_partners(self, index: int, size: int) -> list[int]:
        """The mosaic partners of sample `index`: drawn from (seed, index), so an epoch replays exactly
        whatever order or worker process its samples are loaded in."""
        rng = np.random.default_rng([self.seed, index])
        return [int(j) for j in rng.integers(0, size, MOSAIC_PARTNERS)] if size > 1 else []

    def __call__(self, partners: Sequence[dict] = (), **data) -> dict:
        data["image"] = cv2.cvtColor(data["image"], cv2.COLOR_BGR2RGB)
        if self.references:
            data[HM_KEY] = data[FDA_KEY] = self.references
        if self.needs_partners:
            data[MOSAIC_KEY] = [{**p, "image": cv2.cvtColor(p["image"], cv2.COLOR_BGR2RGB)} for p in partners]
        out = self.compose(**data)
        out["image"] = cv2.cvtColor(out["image"], cv2.COLOR_RGB2BGR)
        return out


def build_augment(spec: str, task: str, target: str | Path | None = None, shift_p: float = SHIFT_P,
                  input_hw: tuple[int, int] = (320, 320), pad_value: int = 114) -> Augment | None:
    """The training augmentation for `spec` ('none', 'flip', 'shift', 'flip+mosaic+scale', ...), or None.

    Order: mosaic and scale first (geometry on the input-sized canvas), then the plain presets, then the
    domain-shift presets, so colour and blur act on the composed image as a camera would.

    The domain-shift presets together apply to a fraction `shift_p` of the samples; the rest keep the clean
    look, so the model still sees the training domain as it is (all-shifted training cost the demo detector
    3.3 mAP points on the clean test split at the demo's 12 epochs).
    """
    names = parse_augment(spec)
    if not names:
        return None
    refs = [_read_rgb(p) for p in target_images(target)[:MAX_REFERENCES]] if "season" in names else []
    geometry = [t for n in GEOMETRY_PRESETS if n in names for t in geometry_transforms(n, task, input_hw, pad_value)]
    plain = [t for n in names if n not in CLOSING_OFF for t in preset_transforms(n)]
    shift = [t for n in names if n in SHIFT_PRESETS for t in preset_transforms(n, bool(refs))]
    return Augment(geometry + plain + ([A.Sequential(shift, p=shift_p)] if shift else []), task, refs)
