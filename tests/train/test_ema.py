"""The weight EMA and its warm-up ramp (train/ema.py)."""

import math

import torch
from torch import nn

from train.ema import ModelEMA


def test_the_ema_follows_its_ramp_for_the_given_tau():
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    for tau in (500.0, 100.0):
        ema = ModelEMA(model, decay=0.99, tau=tau)
        with torch.no_grad():
            model.weight.fill_(1.0)  # the trained weight jumps to 1; the EMA copy starts at 0
        keep = 1.0
        for u in range(1, 201):
            ema.update(model)
            keep *= 0.99 * (1 - math.exp(-u / tau))  # the share of the start value still in the average
        assert abs(ema.module.weight.item() - (1 - keep)) < 1e-5
        with torch.no_grad():
            model.weight.zero_()
