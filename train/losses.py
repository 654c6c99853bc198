"""Detector and segmenter losses (torchvision.ops where it has them)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_iou, generalized_box_iou_loss, sigmoid_focal_loss

from train.assign import ASSIGNERS, assign_fcos, assign_tal

IGNORE_INDEX = 255


CLS_LOSSES = ("focal", "vfl", "qfl")
DFL_WEIGHT = 0.25  # GFL's distribution-loss weight beside its GIoU weight 2.0 (our box_weight default)


def varifocal_loss(logits: torch.Tensor, quality: torch.Tensor, alpha: float = 0.75,
                   gamma: float = 2.0) -> torch.Tensor:
    """Varifocal loss (VarifocalNet, Zhang et al., 2021), summed: BCE towards the quality target q, weighted
    by q on positives (q > 0) and by alpha * p^gamma on negatives, so easy negatives fade and good boxes
    count most. logits and quality have the same shape."""
    p = logits.sigmoid()
    weight = torch.where(quality > 0, quality, alpha * p.detach().pow(gamma))
    return (F.binary_cross_entropy_with_logits(logits, quality, reduction="none") * weight).sum()


def quality_focal_loss(logits: torch.Tensor, quality: torch.Tensor, beta: float = 2.0) -> torch.Tensor:
    """Quality focal loss (Generalized Focal Loss, Li et al., 2020), summed: BCE towards the quality target,
    scaled by |q - p|^beta; zero where the score already equals the box's quality."""
    p = logits.sigmoid()
    return (F.binary_cross_entropy_with_logits(logits, quality, reduction="none") * (quality - p).abs().pow(beta)).sum()


class DetectionLoss(nn.Module):
    """Classification + GIoU box loss over the assigned locations.

    assigner: fcos (centre sampling) | tal (task-aligned); cls_loss: focal (sigmoid focal on 0/1 targets,
    RetinaNet/FCOS) | vfl | qfl (towards a quality target: TAL's aligned score, or under fcos the IoU of the
    location's predicted box with its box, as VarifocalNet and GFL do). With vfl / qfl the box loss of each
    location is weighted by its quality and both losses are normalised by the quality's sum (YOLOv8); with
    focal the targets are 0/1, the box loss unweighted, and both are normalised by the positives' count.
    """

    def __init__(self, points: torch.Tensor, strides: torch.Tensor, num_classes: int, box_weight: float = 2.0,
                 assigner: str = "fcos", cls_loss: str = "focal", topk: int = 10, alpha: float = 1.0,
                 beta: float = 6.0, dfl_weight: float = DFL_WEIGHT):
        super().__init__()
        if assigner not in ASSIGNERS or cls_loss not in CLS_LOSSES:
            raise ValueError(f"assigner {assigner!r} / cls_loss {cls_loss!r}: choose from {ASSIGNERS} / {CLS_LOSSES}")
        self.register_buffer("points", points)  # (N, 2)
        self.register_buffer("strides", strides)  # (N,)
        self.num_classes = num_classes
        self.box_weight = box_weight
        self.assigner, self.cls_loss = assigner, cls_loss
        self.topk, self.alpha, self.beta = topk, alpha, beta
        self.dfl_weight = dfl_weight

    def assign(self, cls_logits: torch.Tensor, boxes: torch.Tensor,
               target: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One image: cls_logits (N, C), boxes (N, 4) -> positive locations (P,), their box index (P,) and
        quality target (P,)."""
        gt = target["boxes"]
        if self.assigner == "tal":
            match, quality = assign_tal(cls_logits.detach().sigmoid(), boxes.detach(), self.points, self.strides,
                                        gt, target["labels"], self.topk, self.alpha, self.beta)
            pos = (match >= 0).nonzero().squeeze(1)
            return pos, match[pos], quality[pos]
        match = assign_fcos(self.points, self.strides, gt)
        pos = (match >= 0).nonzero().squeeze(1)
        if self.cls_loss == "focal":
            return pos, match[pos], torch.ones(pos.numel(), device=boxes.device)
        iou = box_iou(boxes[pos].detach().float(), gt[match[pos]].float()).diagonal().clamp(0, 1)
        return pos, match[pos], iou

    def forward(self, cls_logits: torch.Tensor, boxes: torch.Tensor, *rest) -> dict:
        """cls_logits (B, N, C), boxes (B, N, 4)[, bins (B, N, 4, K) of a distribution box head], targets: per
        image {"boxes": (M, 4), "labels": (M,)} (the model's outputs, then the targets, as the loop passes them)."""
        *bins, targets = rest
        bins = bins[0] if bins else None
        cls_t = torch.zeros_like(cls_logits, dtype=torch.float32)  # (B, N, C) 0/1 or quality targets
        pred_pos, gt_pos, w_pos, bins_pos, where_pos = [], [], [], [], []
        for i, t in enumerate(targets):
            pos, match, quality = self.assign(cls_logits[i], boxes[i], t)
            if pos.numel() == 0:
                continue
            cls_t[i, pos, t["labels"][match]] = quality
            pred_pos.append(boxes[i, pos])
            gt_pos.append(t["boxes"][match])
            w_pos.append(quality)
            if bins is not None:
                bins_pos.append(bins[i, pos])
                where_pos.append(pos)
        soft = self.cls_loss != "focal"
        weights = torch.cat(w_pos) if w_pos else cls_t.new_zeros(0)
        norm = max(1.0, float(weights.sum())) if soft else max(1.0, float(weights.numel()))
        logits = cls_logits.float()
        if self.cls_loss == "vfl":
            loss_cls = varifocal_loss(logits, cls_t) / norm
        elif self.cls_loss == "qfl":
            loss_cls = quality_focal_loss(logits, cls_t) / norm
        else:
            loss_cls = sigmoid_focal_loss(logits, (cls_t > 0).float(), reduction="sum") / norm
        if pred_pos:
            giou = generalized_box_iou_loss(torch.cat(pred_pos).float(), torch.cat(gt_pos), reduction="none")
            loss_box = (giou * (weights if soft else 1.0)).sum() / norm
        else:
            loss_box = boxes.sum() * 0.0
        total = loss_cls + self.box_weight * loss_box
        out = {"cls": loss_cls.detach(), "box": loss_box.detach()}
        if bins is not None:
            if bins_pos:
                where = torch.cat(where_pos)
                dfl = distribution_focal_loss(torch.cat(bins_pos).float(), torch.cat(gt_pos), self.points[where],
                                              self.strides[where])
                loss_dfl = (dfl * (weights if soft else 1.0)).sum() / norm
            else:
                loss_dfl = bins.sum() * 0.0
            total = total + self.dfl_weight * loss_dfl
            out["dfl"] = loss_dfl.detach()
        return {"loss": total, **out}


def distribution_focal_loss(bins: torch.Tensor, gt: torch.Tensor, points: torch.Tensor,
                            strides: torch.Tensor) -> torch.Tensor:
    """Distribution Focal Loss (GFL, Li et al., 2020) per location: bins (P, 4, K) logits over 0..K-1 strides,
    gt (P, 4) xyxy boxes, points (P, 2), strides (P,) -> (P,) mean over the four sides of the cross-entropy to
    the two bins around the true distance, weighted by nearness (the distance is clamped into the bins)."""
    k = bins.shape[-1]
    ltrb = torch.cat([points - gt[:, :2], gt[:, 2:] - points], 1) / strides[:, None]  # (P, 4) in strides
    d = ltrb.clamp(0, k - 1 - 0.01)
    left = d.floor().long()
    w_right = d - left
    logp = bins.log_softmax(-1)  # (P, 4, K)
    nll_left = -logp.gather(-1, left[..., None]).squeeze(-1)
    nll_right = -logp.gather(-1, (left + 1)[..., None]).squeeze(-1)
    return ((1 - w_right) * nll_left + w_right * nll_right).mean(1)


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
    """Cross-entropy + soft Dice + soft clDice + Lovasz-softmax over the non-background classes.

    Computed in float32 from the logits (softmax / log-softmax inside cross_entropy), so it is stable when
    the forward pass ran in fp16 under AMP. clDice rewards getting each structure's centreline right, which
    is what a 1-2 px wire needs; Lovasz-softmax optimises a convex surrogate of the IoU itself. Their weights
    are `loss.cldice_weight` and `loss.lovasz_weight` in the config (0 turns a term off, the default).
    """

    def __init__(self, num_classes: int, dice_weight: float = 1.0, class_weights: list[float] | None = None,
                 cldice_weight: float = 0.0, lovasz_weight: float = 0.0):
        super().__init__()
        w = torch.tensor(class_weights, dtype=torch.float32) if class_weights else torch.ones(num_classes)
        if w.numel() != num_classes:
            raise ValueError(f"class_weights has {w.numel()} entries for {num_classes} classes")
        self.register_buffer("class_weights", w)
        self.num_classes = num_classes
        self.dice_weight = dice_weight
        self.cldice_weight = cldice_weight
        self.lovasz_weight = lovasz_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> dict:
        """logits (B, K, H, W) or at a stride of it (upsampled as deploy.postprocess does), target (B, H, W) long
        with IGNORE_INDEX for unscored pixels."""
        logits = logits.float()
        if logits.shape[-2:] != target.shape[-2:]:
            logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear")
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
            cl = cldice_loss(prob[:, 1:], onehot[:, 1:].float())
            out["loss"] = out["loss"] + self.cldice_weight * cl
            out["cldice"] = cl.detach()
        if self.lovasz_weight:
            lov = lovasz_loss(prob, target, valid[:, 0])
            out["loss"] = out["loss"] + self.lovasz_weight * lov
            out["lovasz"] = lov.detach()
        return out


def cldice_loss(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """1 - soft clDice, averaged over classes: p, t (B, K-1, H, W) foreground probabilities and one-hot truth."""
    sp, st = soft_skeleton(p), soft_skeleton(t)
    tprec = ((sp * t).sum((0, 2, 3)) + 1.0) / (sp.sum((0, 2, 3)) + 1.0)
    tsens = ((st * p).sum((0, 2, 3)) + 1.0) / (st.sum((0, 2, 3)) + 1.0)
    return 1.0 - (2 * tprec * tsens / (tprec + tsens)).mean()


def lovasz_loss(prob: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Lovasz-softmax over the foreground classes present in the batch (the paper's default): prob (B, K, H, W),
    target and valid (B, H, W); scored pixels only. 0 when no foreground class is present."""
    p, t = prob.permute(0, 2, 3, 1)[valid], target[valid]  # (P, K), (P,)
    present = [k for k in range(1, prob.shape[1]) if (t == k).any()]
    if not present:
        return prob.sum() * 0  # keeps the graph (and the dtype) of the other terms
    return torch.stack([lovasz_jaccard(p[:, k], t == k) for k in present]).mean()


def lovasz_jaccard(prob: torch.Tensor, fg: torch.Tensor) -> torch.Tensor:
    """Lovasz-softmax term of one class (Berman et al. 2018): the Lovasz extension of the Jaccard loss 1 - IoU,
    evaluated at the pixel errors |fg - prob|. prob (P,) in [0, 1], fg (P,) bool. Exactly 1 - IoU for 0/1 probs."""
    fg = fg.float()
    errors = (fg - prob).abs()
    errors, order = errors.sort(descending=True)
    fg = fg[order]
    inter = fg.sum() - fg.cumsum(0)  # (P,) intersection left if the pixels up to i are predicted wrong
    union = fg.sum() + (1 - fg).cumsum(0)
    jaccard = 1 - inter / union.clamp(min=1.0)
    grad = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])  # (P,) marginal Jaccard loss of each error
    return torch.dot(errors, grad)
