"""Detector and segmenter losses (torchvision.ops where it has them)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

IGNORE_INDEX = 255


@torch.no_grad()
def assign_targets(points: torch.Tensor, strides: torch.Tensor, gt_boxes: torch.Tensor,
                   center_radius: float = 2.5) -> torch.Tensor:
    """FCOS-style assignment with centre sampling.

    points (N, 2), strides (N,), gt_boxes (M, 4) -> matched gt index per point (N,), -1 for background.
    A point is positive for a box when it lies inside the box and within center_radius strides of its
    centre, and the box's largest side distance falls in the level's range (2 to 4 strides; the finest
    level from 0, the coarsest to infinity). A box too small to hold any point gets the finest-level point
    nearest its centre, so tiny objects are still learned. Ties go to the smallest box.
    """
    n, m = points.shape[0], gt_boxes.shape[0]
    if m == 0:
        return torch.full((n,), -1, dtype=torch.long, device=points.device)
    x, y = points[:, 0:1], points[:, 1:2]  # (N, 1)
    l, t = x - gt_boxes[:, 0], y - gt_boxes[:, 1]  # (N, M)
    r, b = gt_boxes[:, 2] - x, gt_boxes[:, 3] - y
    ltrb = torch.stack([l, t, r, b], -1)  # (N, M, 4)
    inside = ltrb.min(-1).values > 0
    cx, cy = (gt_boxes[:, 0] + gt_boxes[:, 2]) / 2, (gt_boxes[:, 1] + gt_boxes[:, 3]) / 2
    rad = strides[:, None] * center_radius
    central = ((x - cx).abs() < rad) & ((y - cy).abs() < rad)
    reach = ltrb.max(-1).values
    s_min, s_max = strides.min(), strides.max()
    lo = torch.where(strides == s_min, torch.zeros_like(strides), strides * 2)[:, None]
    hi = torch.where(strides == s_max, torch.full_like(strides, float("inf")), strides * 4)[:, None]
    ok = inside & central & (reach >= lo) & (reach <= hi)
    orphans = ~ok.any(0)  # (M,)
    if orphans.any():
        d = (x - cx).abs() + (y - cy).abs() + torch.where(strides == s_min, 0.0, float("inf"))[:, None]
        nearest = d.argmin(0)  # (M,)
        ok[nearest[orphans], orphans.nonzero().squeeze(1)] = True
    area = ((gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1]))[None].expand(n, m)
    area = torch.where(ok, area, torch.full_like(area, float("inf")))
    best_area, best = area.min(1)
    return torch.where(torch.isfinite(best_area), best, torch.full_like(best, -1))


class DetectionLoss(nn.Module):
    """Sigmoid focal loss on 0/1 class targets (RetinaNet/FCOS) + GIoU on the positive locations."""

    def __init__(self, points: torch.Tensor, strides: torch.Tensor, num_classes: int, box_weight: float = 2.0):
        super().__init__()
        self.register_buffer("points", points)  # (N, 2)
        self.register_buffer("strides", strides)  # (N,)
        self.num_classes = num_classes
        self.box_weight = box_weight

    def forward(self, cls_logits: torch.Tensor, boxes: torch.Tensor, targets: list[dict]) -> dict:
        """cls_logits (B, N, C), boxes (B, N, 4); targets: per image {"boxes": (M, 4), "labels": (M,)}."""
        cls_t = torch.zeros_like(cls_logits)
        pred_pos, gt_pos, idx_pos = [], [], []
        for i, t in enumerate(targets):
            match = assign_targets(self.points, self.strides, t["boxes"])
            pos = (match >= 0).nonzero().squeeze(1)
            if pos.numel() == 0:
                continue
            gt = t["boxes"][match[pos]]
            pred = boxes[i, pos]
            cls_t[i, pos, t["labels"][match[pos]]] = 1.0
            pred_pos.append(pred)
            gt_pos.append(gt)
            idx_pos.append(pos)
        num_pos = max(1.0, float(sum(p.numel() for p in idx_pos)))
        loss_cls = sigmoid_focal_loss(cls_logits.float(), cls_t, reduction="sum") / num_pos
        if pred_pos:
            loss_box = generalized_box_iou_loss(torch.cat(pred_pos).float(), torch.cat(gt_pos), reduction="sum")
            loss_box = loss_box / num_pos
        else:
            loss_box = boxes.sum() * 0.0
        total = loss_cls + self.box_weight * loss_box
        return {"loss": total, "cls": loss_cls.detach(), "box": loss_box.detach()}


def soft_skeleton(x: torch.Tensor, iterations: int = 5) -> torch.Tensor:
    """Soft morphological skeleton (Shit et al., clDice, 2021) of probabilities x (B, C, H, W) in [0, 1]:
    iterative soft erosion (min-pooling as -maxpool(-x)) and opening; differentiable, no thresholds."""

    def erode(t):
        return torch.minimum(-F.max_pool2d(-t, (3, 1), 1, (1, 0)), -F.max_pool2d(-t, (1, 3), 1, (0, 1)))

    def dilate(t):
        return F.max_pool2d(t, 3, 1, 1)

    skel = F.relu(x - dilate(erode(x)))
    for _ in range(iterations):
        x = erode(x)
        delta = F.relu(x - dilate(erode(x)))
        skel = skel + F.relu(delta - skel * delta)
    return skel


class SegmentationLoss(nn.Module):
    """Cross-entropy + soft Dice + soft clDice over the non-background classes.

    Computed in float32 from the logits (softmax / log-softmax inside cross_entropy), so it is stable when
    the forward pass ran in fp16 under AMP. clDice rewards getting each structure's centreline right, which
    is what a 1-2 px wire needs; its weight is `loss.cldice_weight` in the config (0 turns it off).
    """

    def __init__(self, num_classes: int, dice_weight: float = 1.0, class_weights: list[float] | None = None,
                 cldice_weight: float = 0.0):
        super().__init__()
        w = torch.tensor(class_weights, dtype=torch.float32) if class_weights else torch.ones(num_classes)
        if w.numel() != num_classes:
            raise ValueError(f"class_weights has {w.numel()} entries for {num_classes} classes")
        self.register_buffer("class_weights", w)
        self.num_classes = num_classes
        self.dice_weight = dice_weight
        self.cldice_weight = cldice_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> dict:
        """logits (B, K, H, W), target (B, H, W) long with IGNORE_INDEX for unscored pixels."""
        logits = logits.float()
        valid = (target != IGNORE_INDEX).unsqueeze(1)  # (B, 1, H, W)
        # weighted mean over scored pixels; a batch with none scored gives 0, not NaN
        ce = F.cross_entropy(logits, target, weight=self.class_weights, ignore_index=IGNORE_INDEX, reduction="sum")
        ce = ce / self.class_weights[target[valid[:, 0]]].sum().clamp(min=1.0)
        prob = logits.softmax(1) * valid
        onehot = F.one_hot(target.clamp(max=self.num_classes - 1), self.num_classes).permute(0, 3, 1, 2) * valid
        inter = (prob * onehot).sum((0, 2, 3))[1:]
        denom = (prob + onehot).sum((0, 2, 3))[1:]
        dice = 1.0 - ((2 * inter + 1.0) / (denom + 1.0)).mean()
        out = {"loss": ce + self.dice_weight * dice, "ce": ce.detach(), "dice": dice.detach()}
        if self.cldice_weight:
            p, t = prob[:, 1:], onehot[:, 1:].float()  # (B, K-1, H, W) foreground classes
            sp, st = soft_skeleton(p), soft_skeleton(t)
            tprec = ((sp * t).sum((0, 2, 3)) + 1.0) / (sp.sum((0, 2, 3)) + 1.0)
            tsens = ((st * p).sum((0, 2, 3)) + 1.0) / (st.sum((0, 2, 3)) + 1.0)
            cl = 1.0 - (2 * tprec * tsens / (tprec + tsens)).mean()
            out["loss"] = out["loss"] + self.cldice_weight * cl
            out["cldice"] = cl.detach()
        return out
