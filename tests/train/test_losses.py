import math

import pytest
import torch

from train.losses import (
    DetectionLoss,
    SegmentationLoss,
    distribution_focal_loss,
    lovasz_jaccard,
    quality_focal_loss,
    varifocal_loss,
)
from train.models import Detector


def test_varifocal_weights_positives_by_quality_and_negatives_by_their_score():
    logits = torch.zeros(3)  # p = 0.5 everywhere
    q = torch.tensor([1.0, 0.5, 0.0])
    bce = [math.log(2), math.log(2), math.log(2)]  # BCE(0.5 -> q) = ln 2 for any q
    expected = 1.0 * bce[0] + 0.5 * bce[1] + 0.75 * 0.5**2 * bce[2]
    assert float(varifocal_loss(logits, q)) == pytest.approx(expected, rel=1e-5)


def test_quality_focal_is_zero_where_the_score_equals_the_quality():
    assert float(quality_focal_loss(torch.zeros(1), torch.tensor([0.5]))) == pytest.approx(0.0, abs=1e-7)
    p = torch.tensor([0.8])  # target 0.2: BCE * |0.2 - 0.8|^2
    bce = -(0.2 * math.log(0.8) + 0.8 * math.log(0.2))
    assert float(quality_focal_loss(torch.logit(p), torch.tensor([0.2]))) == pytest.approx(bce * 0.36, rel=1e-4)


@pytest.mark.parametrize("assigner,cls_loss,bins", [("fcos", "focal", 0), ("fcos", "vfl", 0), ("tal", "vfl", 0),
                                                   ("tal", "qfl", 0), ("fcos", "focal", 16), ("tal", "vfl", 16)])
def test_every_assigner_and_loss_learns_a_batch(assigner, cls_loss, bins):
    torch.manual_seed(0)
    m = Detector(num_classes=2, channels=16, head_convs=1, box_bins=bins)
    crit = DetectionLoss(*m.points((64, 64)), 2, assigner=assigner, cls_loss=cls_loss)
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    targets = [{"boxes": torch.tensor([[8.0, 8, 40, 40]]), "labels": torch.tensor([1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    first = None
    for _ in range(10):
        out = crit(*m(x), targets)
        first = first if first is not None else float(out["box"])
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert torch.isfinite(out["loss"]) and float(out["box"]) < first  # the boxes moved towards the target
    assert ("dfl" in out) == bool(bins)


def test_distribution_loss_is_least_for_the_two_bins_around_the_true_distance():
    points, strides = torch.tensor([[40.0, 40.0]]), torch.tensor([8.0])
    d = torch.tensor([2.25, 3.0, 0.5, 20.0])  # strides; 20 lies past the last of 16 bins: clamped to 14.99
    gt = torch.cat([points - d[:2] * 8, points + d[2:] * 8], 1)  # (1, 4) xyxy
    near = d.clamp(max=14.99)
    exact = torch.full((1, 4, 16), -1e4)
    for i, v in enumerate(near):  # the target distribution itself: (1 - w) on floor(d), w on floor(d) + 1
        lo, w = int(v), float(v - int(v))
        exact[0, i, lo], exact[0, i, lo + 1] = math.log(1 - w + 1e-12), math.log(w + 1e-12)
    torch.testing.assert_close(exact.softmax(-1) @ torch.arange(16.0), near[None], atol=1e-4, rtol=0)
    best = float(distribution_focal_loss(exact, gt, points, strides))
    entropy = float(-sum((p * math.log(p)) for v in near for p in (1 - (v - int(v)), v - int(v)) if p > 0)) / 4
    assert best == pytest.approx(entropy, abs=1e-4)  # its least value: the target distribution's entropy
    shifted = exact.roll(1, dims=-1)  # the same mass one bin further out
    assert float(distribution_focal_loss(shifted, gt, points, strides)) > best + 1


def test_tal_positives_match_the_one_box_with_quality_in_0_1_and_unknown_assigners_are_refused():
    m = Detector(num_classes=3, channels=16, head_convs=1)
    crit = DetectionLoss(*m.points((64, 64)), 3, assigner="tal", cls_loss="vfl")
    logits, boxes = m(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    pos, match, quality = crit.assign(logits[0], boxes[0], {"boxes": torch.tensor([[8.0, 8, 40, 40]]),
                                                           "labels": torch.tensor([2])})
    assert len(pos) > 0 and (match == 0).all() and ((quality >= 0) & (quality <= 1)).all()
    with pytest.raises(ValueError, match="assigner"):
        DetectionLoss(*m.points((64, 64)), 3, assigner="atss")


def test_lovasz_is_one_minus_iou_for_hard_predictions_and_its_gradient_moves_towards_the_labels():
    fg = torch.tensor([1, 1, 0, 0, 1, 0], dtype=torch.bool)
    hard = torch.tensor([1.0, 0, 1, 0, 1, 0])  # 2 of the 4 pixels in the union agree: IoU 0.5
    assert lovasz_jaccard(hard, fg).item() == pytest.approx(0.5)
    assert lovasz_jaccard(fg.float(), fg).item() == 0.0
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, 1] = 1  # a 1-px line
    logits = torch.zeros(1, 2, 4, 4, requires_grad=True)
    lov = lovasz_jaccard(logits.softmax(1)[0, 1].flatten(), target[0].flatten() == 1)
    lov.backward()
    g = logits.grad[0, 1] - logits.grad[0, 0]  # descent raises the line's logit margin, lowers the rest
    assert lov.item() > 0 and (g[1] < 0).all() and (g[[0, 2, 3]] >= 0).all()
    out = SegmentationLoss(2, dice_weight=0.0, lovasz_weight=1.0)(torch.zeros(1, 2, 4, 4), target)
    assert out["lovasz"].item() == pytest.approx(lov.item())
    assert out["loss"].item() == pytest.approx(out["ce"].item() + lov.item())  # the term is in the loss
