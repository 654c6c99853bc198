"""MobileNetV3 + FPN-lite anchor-free detector and MobileNetV3 segmenter with a high-resolution branch.

Both take uint8 (B, 3, H, W) images: normalisation is the first layer, so the exported ONNX takes what a
camera gives. The module that is trained is the module that is exported: forward() returns the same
tensors in training and in ONNX, and losses are computed outside the model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.mobilenetv3 import MobileNetV3, _mobilenet_v3_conf

from train.imagenet import IMAGENET_MEAN, IMAGENET_STD, load_imagenet

BACKBONES = ("mobilenet_v3_small", "mobilenet_v3_large", "mobilenet_v3_small_minimal", "mobilenet_v3_large_minimal")


class InputNormalize(nn.Module):
    """uint8 (B, 3, H, W) in the contract's channel order -> float, ImageNet-normalised."""

    def __init__(self, channel_order: str = "RGB"):
        super().__init__()
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        if channel_order == "BGR":
            mean, std = mean[::-1], std[::-1]
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("inv_std", 1.0 / (torch.tensor(std).view(1, 3, 1, 1) * 255.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) * self.inv_std


class UnitInput(nn.Module):
    """uint8 (B, 3, H, W) -> (B, 4, H, W) float x/255 with a zero 4th channel: the minimal variants' input.

    Why: x/255 is the uint8 frame itself under a scale-1/255 quantizer, so the INT8 graph feeds the camera
    bytes straight into the first QLinearConv (export.quantize drops the Cast/Mul/Q). The stem's BatchNorm
    learns the centring that ImageNet mean/std would give. 4 channels put the stem on ONNX Runtime's fast
    int8 kernel (it needs input channels in multiples of 4; measured 446 -> 259 us at 320 px).
    """

    out_channels = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x.float(), (0, 0, 0, 0, 0, 1)) * (1.0 / 255.0)


def build_input(backbone: str, channel_order: str) -> nn.Module:
    return UnitInput() if backbone.endswith("_minimal") else InputNormalize(channel_order)


def softplus(x: torch.Tensor) -> torch.Tensor:
    """F.softplus as relu(x) + log1p(exp(-|x|)): the same values, but five vectorised ONNX Runtime
    kernels instead of its scalar Softplus (measured 91 -> 20 us for the detector's three levels)."""
    return F.relu(x) + torch.log1p(torch.exp(-x.abs()))


class MobileNetV3Backbone(nn.Module):
    """torchvision MobileNetV3 `features`, split into stages that end at the requested strides."""

    def __init__(self, arch: str, width_mult: float, out_strides: tuple[int, ...], weights: str | None = None,
                 fused_blocks: int = 0, channel_order: str = "RGB"):
        super().__init__()
        if arch not in BACKBONES:
            raise ValueError(f"backbone {arch!r} is not one of {BACKBONES}")
        minimal = arch.endswith("_minimal")
        if fused_blocks and not minimal:
            raise ValueError(f"fused_blocks is for the _minimal backbones (ReLU, no SE); {arch!r} is not one")
        setting, last_channel = _mobilenet_v3_conf(arch.removesuffix("_minimal"), width_mult=width_mult)
        if minimal:  # quantization-friendly: ReLU everywhere, no squeeze-excitation
            for cnf in setting:
                cnf.use_se, cnf.use_hs = False, False
                # ONNX Runtime's fast int8 depthwise kernel needs channels in multiples of 16 (72 -> 80,
                # 88 -> 96, 120 -> 128 for the small variant; measured 100 -> 40 us for the 88-channel one)
                cnf.expanded_channels = -(-cnf.expanded_channels // 16) * 16
        features = MobileNetV3(setting, last_channel).features
        if not 0 <= fused_blocks <= len(setting):
            raise ValueError(f"fused_blocks must be 0..{len(setting)} for {arch}; got {fused_blocks}")
        for i, cnf in enumerate(setting[:fused_blocks]):
            features[i + 1] = FusedInvertedResidual(cnf.input_channels, cnf.expanded_channels, cnf.out_channels,
                                                    cnf.kernel, cnf.stride)
        in_channels = UnitInput.out_channels if minimal else 3
        if minimal:
            _hardswish_to_relu(features)  # the stem and last conv are built with Hardswish regardless
            stem = features[0][0]
            features[0][0] = nn.Conv2d(in_channels, stem.out_channels, stem.kernel_size, stem.stride,
                                       stem.padding, bias=False)
            nn.init.kaiming_normal_(features[0][0].weight, mode="fan_out")  # torchvision's conv init
            with torch.no_grad():
                features[0][0].weight[:, 3:] = 0  # the padding channel is always zero: keep its weights out
        for m in features.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = 0.1  # torchvision's 0.01 suits ImageNet-length schedules; short runs need 0.1
        # find the last layer at each stride with a dry run on a small image
        strides, x = [], torch.zeros(1, in_channels, 64, 64)
        with torch.no_grad():
            for layer in features:
                x = layer(x)
                strides.append(64 // x.shape[-1])
        if weights:  # after the dry run: in training mode it moves BatchNorm's running statistics
            load_imagenet(features, weights, channel_order)
        stages, channels, start = [], [], 0
        for s in out_strides:
            if s not in strides:
                raise ValueError(f"{arch} has no stride-{s} feature (has {sorted(set(strides))})")
            end = max(i for i, v in enumerate(strides) if v == s) + 1
            stages.append(nn.Sequential(*features[start:end]))
            channels.append(_out_channels(stages[-1]))
            start = end
        self.stages = nn.ModuleList(stages)
        self.out_channels = channels
        self.out_strides = tuple(out_strides)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


class FusedInvertedResidual(nn.Module):
    """Fused-MBConv (EfficientNetV2; MobileNetV4's FusedIB): a full kxk conv + BN + ReLU, then a 1x1 projection
    + BN, in place of expand 1x1 + depthwise kxk + project 1x1, at half the block's expansion (rounded up to 16
    channels). Why try it: ONNX Runtime's int8 depthwise convolutions are no faster than its fp32 ones on x86,
    its int8 full convolutions are; what it gave is in the README (detector recipe, CrackForest, Layer by layer).
    """

    def __init__(self, cin: int, expanded: int, cout: int, kernel: int, stride: int):
        super().__init__()
        mid = max(16, -(-expanded // 32) * 16)
        self.block = nn.Sequential(conv_bn_relu(cin, mid, kernel, stride),
                                   nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.use_res_connect = stride == 1 and cin == cout
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")  # torchvision's MobileNetV3 init

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.use_res_connect else y


def _hardswish_to_relu(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.Hardswish):
            setattr(module, name, nn.ReLU(inplace=True))
        else:
            _hardswish_to_relu(child)


def _out_channels(seq: nn.Sequential) -> int:
    convs = [m for m in seq.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels


def conv_bn_relu(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1) -> nn.Sequential:
    pad = 0 if k == stride else (k - 1) // 2  # k == stride: no padding (space-to-depth)
    conv = nn.Conv2d(cin, cout, k, stride, pad, groups=groups, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def dw_sep(cin: int, cout: int) -> nn.Sequential:
    """Depthwise 3x3 + pointwise 1x1: the FPN-lite building block."""
    return nn.Sequential(conv_bn_relu(cin, cin, 3, groups=cin), conv_bn_relu(cin, cout, 1))


class FPNLite(nn.Module):
    def __init__(self, in_channels: list[int], channels: int):
        super().__init__()
        self.lateral = nn.ModuleList(conv_bn_relu(c, channels, 1) for c in in_channels)
        self.smooth = nn.ModuleList(dw_sep(channels, channels) for _ in in_channels)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        lat = [lateral(f) for lateral, f in zip(self.lateral, feats, strict=True)]
        for i in range(len(lat) - 2, -1, -1):  # top-down
            # bilinear, not nearest: ONNX Runtime's int8 nearest Resize is single-threaded (69 us at 40x40x64)
            lat[i] = lat[i] + F.interpolate(lat[i + 1], size=lat[i].shape[-2:], mode="bilinear")
        return [smooth(p) for smooth, p in zip(self.smooth, lat, strict=True)]


class Detector(nn.Module):
    """Anchor-free one-stage detector (FCOS-style points, quality-focal classification, GIoU boxes).

    `box_bins`: 0 regresses each side's distance as softplus(x) strides; N > 0 predicts a distribution over
    N bins (0 .. N-1 strides) per side and decodes its expectation (Distribution Focal Loss, GFL, Li et al.
    2020; YOLOv8's reg_max 16). The distribution is what sharpens boxes at strict IoU: the loss can put the
    mass on the two bins around the true edge instead of pulling one number towards it.
    """

    strides = (8, 16, 32)
    class_head = "cls_out"  # the layer whose outputs are the classes (train.finetune rebuilds it)

    def __init__(self, num_classes: int, backbone: str = "mobilenet_v3_small", width_mult: float = 1.0,
                 channels: int = 64, head_convs: int = 2, channel_order: str = "RGB",
                 backbone_weights: str | None = None, fused_blocks: int = 0, box_bins: int = 0):
        super().__init__()
        if box_bins < 0 or box_bins == 1:
            raise ValueError(f"box_bins must be 0 (softplus distances) or >= 2 (a distribution); got {box_bins}")
        self.num_classes = num_classes
        self.box_bins = box_bins
        self.normalize = build_input(backbone, channel_order)
        self.backbone = MobileNetV3Backbone(backbone, width_mult, self.strides, backbone_weights, fused_blocks,
                                            channel_order)
        self.fpn = FPNLite(self.backbone.out_channels, channels)
        self.cls_tower = nn.Sequential(*[dw_sep(channels, channels) for _ in range(head_convs)])
        self.reg_tower = nn.Sequential(*[dw_sep(channels, channels) for _ in range(head_convs)])
        self.cls_out = nn.Conv2d(channels, num_classes, 1)
        self.reg_out = nn.Conv2d(channels, 4 * max(1, box_bins), 1)
        nn.init.constant_(self.cls_out.bias, -4.6)  # prior p = 0.01
        if box_bins:
            self.register_buffer("bin_values", torch.arange(box_bins, dtype=torch.float32))  # (N,) in strides
        else:
            nn.init.constant_(self.reg_out.bias, 1.5)  # softplus(1.5) * stride ~ a stride-sized start box

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x (B, 3, H, W) uint8 -> cls_logits (B, N, C), boxes (B, N, 4) xyxy in input pixels; in training with
        box_bins, also the bins' logits (B, N, 4, bins) for the distribution loss (the export sees two outputs)."""
        feats = self.fpn(self.backbone(self.normalize(x)))
        # levels joined channels-last, then one box decode: ONNX Runtime folds the permute into its NHWC int8 and
        # blocked fp32 layouts, so the graph has no per-level transposes or decodes (README, "Layer by layer")
        cls = torch.cat([_channels_last(self.cls_out(self.cls_tower(f))) for f in feats], 1)  # (B, N, C)
        reg = torch.cat([_channels_last(self.reg_out(self.reg_tower(f))) for f in feats], 1)  # (B, N, 4 * bins)
        pts, strides = self.points(x.shape[-2:], x.device)  # (N, 2), (N,)
        if self.box_bins:
            bins = reg.unflatten(-1, (4, self.box_bins))  # (B, N, 4, bins)
            # the expectation as Mul + ReduceSum: ONNX Runtime ran the same as a MatMul with a vector 6x slower
            # (1.98 vs 0.33 ms for the m preset's 2730 locations, 1 thread)
            dist = (bins.softmax(-1) * self.bin_values).sum(-1) * strides[:, None]  # (B, N, 4) expected distance, px
        else:
            dist = softplus(reg) * strides[:, None]  # (B, N, 4) l, t, r, b in pixels
        boxes = torch.cat([pts - dist[..., :2], pts + dist[..., 2:]], dim=-1)
        if self.box_bins and self.training:
            return cls, boxes, bins
        return cls, boxes

    def points(self, input_hw: tuple[int, int], device: torch.device | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Centres (N, 2) and strides (N,) of all output locations, in forward()'s order (on `device`, or CPU)."""
        device = device or torch.device("cpu")
        pts, strides = [], []
        for s in self.strides:
            h, w = -(-input_hw[0] // s), -(-input_hw[1] // s)
            pts.append(level_points(h, w, s, device))
            strides.append(torch.full((h * w,), float(s), device=device))
        return torch.cat(pts), torch.cat(strides)


def _channels_last(y: torch.Tensor) -> torch.Tensor:
    return y.permute(0, 2, 3, 1).flatten(1, 2)  # (B, K, h, w) -> (B, h*w, K)


def level_points(h: int, w: int, stride: int, device: torch.device) -> torch.Tensor:
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * stride
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * stride
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=-1)  # (h*w, 2) as (x, y)


class Segmenter(nn.Module):
    """LR-ASPP-style context head at stride 16 + detail branches at strides 8, 4 and 2; logits at stride 2.
    `decoder`: "concat" joins each upsampled stage to its skip feature by concatenation and refines the stride-2
    stage; "subpixel" adds projected skips and predicts the stride-2 logits at stride 4 (pixel shuffle);
    "subpixel8" adds every skip at stride 8 and predicts the stride-2 logits there (4x4 pixel shuffle).

    The last 2x bilinear upsampling is deploy.postprocess.logits_to_input's (and the loss's): in the graph,
    ONNX Runtime ran it on K channels padded to 16 at full resolution, the fp32 model's slowest node.
    """

    class_head = "classifier"  # the layer whose outputs are the classes (train.finetune rebuilds it)

    def __init__(self, num_classes: int, backbone: str = "mobilenet_v3_small", width_mult: float = 1.0,
                 channels: int = 64, head_convs: int = 1, channel_order: str = "RGB",
                 backbone_weights: str | None = None, decoder: str = "concat", fused_blocks: int = 0):
        super().__init__()
        if decoder not in DECODERS:
            raise ValueError(f"segmenter decoder {decoder!r} is not one of {DECODERS}")
        self.num_classes = num_classes
        self.decoder = decoder
        self.normalize = build_input(backbone, channel_order)
        self.backbone = MobileNetV3Backbone(backbone, width_mult, (2, 4, 8, 16), backbone_weights, fused_blocks,
                                            channel_order)
        c2, c4, c8, c16 = self.backbone.out_channels
        c, blocks = channels, max(1, head_convs)
        self.context = conv_bn_relu(c16, c, 1)  # LR-ASPP: 1x1 branch gated by global context
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c16, c, 1), nn.Sigmoid())
        if decoder == "concat":
            self.fuse8 = dw_sep(c + c8, c)
            self.fuse4 = dw_sep(c + c4, c // 2)
            self.fuse2 = nn.Sequential(*[dw_sep(c // 2 + c2 if i == 0 else c // 2, c // 2) for i in range(blocks)])
            self.classifier = nn.Conv2d(c // 2, num_classes, 1)
        elif decoder == "subpixel":
            # skips projected and added (QLinearAdd in INT8, not a concat); the stride-2 feature joins at stride 4
            # (2x2 stride-2 conv: space-to-depth + 1x1) and the classifier predicts each 2x2 block's four stride-2
            # logits, put in place by a pixel shuffle: no decoder work at stride 2
            self.skip8, self.skip4 = conv_bn_relu(c8, c, 1), conv_bn_relu(c4, c, 1)
            self.fuse8 = dw_sep(c, c)
            self.skip2 = conv_bn_relu(c2, c, 2, stride=2)  # (the order the README's CrackForest runs initialised in)
            self.fuse4 = nn.Sequential(*[dw_sep(c, c) for _ in range(blocks)])
            self.upscale = 2  # logits of each 2x2 block, predicted at stride 4
        else:
            # subpixel8: the stride-4 and stride-2 features join at stride 8 by space-to-depth convs, so nothing
            # runs at stride 4: no upsampling there (a float Resize in the INT8 file) and no depthwise convs at
            # 4x the area (INT8 no faster than fp32); each 4x4 block's 16 stride-2 logits come from its cell
            self.skip8, self.skip4 = conv_bn_relu(c8, c, 1), conv_bn_relu(c4, c, 2, stride=2)
            self.skip2 = conv_bn_relu(c2, c, 4, stride=4)
            self.fuse8 = nn.Sequential(*[dw_sep(c, c) for _ in range(1 + blocks)])
            self.upscale = 4  # logits of each 4x4 block, predicted at stride 8
        if decoder != "concat":  # created last in every decoder (the seeded README runs' initialisation order)
            self.classifier = nn.Conv2d(c, num_classes * self.upscale ** 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, H, W) uint8 -> logits (B, K, H/2, W/2)."""
        f2, f4, f8, f16 = self.backbone(self.normalize(x))
        y = self.context(f16) * self.gate(f16)  # (B, C, H/16, W/16)
        if self.decoder == "concat":
            y = self.fuse8(torch.cat([_up(y, f8), f8], 1))  # (B, C, H/8, W/8)
            y = self.fuse4(torch.cat([_up(y, f4), f4], 1))  # (B, C/2, H/4, W/4)
            y = self.fuse2(torch.cat([_up(y, f2), f2], 1))  # (B, C/2, H/2, W/2)
            return self.classifier(y)  # (B, K, H/2, W/2)
        if self.decoder == "subpixel8":
            y = self.fuse8(_up(y, f8) + self.skip8(f8) + self.skip4(f4) + self.skip2(f2))  # (B, C, H/8, W/8)
        else:
            y = self.fuse8(_up(y, f8) + self.skip8(f8))  # (B, C, H/8, W/8)
            y = self.fuse4(_up(y, f4) + self.skip4(f4) + self.skip2(f2))  # (B, C, H/4, W/4)
        r = self.upscale
        return F.pixel_shuffle(self.classifier(y), r)  # (B, r*r*K, H/2r, W/2r) -> (B, K, H/2, W/2)


DECODERS = ("concat", "subpixel", "subpixel8")


def _up(y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(y, size=like.shape[-2:], mode="bilinear")


def build_model(task: str, model_args: dict) -> nn.Module:
    """Explicit constructor dispatch; model_args are what the checkpoint stores."""
    if task == "detector":
        return Detector(**model_args)
    elif task == "segmenter":
        return Segmenter(**model_args)
    raise ValueError(f"unknown task {task!r} (detector | segmenter)")


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
