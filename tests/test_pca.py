"""The blockwise PCA agrees with the PCA of all cells at once, whatever the blocks, and is exact."""

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.linalg import subspace_angles
from sklearn.decomposition import PCA

from stagekit.data.pca import covariance_pca


def _cells(n: int = 3000, genes: int = 120, seed: int = 0) -> sp.csr_matrix:
    """Sparse log-count-like values with a low-rank structure (8 programmes) plus noise."""
    rng = np.random.default_rng(seed)
    rate = np.exp(rng.normal(0, 1, (n, 8)) @ rng.normal(0, 0.6, (8, genes)) - 1.0)
    return sp.csr_matrix(np.log1p(rng.poisson(rate)).astype(np.float32))


def _blocks(x: sp.csr_matrix, size: int):
    return (x[i:i + size] for i in range(0, x.shape[0], size))


def test_agrees_with_the_exact_pca_of_every_cell_at_once():
    x = _cells()
    exact = PCA(20, svd_solver="full").fit(x.toarray().astype(np.float64))
    found = covariance_pca(_blocks(x, 700), 20)
    assert np.degrees(subspace_angles(exact.components_.T, found.components.T)).max() < 0.01
    assert np.allclose(found.explained_variance, exact.explained_variance_, rtol=1e-4)
    assert np.allclose(found.explained_variance_ratio, exact.explained_variance_ratio_, rtol=1e-4)
    assert np.allclose(found.mean, exact.mean_, atol=1e-6)
    assert np.allclose(found.components @ found.components.T, np.eye(20), atol=1e-8)


def test_the_blocks_change_nothing_but_rounding_and_the_same_blocks_nothing_at_all():
    x = _cells(seed=1)
    one, many = covariance_pca([x], 10), covariance_pca(_blocks(x, 257), 10)
    assert np.allclose(one.components, many.components, atol=1e-5)  # signs fixed: same vectors, not just spans
    again = covariance_pca((b.toarray() for b in _blocks(x, 257)), 10)  # dense blocks, as read from disk
    assert np.array_equal(many.components, again.components) and np.array_equal(many.mean, again.mean)


def test_needs_two_cells():
    with pytest.raises(ValueError, match="two cells"):
        covariance_pca([np.ones((1, 5))], 2)


def test_subspace_iteration_agrees_where_the_spectrum_has_a_gap():
    """8 programmes: the first 8 components are found to a small angle, the explained variance of 20 within
    0.5 %, and the same blocks give the same components bit for bit."""
    from stagekit.data.pca import subspace_pca

    x = _cells(seed=2)
    exact = covariance_pca(_blocks(x, 700), 20)

    def blocks():
        return _blocks(x, 700)

    found = subspace_pca(blocks, 20, seed=0, iterations=8, oversample=20)
    assert np.degrees(subspace_angles(exact.components[:8].T, found.components[:8].T)).max() < 0.1
    assert abs(found.explained_variance_ratio.sum() / exact.explained_variance_ratio.sum() - 1) < 5e-3
    assert np.isclose(found.total_variance, exact.total_variance, rtol=1e-6)
    assert np.allclose(found.mean, exact.mean, atol=1e-6)
    assert np.allclose(found.components @ found.components.T, np.eye(20), atol=1e-8)
    assert np.array_equal(found.components, subspace_pca(blocks, 20, seed=0, iterations=8, oversample=20).components)
