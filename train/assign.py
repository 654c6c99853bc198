"""Label assignment for the anchor-free detector: which output location learns which box, and how well.

  fcos  FCOS centre sampling with per-level size ranges (Tian et al., 2019): fixed geometry, no predictions
  tal   task-aligned assignment (TOOD, Feng et al., 2021; YOLOv8/11): the top-k locations inside a box by
        score^alpha * IoU^beta of the current predictions, with a soft quality target per location

Both return, per location, the index of its box (-1 for background); TAL also the quality target that the
classification loss regresses to (varifocal / quality focal) and the box loss is weighted by.
"""

from __future__ import annotations

import torch
from torchvision.ops import box_iou

ASSIGNERS = ("fcos", "tal")


def inside_or_nearest(points: torch.Tensor, strides: torch.Tensor, gt_boxes: torch.Tensor) -> torch.Tensor:
    """(N, M) bool: the location's centre lies inside the box; a box too small to hold any centre gets the
    finest-level location nearest its centre, so tiny objects are still learned."""
    x, y = points[:, 0:1], points[:, 1:2]  # (N, 1)
    inside = (x > gt_boxes[:, 0]) & (x < gt_boxes[:, 2]) & (y > gt_boxes[:, 1]) & (y < gt_boxes[:, 3])
    orphans = ~inside.any(0)  # (M,)
    if orphans.any():
        inside[nearest_finest(points, strides, gt_boxes)[orphans], orphans.nonzero().squeeze(1)] = True
    return inside


def nearest_finest(points: torch.Tensor, strides: torch.Tensor, gt_boxes: torch.Tensor) -> torch.Tensor:
    """(M,) index of the finest-level location nearest each box centre (L1)."""
    cx, cy = (gt_boxes[:, 0] + gt_boxes[:, 2]) / 2, (gt_boxes[:, 1] + gt_boxes[:, 3]) / 2
    far = torch.where(strides == strides.min(), 0.0, float("inf"))[:, None]
    return ((points[:, 0:1] - cx).abs() + (points[:, 1:2] - cy).abs() + far).argmin(0)


@torch.no_grad()
def assign_fcos(points: torch.Tensor, strides: torch.Tensor, gt_boxes: torch.Tensor,
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
        ok[nearest_finest(points, strides, gt_boxes)[orphans], orphans.nonzero().squeeze(1)] = True
    area = ((gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1]))[None].expand(n, m)
    area = torch.where(ok, area, torch.full_like(area, float("inf")))
    best_area, best = area.min(1)
    return torch.where(torch.isfinite(best_area), best, torch.full_like(best, -1))


@torch.no_grad()
def assign_tal(scores: torch.Tensor, pred_boxes: torch.Tensor, points: torch.Tensor, strides: torch.Tensor,
               gt_boxes: torch.Tensor, gt_labels: torch.Tensor, topk: int = 10, alpha: float = 1.0,
               beta: float = 6.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Task-aligned assignment (TOOD) for one image.

    scores (N, C) sigmoid probabilities, pred_boxes (N, 4) xyxy, points (N, 2), strides (N,), gt_boxes (M, 4),
    gt_labels (M,) -> (match (N,) box index or -1, quality (N,) in [0, 1]).

    Alignment t = s^alpha * IoU^beta, with s the score of the box's class and IoU that of the location's
    predicted box. Each box takes its top-k locations by t among those inside it (inside_or_nearest); a
    location taken by several boxes keeps the one its prediction overlaps most. The quality target is t
    rescaled per box so that its best-aligned location gets that box's highest IoU (YOLOv8's normalisation).
    """
    n, m = points.shape[0], gt_boxes.shape[0]
    match = torch.full((n,), -1, dtype=torch.long, device=points.device)
    quality = torch.zeros(n, device=points.device)
    if m == 0:
        return match, quality
    cand = inside_or_nearest(points, strides, gt_boxes)  # (N, M)
    iou = box_iou(pred_boxes.float(), gt_boxes.float()).clamp(min=0) * cand  # (N, M)
    align = scores[:, gt_labels].float().pow(alpha) * iou.pow(beta)  # (N, M)
    # ties (all zero early in training) go to the locations nearest the box centre, not to index order
    centre = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
    closeness = 1.0 / (1.0 + torch.cdist(points, centre))  # (N, M) in (0, 1]
    rank = torch.where(cand, align + 1e-12 * closeness, torch.full_like(align, -1.0))
    top = rank.topk(min(topk, n), dim=0).indices  # (k, M)
    chosen = torch.zeros_like(cand).scatter_(0, top, True) & cand  # (N, M)
    taken = chosen.any(1)
    best = torch.where(chosen, iou, torch.full_like(iou, -1.0)).argmax(1)  # (N,) highest overlap among takers
    match[taken] = best[taken]
    keep = torch.zeros_like(chosen)
    keep[taken, best[taken]] = True
    align, iou = align * keep, iou * keep
    scale = iou.amax(0) / align.amax(0).clamp(min=1e-12)  # (M,)
    quality = (align * scale).amax(1).clamp(0, 1)
    return match, quality
