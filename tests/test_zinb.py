"""The fused ZINB likelihood against scvi-tools' log_zinb_positive, in value and gradient."""

import pytest
import torch
from scvi.distributions._negative_binomial import log_zinb_positive

from stagekit.losses.zinb import zinb_nll


def _inputs(dtype: torch.dtype, theta_scale: float, pi_shift: float, per_cell_theta: bool = False):
    generator = torch.Generator().manual_seed(0)
    cells, genes = 64, 40
    x = torch.poisson(torch.rand(cells, genes, generator=generator, dtype=torch.float64) * 6,
                      generator=generator).to(dtype)
    x[:, :5] = 0  # whole genes of zeros
    x[0, 5] = 250.0  # a large count
    mu = (torch.rand(cells, genes, generator=generator, dtype=dtype) * 8 + 1e-3)
    shape = (cells, genes) if per_cell_theta else (genes,)
    theta = (torch.rand(shape, generator=generator, dtype=dtype) + 0.05) * theta_scale
    pi = torch.randn(cells, genes, generator=generator, dtype=dtype) * 2 + pi_shift
    return x, mu, theta, pi


def _value_and_grads(fn, x, mu, theta, pi):
    leaves = [t.clone().requires_grad_() for t in (mu, theta, pi)]
    weights = torch.linspace(0.5, 2.0, len(x), dtype=x.dtype)  # a non-uniform upstream gradient per cell
    nll = fn(x, *leaves)
    (nll * weights).sum().backward()
    return nll.detach(), [t.grad for t in leaves]


def _scvi(x, mu, theta, pi):
    return -log_zinb_positive(x, mu, theta, pi).sum(-1)


@pytest.mark.parametrize("theta_scale", [1e-4, 1.0, 1e6])
@pytest.mark.parametrize("pi_shift", [-15.0, 0.0, 15.0])  # dropout probability near 0, middling, near 1
def test_value_and_gradient_match_scvi_tools(theta_scale: float, pi_shift: float) -> None:
    """float64: equal to scvi-tools to 1e-9. float32: no further from scvi-tools' float64 value than scvi-tools'
    own float32 result (at theta 1e6, lgamma(x + theta) - lgamma(theta) cancels to ~1 in float32 whatever the
    order of the sums; the two orders differ)."""
    inputs = _inputs(torch.float64, theta_scale, pi_shift)
    ours, our_grads = _value_and_grads(zinb_nll, *inputs)
    exact, exact_grads = _value_and_grads(_scvi, *inputs)
    assert torch.allclose(ours, exact, rtol=1e-9, atol=1e-9)
    for name, a, b in zip(("mu", "theta", "pi"), our_grads, exact_grads, strict=True):
        assert (a - b).abs().max() <= 1e-8 * b.abs().max().clamp_min(1.0), name

    single = [t.float() for t in inputs]
    ours, our_grads = _value_and_grads(zinb_nll, *single)
    theirs, their_grads = _value_and_grads(_scvi, *single)

    def error(value: torch.Tensor, reference: torch.Tensor) -> float:
        return float((value.double() - reference).abs().max() / reference.abs().max().clamp_min(1.0))

    assert error(ours, exact) <= max(2 * error(theirs, exact), 1e-5)
    for name, a, b, ref in zip(("mu", "theta", "pi"), our_grads, their_grads, exact_grads, strict=True):
        assert error(a, ref) <= max(2 * error(b, ref), 1e-5), name


def test_per_cell_theta_and_no_gradient_mode() -> None:
    inputs = _inputs(torch.float64, 1.0, 0.0, per_cell_theta=True)
    ours, our_grads = _value_and_grads(zinb_nll, *inputs)
    theirs, their_grads = _value_and_grads(_scvi, *inputs)
    assert torch.allclose(ours, theirs) and all(torch.allclose(a, b) for a, b in zip(our_grads, their_grads,
                                                                                    strict=True))
    with torch.no_grad():
        assert torch.allclose(zinb_nll(*inputs), theirs)


def test_blocks_of_cells_give_the_same_value_and_gradient(monkeypatch: pytest.MonkeyPatch) -> None:
    import stagekit.losses.zinb as zinb

    inputs = _inputs(torch.float64, 1.0, 0.0)
    whole, whole_grads = _value_and_grads(zinb_nll, *inputs)
    monkeypatch.setattr(zinb, "CHUNK_ELEMENTS", 7 * inputs[0].shape[1])  # blocks of 7 cells, the last one short
    blocks, block_grads = _value_and_grads(zinb_nll, *inputs)
    # equal up to rounding (vectorised loops split the rows differently)
    assert torch.allclose(whole, blocks, rtol=1e-12) and all(
        torch.allclose(a, b, rtol=1e-12, atol=1e-12) for a, b in zip(whole_grads, block_grads, strict=True))


def test_mixed_precision_inputs_promote_like_scvi_tools() -> None:
    x, mu, theta, pi = _inputs(torch.float64, 1.0, 0.0)
    mixed = (x.float(), mu.float(), theta, pi.float())  # a float64 dispersion beside float32 means
    assert zinb_nll(*mixed).dtype == _scvi(*mixed).dtype == torch.float64
    assert torch.allclose(zinb_nll(*mixed), _scvi(*mixed))
