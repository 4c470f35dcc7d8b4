"""Distances between sets of cells (a predicted and an observed perturbed set), one per set in a batch.

Energy distance and Sinkhorn divergence come from geomloss's SamplesLoss (the library STATE uses); `mse` compares
the sets cell by cell in their given order, which only makes sense when the order is meaningful."""

from __future__ import annotations

from functools import cache

import torch

SET_LOSSES = ("energy", "sinkhorn", "mse")


@cache
def _samples_loss(kind: str, blur: float):
    from geomloss import SamplesLoss

    return SamplesLoss(kind, blur=blur)


def set_distance(predicted: torch.Tensor, observed: torch.Tensor, kind: str = "energy",
                 blur: float = 0.05) -> torch.Tensor:
    """(sets,) distances between `predicted` and `observed`, both (sets, cells, features)."""
    if kind not in SET_LOSSES:
        raise ValueError(f"set loss {kind!r}: one of {', '.join(SET_LOSSES)}")
    if kind == "mse":
        return ((predicted - observed) ** 2).mean(dim=(1, 2))
    return _samples_loss(kind, blur)(predicted.float().contiguous(), observed.float().contiguous())
