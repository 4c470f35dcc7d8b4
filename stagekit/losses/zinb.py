"""scvi-tools' ZINB negative log-likelihood with its gradient taken in the forward pass (one autograd node).

`log_zinb_positive` through autograd keeps about twenty cells x genes tensors per call for the backward pass;
at SATURN's real shapes (4,096 cells x 8,000 genes per species) each is 131 MB. Here the forward computes the
per-cell NLL and, when a gradient is needed, d NLL / d mu, d theta and d pi in the same passes, and keeps only
those three. The formulas are scvi-tools' (same eps, same zero / non-zero cases); tests/test_zinb.py pins value
and gradient to scvi-tools' public `log_zinb_positive` (float32 and float64, zero counts, very large and very
small theta, pi near 0 and 1).

With t = theta, m = mu, p = pi logits, T = t + m + eps, a = -p + t (log(t + eps) - log T):
  x = 0:  log L = softplus(a) - softplus(-p)
  x > 0:  log L = a - softplus(-p) + x (log(m + eps) - log T) + lgamma(x + t) - lgamma(t) - lgamma(x + 1)
and da/dp = -1, da/dm = -t / T, da/dt = log(t + eps) - log T + t (1 / (t + eps) - 1 / T).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from stagekit.losses.counts import digamma

EPS = 1e-8  # scvi-tools' default


def _nll_and_gradients(x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor, pi: torch.Tensor,
                       gradients: bool) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    zero, nonzero = x < EPS, x > EPS  # scvi-tools' two cases (a count equal to eps is in neither)
    log_theta = torch.log(theta + EPS)
    total = mu + theta + EPS
    log_ratio = log_theta - torch.log(total)  # log(t + eps) - log T
    a = log_ratio * theta - pi
    softplus_neg_pi = F.softplus(-pi)
    log_mu_ratio = torch.log(mu + EPS).sub_(log_theta).add_(log_ratio)  # log(m + eps) - log T
    nonzero_ll = (a - softplus_neg_pi).add_(x * log_mu_ratio).add_(torch.lgamma(x + theta)).sub_(
        torch.lgamma(theta)).sub_(torch.lgamma(x + 1))
    zero_ll = F.softplus(a).sub_(softplus_neg_pi)
    nll = -(torch.where(nonzero, nonzero_ll, 0.0).add_(torch.where(zero, zero_ll, 0.0))).sum(-1)
    if not gradients:
        return nll, ()
    del nonzero_ll, zero_ll, log_mu_ratio, softplus_neg_pi
    sig_a, sig_p = torch.sigmoid(a), torch.sigmoid(pi)
    inverse_total = total.reciprocal_()
    grad_pi = torch.where(nonzero, sig_p, torch.where(zero, sig_a + sig_p - 1.0, 0.0))
    grad_mu = torch.where(nonzero, (x + theta) * inverse_total - x / (mu + EPS),
                          torch.where(zero, sig_a * theta * inverse_total, 0.0))
    da_dtheta = log_ratio.add_(theta * ((theta + EPS).reciprocal() - inverse_total))
    nonzero_dtheta = (da_dtheta - x * inverse_total).add_(digamma(x + theta)).sub_(digamma(theta))
    grad_theta = -torch.where(nonzero, nonzero_dtheta, torch.where(zero, sig_a * da_dtheta, 0.0))
    return nll, (grad_mu, grad_theta, grad_pi)


CHUNK_ELEMENTS = 2**20  # cells x genes per block of rows: the dozen temporaries of a block stay in cache


class _ZinbNll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
        gradients = any(ctx.needs_input_grad[1:])
        theta_full = theta.expand_as(mu)  # a view: per-gene theta is not copied
        nll = mu.new_empty(mu.shape[:-1])
        grads = tuple(torch.empty_like(mu) for _ in range(3)) if gradients else ()
        rows = max(1, CHUNK_ELEMENTS // max(1, mu.shape[-1]))
        for start in range(0, len(mu), rows):  # blocks of cells: temporaries of one block only
            block = slice(start, start + rows)
            theta_block = theta if theta.dim() == 1 else theta_full[block]
            nll[block], block_grads = _nll_and_gradients(x[block], mu[block], theta_block, pi[block], gradients)
            for whole, part in zip(grads, block_grads, strict=True):
                whole[block] = part
        ctx.theta_shape = theta.shape
        ctx.save_for_backward(*grads)
        return nll

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_mu, grad_theta, grad_pi = ctx.saved_tensors
        per_cell = grad.unsqueeze(-1)
        need = ctx.needs_input_grad
        return (None,
                grad_mu * per_cell if need[1] else None,
                (grad_theta * per_cell).sum_to_size(ctx.theta_shape) if need[2] else None,
                grad_pi * per_cell if need[3] else None)


def zinb_nll(x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
    """Per-cell ZINB negative log-likelihood summed over genes: -scvi.log_zinb_positive(x, mu, theta, pi).sum(-1).
    `theta` per gene (genes,) or per cell and gene; `pi` the zero-inflation logits."""
    return _ZinbNll.apply(x, mu, theta, pi)
