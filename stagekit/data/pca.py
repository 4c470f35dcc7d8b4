"""Principal components from one pass over blocks of cells, whether the cells are in memory or read from disk.

The genes x genes covariance is accumulated block by block (each block centred on its own mean and merged with
Chan, Golub and LeVeque's pairwise update, so no large mean is subtracted from a large sum) and then
eigendecomposed. Unlike a randomized SVD it is exact, and unlike incremental PCA it needs no second pass and no
choice of batch size to agree with the PCA of all cells at once; memory is genes x genes (2,000 genes: 32 MB)
whatever the number of cells. The same blocks give the same components bit for bit, in memory or on disk.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


@dataclass
class PrincipalComponents:
    mean: np.ndarray  # (genes,)
    components: np.ndarray  # (n_components, genes), orthonormal rows
    explained_variance: np.ndarray  # (n_components,), the covariance's eigenvalues (ddof 1)
    total_variance: float  # the covariance's trace

    @property
    def explained_variance_ratio(self) -> np.ndarray:
        return self.explained_variance / self.total_variance


def covariance_pca(blocks: Iterable[np.ndarray | sp.spmatrix], n_components: int) -> PrincipalComponents:
    """The first `n_components` principal components of the rows of every block together."""
    n, mean, m2 = 0, None, None
    for block in blocks:
        x = (block.toarray() if sp.issparse(block) else np.asarray(block)).astype(np.float32, copy=False)
        k = len(x)
        if not k:
            continue
        block_mean = x.mean(0, dtype=np.float64)
        centred = x - block_mean.astype(np.float32)
        block_m2 = (centred.T @ centred).astype(np.float64)  # float32 product of centred values, summed in float64
        if mean is None:
            mean, m2 = block_mean, block_m2
        else:
            delta = block_mean - mean
            m2 += block_m2 + np.outer(delta, delta) * (n * k / (n + k))
            mean = mean + delta * (k / (n + k))
        n += k
    if mean is None or n < 2:
        raise ValueError("a PCA needs at least two cells")
    covariance = m2 / (n - 1)
    values, vectors = np.linalg.eigh(covariance)
    top = np.argsort(values)[::-1][:n_components]
    components = vectors[:, top].T
    # a deterministic sign: each component's largest loading is positive
    signs = np.sign(components[np.arange(len(top)), np.abs(components).argmax(1)])
    return PrincipalComponents(mean, components * signs[:, None], np.maximum(values[top], 0.0),
                               float(np.trace(covariance)))
