"""The count likelihoods are scvi-tools' NB / ZINB: same values and gradients as the distribution classes."""

import pytest
import torch
from scvi.distributions import NegativeBinomial, ZeroInflatedNegativeBinomial

from stagekit.losses.counts import count_nll, digamma


@pytest.mark.parametrize("zero_inflated", [False, True])
def test_count_nll_matches_scvi_distribution_classes(zero_inflated: bool) -> None:
    g = torch.Generator().manual_seed(0)  # float64: float32 sums over cells differ in the last bits
    x = torch.poisson(torch.rand(64, 30, generator=g, dtype=torch.float64) * 5, generator=g)
    mu = (torch.rand(64, 30, generator=g, dtype=torch.float64) * 5 + 0.1).requires_grad_()
    log_theta = torch.randn(30, generator=g, dtype=torch.float64).requires_grad_()  # per gene, as the models keep it
    zi = torch.randn(64, 30, generator=g, dtype=torch.float64).requires_grad_() if zero_inflated else None

    ours = count_nll(x, mu, log_theta.exp(), zi)
    theta = log_theta.exp()
    dist = (ZeroInflatedNegativeBinomial(mu=mu, theta=theta, zi_logits=zi) if zero_inflated
            else NegativeBinomial(mu=mu, theta=theta))
    reference = -dist.log_prob(x).sum(-1)
    torch.testing.assert_close(ours, reference)

    inputs = [mu, log_theta] + ([zi] if zero_inflated else [])
    grads = torch.autograd.grad(ours.sum(), inputs)
    reference_grads = torch.autograd.grad(reference.sum(), inputs)
    for a, b in zip(grads, reference_grads, strict=True):
        torch.testing.assert_close(a, b)


def test_digamma_matches_torch_over_the_range_counts_and_dispersions_reach() -> None:
    x = torch.cat([torch.logspace(-6, 6, 2000, dtype=torch.float64), torch.arange(1, 500, dtype=torch.float64)])
    torch.testing.assert_close(digamma(x), torch.digamma(x), rtol=1e-9, atol=1e-9)
    x32 = x.float()
    torch.testing.assert_close(digamma(x32), torch.digamma(x32), rtol=1e-5, atol=1e-5)
