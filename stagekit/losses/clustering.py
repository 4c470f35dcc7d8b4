"""Deep embedded clustering (DEC) and contrastive losses."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def student_t_assignment(z: torch.Tensor, centres: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Soft assignment q_ij proportional to (1 + |z_i - mu_j|^2 / alpha)^(-(alpha + 1) / 2)."""
    distance = torch.cdist(z, centres).pow(2)
    q = (1.0 + distance / alpha).pow(-(alpha + 1.0) / 2.0)
    return q / q.sum(-1, keepdim=True)


def target_distribution(q: torch.Tensor, balance: float = 1.0) -> torch.Tensor:
    """p_ij = (q_ij^2 / f_j^balance) normalised per cell, f_j = sum_i q_ij: sharpens confident assignments.

    balance = 1 is DEC's target; it favours small clusters, which moves boundaries into large clusters on
    unbalanced data. balance = 0 sharpens without that pull.
    """
    weight = q.pow(2) / q.sum(0, keepdim=True).pow(balance)
    return weight / weight.sum(-1, keepdim=True)


def dec_kl(p: torch.Tensor, q: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """KL(P || Q) per cell, averaged."""
    return (p * (torch.log(p + eps) - torch.log(q + eps))).sum(-1).mean()


def nt_xent(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """Normalised-temperature cross-entropy: row i of z_a and z_b are a positive pair, other rows negatives."""
    a, b = F.normalize(z_a, dim=-1), F.normalize(z_b, dim=-1)
    logits = a @ b.T / temperature
    target = torch.arange(len(a), device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def assignment_consistency(q_a: torch.Tensor, q_b: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Symmetric KL between the soft assignments of paired cells: pulls a group into one cluster."""
    la, lb = torch.log(q_a + eps), torch.log(q_b + eps)
    return 0.5 * ((q_a * (la - lb)).sum(-1) + (q_b * (lb - la)).sum(-1)).mean()
