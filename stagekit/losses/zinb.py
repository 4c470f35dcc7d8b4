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
and da/dp = -1, da/dm = -t / T, da/dt = log(t + eps) - log T + t (1 / (t + eps) - 1 / T). Counts are taken as
zero when x <= eps (scvi-tools treats x == eps as neither case; counts are integers).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from stagekit.losses.counts import digamma

EPS = 1e-8  # scvi-tools' default


def _nll_and_gradients(x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor, pi: torch.Tensor,
                       gradients: bool) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Per-cell NLL and (if `gradients`) d NLL / d mu, theta, pi of one block of cells. The terms that vanish
    at x = 0 (x log(m / T), the lgamma and digamma differences) are computed on the non-zero counts only:
    most counts are zero, and those terms are the costly ones."""
    nonzero = x > EPS
    flat = nonzero.view(-1).nonzero().squeeze(1)  # positions of the non-zero counts
    xv = x.reshape(-1)[flat]
    mv = mu.reshape(-1)[flat]
    tv = theta[flat % theta.shape[0]] if theta.dim() == 1 else theta.reshape(-1)[flat]
    log_theta = torch.log(theta + EPS)
    total = mu + theta + EPS
    log_ratio = log_theta - torch.log(total)  # log(t + eps) - log T
    a = log_ratio * theta - pi
    softplus_neg_pi = F.softplus(-pi)
    log_total_v = torch.log(tv + mv + EPS)
    ll = torch.where(nonzero, a, F.softplus(a)).sub_(softplus_neg_pi)
    sparse_ll = (xv * (torch.log(mv + EPS) - log_total_v)).add_(torch.lgamma(xv + tv)).sub_(
        torch.lgamma(tv)).sub_(torch.lgamma(xv + 1))
    nll = -ll.view(-1).index_add_(0, flat, sparse_ll).view_as(ll).sum(-1)
    if not gradients:
        return nll, ()
    del ll, softplus_neg_pi, sparse_ll
    sig_a = torch.sigmoid(a)
    kept = torch.where(nonzero, 1.0, sig_a)  # what of d a multiplies in: 1 for x > 0, sigmoid(a) for x = 0
    grad_pi = torch.where(nonzero, torch.sigmoid(pi), sig_a - torch.sigmoid(-pi))  # not sigmoid(p) + sig_a - 1:
    # that cancels to 0 in float32 once p > ~16
    inverse_total = total.reciprocal_()
    grad_mu = (theta * inverse_total).mul_(kept)
    inverse_total_v = (tv + mv + EPS).reciprocal_()
    # x / T - x / (m + eps) = -x t / (T (m + eps)): no cancellation when t is small
    grad_mu.view(-1).index_add_(0, flat, (xv * tv).mul_(inverse_total_v).div_(mv + EPS).neg_())
    grad_theta = log_ratio.add_(theta * ((theta + EPS).reciprocal() - inverse_total)).mul_(kept).neg_()
    grad_theta.view(-1).index_add_(0, flat, (xv * inverse_total_v).sub_(digamma(xv + tv)).add_(digamma(tv)))
    return nll, (grad_mu, grad_theta, grad_pi)


CHUNK_ELEMENTS = 2**20  # cells x genes per block of rows: a dozen temporaries of this size, not of the batch


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
    @once_differentiable  # the saved gradients are constants: no second derivative
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
    `theta` per gene (genes,) or per cell and gene; `pi` the zero-inflation logits, cells x genes like `mu`."""
    if mu.dim() != 2 or pi.shape != mu.shape or x.shape != mu.shape:
        raise ValueError(f"zinb_nll needs x, mu and pi of one cells x genes shape; got {tuple(x.shape)}, "
                         f"{tuple(mu.shape)}, {tuple(pi.shape)}")
    dtype = torch.promote_types(torch.promote_types(mu.dtype, theta.dtype), pi.dtype)  # as scvi-tools' arithmetic
    x, mu, theta, pi = (t.to(dtype) for t in (x, mu, theta, pi))
    if not torch.is_grad_enabled():  # no gradient buffers when nothing will ask for them
        return _nll_and_gradients(x, mu, theta, pi, gradients=False)[0]
    return _ZinbNll.apply(x.contiguous(), mu.contiguous(), theta, pi.contiguous())
