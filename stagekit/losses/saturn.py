"""SATURN's regularisers on the gene -> macrogene weights."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def weight_l1(weights: torch.Tensor) -> torch.Tensor:
    """sum |W| of the (positive) gene -> macrogene weights."""
    return weights.sum()


def embedding_similarity_loss(weights: torch.Tensor, protein: torch.Tensor, partners: torch.Tensor
                              ) -> torch.Tensor:
    """mean over genes g of (cos(u_g, u_j) - cos(e_g, e_j))^2 for a random partner gene j of each g.

    u_g is gene g's row of W (its profile over macrogenes), e_g its protein embedding: genes with similar
    proteins should load on similar macrogenes. The cosine is a row-wise dot product over the product of norms,
    which keeps two genes x macrogenes tensors for the backward pass (F.cosine_similarity keeps more).
    """
    norms = weights.norm(dim=-1)
    cos_u = (weights * weights[partners]).sum(-1) / (norms * norms[partners]).clamp_min(1e-8)
    with torch.no_grad():  # constant: the embeddings are not trained
        cos_e = F.cosine_similarity(protein, protein[partners], dim=-1)
    return (cos_u - cos_e).pow(2).mean()
