"""Building blocks shared by models."""

from __future__ import annotations

import torch
from torch import nn


def device_of(module: nn.Module) -> torch.device:
    """Where a model's parameters live: inputs built outside the training loop must go there too."""
    return next(module.parameters()).device


def mlp(sizes: list[int], dropout: float) -> nn.Sequential:
    """Linear -> LayerNorm -> ReLU -> Dropout for each consecutive pair of sizes."""
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(n_in, n_out), nn.LayerNorm(n_out), nn.ReLU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)
