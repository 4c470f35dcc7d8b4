"""SATURN's regularisers on the gene -> macrogene weights."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def weight_l1(log_weights: torch.Tensor) -> torch.Tensor:
    """sum |W| with W = exp(log weights)."""
    return log_weights.exp().sum()


def embedding_similarity_loss(log_weights: torch.Tensor, protein: torch.Tensor, partners: torch.Tensor
                              ) -> torch.Tensor:
    """mean over genes g of (cos(u_g, u_j) - cos(e_g, e_j))^2 for a random partner gene j of each g.

    u_g is gene g's row of W (its profile over macrogenes), e_g its protein embedding: genes with similar
    proteins should load on similar macrogenes.
    """
    u = log_weights.exp()
    cos_u = F.cosine_similarity(u, u[partners], dim=-1)
    cos_e = F.cosine_similarity(protein, protein[partners], dim=-1)
    return (cos_u - cos_e).pow(2).mean()
