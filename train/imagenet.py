"""An ImageNet-trained torchvision MobileNetV3 state dict onto our backbones, the `_minimal` ones included.

The `_minimal` backbones differ from torchvision's in three ways, and each is mapped so that the shared layers
compute what the source computes:
- squeeze-excitation is gone: its tensors are left out, and a block's remaining tensors pair up in order;
- expanded channels are rounded up to multiples of 16 (72 -> 80, ...): the source fills the first channels;
  the extra output channels keep their fresh init, and the next layer's weights on them are zero, so they add
  nothing until training moves those weights (zeroing their outputs instead would leave them dead for good);
- the stem takes x/255 with a zero 4th channel instead of ImageNet-normalised RGB: mean and std are folded
  into the stem's weights and its BatchNorm's running mean (exact away from the image border, where the
  zero padding of the two inputs means different pixels).
Hardswish is ReLU in `_minimal`: the same weights, another activation, which fine-tuning adapts to.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB
IMAGENET_STD = (0.229, 0.224, 0.225)
SQUEEZE_EXCITATION = re.compile(r"\.fc[12]\.")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A MobileNetV3 state dict file, torchvision's or timm's (or one wrapped in {"state_dict"} / {"model"}) ->
    its feature tensors keyed torchvision's way, `features.` removed. ValueError naming the file otherwise."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: backbone checkpoint not found (weights are never downloaded)")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    sd = sd if isinstance(sd, dict) else {}
    feats = {k[len("features."):]: v for k, v in sd.items() if k.startswith("features.")}
    if not feats and "conv_stem.weight" in sd:
        feats = from_timm(sd)
    if not feats:
        raise ValueError(f"{path}: no MobileNetV3 feature tensors (`features.*` of torchvision, `conv_stem` / "
                         "`blocks.*` of timm); give torchvision.models.mobilenet_v3_small(...).state_dict() or "
                         "timm.create_model('mobilenetv3_small_100', ...).state_dict(), saved with torch.save")
    return feats


def from_timm(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm's MobileNetV3 keys -> torchvision's layer indices: the stem is layer 0, timm's blocks.<stage>.<block>
    are layers 1, 2, ... in order, each block's tensors kept in their order (the same sequence as
    torchvision's: expand, depthwise, squeeze-excitation, project); the head after pooling is not a feature.
    timm's BatchNorm eps is 1e-5 where torchvision's is 1e-3: a negligible difference."""
    out = {}
    for k, v in sd.items():
        if k.startswith("conv_stem."):
            out["0.0." + k.split(".", 1)[1]] = v
        elif k.startswith("bn1."):
            out["0.1." + k.split(".", 1)[1]] = v
    blocks = sorted({tuple(int(i) for i in k.split(".")[1:3]) for k in sd if k.startswith("blocks.")})
    index = {b: i + 1 for i, b in enumerate(blocks)}
    for k, v in sd.items():
        if k.startswith("blocks."):
            _, stage, block, rest = k.split(".", 3)
            rest = rest.replace("se.conv_reduce.", "se.fc1.").replace("se.conv_expand.", "se.fc2.")
            out[f"{index[(int(stage), int(block))]}.{rest}"] = v
    return out


def by_layer(sd: dict[str, torch.Tensor], drop_se: bool) -> dict[str, list[str]]:
    """Keys grouped by their top-level layer index ('3.block.0.0.weight' -> '3'), in the state dict's order
    (the modules' order); squeeze-excitation left out with `drop_se`."""
    groups = defaultdict(list)
    for k in sd:
        if not (drop_se and SQUEEZE_EXCITATION.search(k)):
            groups[k.split(".", 1)[0]].append(k)
    return groups


def fits(src: torch.Tensor, dst: torch.Tensor) -> bool:
    return src.dim() == dst.dim() and all(s <= d for s, d in zip(src.shape, dst.shape, strict=True))


def padded(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """`src` in the leading corner of `dst`'s init; a conv's weights on extra input channels are zero."""
    out = dst.clone()
    if src.dim() >= 2 and dst.shape[1] > src.shape[1] and dst.shape[1] > 1:
        out[: src.shape[0], src.shape[1]:] = 0
    out[tuple(slice(0, n) for n in src.shape)] = src
    return out


def fold_stem(w: torch.Tensor, bn_mean: torch.Tensor, in_channels: int,
              channel_order: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Stem weights for normalised RGB -> weights for x/255 in `channel_order` (zero extra channels), and
    the BatchNorm running mean that absorbs the shift: conv(w, (u - m) / s) = conv(w / s, u) - sum(w * m / s)."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    scaled = w / std
    shift = (w * mean / std).sum(dim=(1, 2, 3))  # (C,)
    if channel_order == "BGR":
        scaled = scaled[:, [2, 1, 0]]
    out = torch.zeros(w.shape[0], in_channels, *w.shape[2:], dtype=w.dtype)
    out[:, :3] = scaled
    return out, bn_mean + shift


def map_features(features: nn.Sequential, src: dict[str, torch.Tensor], channel_order: str) -> dict[str, int]:
    """Load `src` (torchvision `features.*`, prefix removed) into our `features` -> counts of tensors
    {"loaded", "padded", "folded", "new", "unused"}."""
    dst = features.state_dict()
    drop_se = not any(SQUEEZE_EXCITATION.search(k) for k in dst)  # the _minimal backbones have none
    out, counts = dict(dst), dict.fromkeys(("loaded", "padded", "folded", "new", "unused"), 0)
    src_groups, used = by_layer(src, drop_se), set()
    if len(src_groups) != len(by_layer(dst, drop_se)):  # small vs large: nothing lines up, even where it fits
        raise ValueError(f"the file has {len(src_groups)} feature layers and this backbone "
                         f"{len(by_layer(dst, drop_se))}: another MobileNetV3 variant; give the same one")
    for layer, dkeys in by_layer(dst, drop_se).items():
        skeys = src_groups.get(layer, [])
        pairs = list(zip(skeys, dkeys, strict=True)) if len(skeys) == len(dkeys) else []
        if not pairs or not all(fits(src[k], dst[d]) for k, d in pairs):
            counts["new"] += len(dkeys)  # another structure (a fused block, another width): fresh init
            continue
        used.update(skeys)
        stem = layer == "0" and dst[dkeys[0]].shape[1] != src[skeys[0]].shape[1]  # the x/255 stem
        for k, d in pairs:
            if stem and (d == dkeys[0] or d.endswith("running_mean")):
                continue
            same = src[k].shape == dst[d].shape
            out[d] = src[k].clone() if same else padded(src[k], dst[d])
            counts["loaded" if same else "padded"] += 1
        if layer == "0" and not stem and channel_order == "BGR":  # ImageNet weights see RGB
            out[dkeys[0]] = out[dkeys[0]][:, [2, 1, 0]]
        if stem:
            mean_key = next(d for d in dkeys if d.endswith("running_mean"))
            out[dkeys[0]], out[mean_key] = fold_stem(src[skeys[0]], src[skeys[dkeys.index(mean_key)]],
                                                     dst[dkeys[0]].shape[1], channel_order)
            counts["folded"] += 2
    counts["unused"] = len(src) - len(used)
    features.load_state_dict(out)
    return counts


def load_imagenet(features: nn.Sequential, path: str | Path, channel_order: str = "RGB") -> dict[str, int]:
    """Map the file at `path` onto `features`, print what was loaded, and refuse a file that fits nothing."""
    sd = read_state_dict(path)
    try:
        counts = map_features(features, sd, channel_order)
    except ValueError as e:  # map_features does not know the file
        raise ValueError(f"{path}: {e}") from None
    if counts["loaded"] + counts["padded"] == 0:
        raise ValueError(f"{path}: no tensor fits this backbone (another MobileNetV3 variant or width?); give the "
                         "state dict of the same variant and width_mult")
    print(f"backbone weights {path}: {counts['loaded']} tensors loaded, {counts['padded']} zero-padded to our "
          f"channel rounding, {counts['folded']} folded (stem: ImageNet mean/std), {counts['new']} new, "
          f"{counts['unused']} of the file unused", flush=True)
    return counts
