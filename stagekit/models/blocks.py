"""Building blocks shared by models."""

from __future__ import annotations

import torch
from torch import nn


def device_of(module: nn.Module) -> torch.device:
    """Where a model's parameters live: inputs built outside the training loop must go there too."""
    return next(module.parameters()).device


class Dropout(nn.Dropout):
    """nn.Dropout whose CPU mask comes from 15-bit random integers, two per 32-bit draw (p rounded to 1/32768):
    torch's CPU Bernoulli sampler is a scalar loop that costs more than the layer it regularises."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or x.device.type != "cpu" or self.inplace:
            return super().forward(x)
        bits = torch.empty((x.numel() + 1) // 2, dtype=torch.int32).random_()  # uniform on [0, 2^31)
        keys = torch.cat([bits & 0x7FFF, bits >> 16])[:x.numel()].view_as(x)  # two independent 15-bit keys
        return (x * (keys >= round(self.p * 32768))).mul_(1.0 / (1.0 - self.p))


def mlp(sizes: list[int], dropout: float) -> nn.Sequential:
    """Linear -> LayerNorm -> ReLU -> Dropout for each consecutive pair of sizes."""
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(n_in, n_out), nn.LayerNorm(n_out), nn.ReLU(), Dropout(dropout)]
    return nn.Sequential(*layers)
