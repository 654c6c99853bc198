import pytest
import torch

from train.assign import assign_tal


def grid(n: int = 8, stride: float = 8.0) -> tuple[torch.Tensor, torch.Tensor]:
    """An n x n grid of stride-8 locations: points (n*n, 2), strides (n*n,)."""
    c = (torch.arange(n, dtype=torch.float32) + 0.5) * stride
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], -1), torch.full((n * n,), stride)


def boxes_around(points: torch.Tensor, half: float) -> torch.Tensor:
    return torch.cat([points - half, points + half], -1)


def test_tal_takes_the_top_k_aligned_locations_inside_the_box_with_normalised_quality():
    pts, strides = grid()
    gt = torch.tensor([[16.0, 16, 48, 48]])  # 4 x 4 locations inside: centres 20, 28, 36, 44
    pred = boxes_around(pts, 4.0)  # 8 px boxes: IoU 64 / 1024 with the box for every inside location
    exact = int(((pts[:, 0] - 28) ** 2 + (pts[:, 1] - 28) ** 2).argmin())
    pred[exact] = gt[0]  # this location predicts the box exactly
    outside = int(((pts[:, 0] - 60) ** 2 + (pts[:, 1] - 60) ** 2).argmin())
    pred[outside] = gt[0]  # a perfect prediction from outside the box is never a candidate
    scores = torch.full((64, 2), 0.5)
    match, quality = assign_tal(scores, pred, pts, strides, gt, torch.tensor([1]), topk=3)
    pos = (match == 0).nonzero().squeeze(1)
    assert len(pos) == 3 and exact in pos.tolist() and outside not in pos.tolist()
    assert quality[exact] == pytest.approx(1.0)  # the best location gets the box's best IoU (1)
    others = [int(i) for i in pos if i != exact]
    expected = (64 / 1024) ** 6  # s^1 * IoU^6 rescaled by max IoU / max alignment = 1 / 0.5
    assert quality[others].tolist() == pytest.approx([expected] * 2, rel=1e-4)
    assert (quality[match < 0] == 0).all()
    # ties among the equally aligned inside locations went to those nearest the box centre (32, 32)
    d = ((pts[others] - 32) ** 2).sum(1)
    assert (d <= ((pts - 32) ** 2).sum(1)[[i for i in range(64) if 16 < pts[i, 0] < 48 and 16 < pts[i, 1] < 48
                                           and i not in pos.tolist()]].min()).all()


def test_tal_score_of_the_box_class_decides_and_a_shared_location_keeps_the_higher_overlap():
    pts, strides = grid()
    gt = torch.tensor([[0.0, 0, 32, 32], [8, 8, 40, 40]])  # overlapping boxes of classes 0 and 1
    pred = boxes_around(pts, 16.0)
    scores = torch.zeros(64, 2)
    shared = int(((pts[:, 0] - 20) ** 2 + (pts[:, 1] - 20) ** 2).argmin())  # inside both
    scores[shared] = torch.tensor([0.9, 0.9])
    pred[shared] = torch.tensor([8.0, 8, 40, 40])  # overlaps box 1 exactly, box 0 less
    match, _ = assign_tal(scores, pred, pts, strides, gt, torch.tensor([0, 1]), topk=2)
    assert match[shared] == 1
    assert (match == 0).sum() == 1 and (match == 1).sum() == 2  # box 0 keeps its second location only


def test_tal_gives_a_box_smaller_than_a_stride_its_nearest_location_and_handles_no_boxes():
    pts, strides = grid()
    tiny = torch.tensor([[30.0, 30, 31, 31]])  # holds no location centre
    match, quality = assign_tal(torch.full((64, 1), 0.5), boxes_around(pts, 4.0), pts, strides, tiny,
                                torch.tensor([0]))
    near = int(((pts - 30.5) ** 2).sum(1).argmin())
    assert match.tolist() == [0 if i == near else -1 for i in range(64)]
    empty = assign_tal(torch.rand(64, 1), boxes_around(pts, 4.0), pts, strides, torch.zeros(0, 4),
                       torch.zeros(0, dtype=torch.long))
    assert (empty[0] == -1).all() and (empty[1] == 0).all()
