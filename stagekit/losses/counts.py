"""Count likelihoods from scvi-tools, returning per-cell negative log-likelihoods."""

from __future__ import annotations

from functools import cache

import torch


@cache
def _scvi_likelihoods():
    """scvi-tools' log_nb_positive and log_zinb_positive: the functions behind its NegativeBinomial /
    ZeroInflatedNegativeBinomial.log_prob. Called directly because the classes broadcast a per-gene theta to
    cells x genes (so lgamma(theta), and digamma(theta) in the backward pass, run once per cell instead of once
    per gene) and re-check the support of the counts on every call (the counts are validated once, when read).
    tests/test_losses.py pins the values to the classes'.

    scvi.distributions does not export the functions (scvi-tools 1.4), so they come from the module that defines
    them; pyproject.toml pins the scvi-tools versions this was tested with. Any scvi import runs scvi's package
    __init__ (its models and data modules, over a thousand beyond torch and lightning), public path or not, so the
    import waits for the first likelihood: commands that only embed cells (cluster-search, extract) or use a
    Gaussian likelihood never load scvi-tools."""
    from scvi.distributions._negative_binomial import log_nb_positive, log_zinb_positive

    return log_nb_positive, log_zinb_positive


def digamma(x: torch.Tensor) -> torch.Tensor:
    """psi(x) for x > 0 in whole-tensor operations: psi(x) = psi(x + 6) - sum_{k<6} 1 / (x + k), and the
    asymptotic series at x + 6 >= 6 (truncation error < 1e-8). In place after the first two buffers: torch.digamma's
    CPU kernel is scalar and costs as much as the rest of the likelihood's backward pass together."""
    shifted = x + 6.0
    inverse = shifted.reciprocal()
    inverse_sq = inverse * inverse
    series = inverse_sq.mul(-1 / 252).add_(1 / 120).mul_(inverse_sq).sub_(1 / 12).mul_(inverse_sq)
    result = shifted.log_().sub_(inverse, alpha=0.5).add_(series)
    for k in range(6):
        result.sub_(torch.add(x, k, out=inverse).reciprocal_())
    return result


class _Lgamma(torch.autograd.Function):
    """torch.lgamma, its gradient psi(x) from `digamma` above."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.lgamma(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * digamma(x)


def lgamma(x: torch.Tensor) -> torch.Tensor:
    """torch.lgamma; where a gradient is needed, the one from `digamma` above."""
    return _Lgamma.apply(x) if x.requires_grad else torch.lgamma(x)


def count_nll(x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor,
              zi_logits: torch.Tensor | None = None) -> torch.Tensor:
    """Negative log-likelihood summed over genes: NB (scvi-tools' log_nb_positive), or ZINB when `zi_logits` is
    given (scvi-tools' log_zinb_positive computed with its gradient in one pass, stagekit.losses.zinb). `theta` is
    per gene (genes,) or per cell and gene."""
    if zi_logits is None:
        log_nb_positive, _ = _scvi_likelihoods()
        return -log_nb_positive(x, mu, theta, lgamma_fn=lgamma).sum(-1)
    from stagekit.losses.zinb import zinb_nll  # scvi-tools' formula, gradient in the forward pass

    return zinb_nll(x, mu, theta, zi_logits)
