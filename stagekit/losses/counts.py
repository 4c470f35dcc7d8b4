"""Count likelihoods from scvi-tools, returning per-cell negative log-likelihoods."""

from __future__ import annotations

import torch
from scvi.distributions import NegativeBinomial, ZeroInflatedNegativeBinomial


def count_nll(x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor,
              zi_logits: torch.Tensor | None = None) -> torch.Tensor:
    """Negative log-likelihood summed over genes: NB, or ZINB when `zi_logits` is given."""
    if zi_logits is None:
        dist = NegativeBinomial(mu=mu, theta=theta, validate_args=False)
    else:
        dist = ZeroInflatedNegativeBinomial(mu=mu, theta=theta, zi_logits=zi_logits, validate_args=False)
    return -dist.log_prob(x).sum(-1)
