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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("theta_scale", [1e-4, 1.0, 1e6])
@pytest.mark.parametrize("pi_shift", [-15.0, 0.0, 15.0])  # dropout probability near 0, middling, near 1
def test_value_and_gradient_match_scvi_tools(dtype: torch.dtype, theta_scale: float, pi_shift: float) -> None:
    inputs = _inputs(dtype, theta_scale, pi_shift)
    ours, our_grads = _value_and_grads(zinb_nll, *inputs)
    theirs, their_grads = _value_and_grads(_scvi, *inputs)
    rtol = 1e-4 if dtype == torch.float32 else 1e-9
    assert torch.allclose(ours, theirs, rtol=rtol, atol=rtol)
    for name, a, b in zip(("mu", "theta", "pi"), our_grads, their_grads, strict=True):
        scale = b.abs().max().clamp_min(1.0)
        assert (a - b).abs().max() <= rtol * 10 * scale, name


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
