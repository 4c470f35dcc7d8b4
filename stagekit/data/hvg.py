"""Highly variable genes by the seurat_v3 method (Stuart et al. 2019), on raw counts.

Mean and variance per gene; a loess fit of log10(variance) on log10(mean) gives each gene's expected standard
deviation; counts are clipped at mean + sqrt(n) * expected sd; genes are ranked by the variance of their
standardised, clipped counts. Computed from sparse matrices without densifying them.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def seurat_v3_variances(counts: sp.csr_matrix, span: float = 0.3) -> np.ndarray:
    from skmisc.loess import loess

    n = counts.shape[0]
    x = sp.csr_matrix(counts, dtype=np.float64)
    mean = np.asarray(x.mean(0)).ravel()
    var = np.asarray(x.multiply(x).mean(0)).ravel() - mean**2
    var *= n / max(n - 1, 1)
    expressed = var > 0
    fitted = np.zeros_like(mean)
    log_mean, log_var = np.log10(mean[expressed]), np.log10(var[expressed])
    fit = None
    if expressed.sum() >= 50:  # skmisc's loess crashes on a handful of genes
        for wider in (span, 0.5, 0.8, 1.0):  # few cells give ties in the means: a wider span fits them
            try:
                model = loess(log_mean, log_var, span=wider, degree=2)
                model.fit()
                fit = model.outputs.fitted_values
                break
            except ValueError:
                continue
    if fit is None:  # too few genes or no loess fit: a global quadratic
        fit = np.polyval(np.polyfit(log_mean, log_var, min(2, int(expressed.sum()) - 1)), log_mean)
    fitted[expressed] = fit
    reg_std = np.sqrt(10**fitted)
    clip = mean + reg_std * np.sqrt(n)
    clipped = x.tocsc(copy=True)
    columns = np.repeat(np.arange(x.shape[1]), np.diff(clipped.indptr))
    np.minimum(clipped.data, clip[columns], out=clipped.data)
    sum_sq = np.asarray(clipped.multiply(clipped).sum(0)).ravel()
    total = np.asarray(clipped.sum(0)).ravel()
    with np.errstate(divide="ignore", invalid="ignore"):
        norm_var = (n * mean**2 + sum_sq - 2 * mean * total) / ((n - 1) * reg_std**2)
    return np.where(expressed, norm_var, -np.inf)


def highly_variable_genes(counts: sp.csr_matrix, n_top: int) -> np.ndarray:
    """Sorted column indices of the `n_top` most variable genes (all genes when there are fewer)."""
    if n_top >= counts.shape[1]:
        return np.arange(counts.shape[1])
    order = np.argsort(-seurat_v3_variances(counts), kind="stable")
    return np.sort(order[:n_top])
