"""Highly variable genes by the seurat_v3 method (Stuart et al. 2019), on raw counts.

Mean and variance per gene; a loess fit of log10(variance) on log10(mean) gives each gene's expected standard
deviation; counts are clipped at mean + sqrt(n) * expected sd; genes are ranked by the variance of their
standardised, clipped counts. Computed from sparse matrices without densifying them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from stagekit.errors import UserError

if TYPE_CHECKING:
    from stagekit.data.anndata_io import CountMatrix


def seurat_v3_variances(counts: sp.csr_matrix | CountMatrix, span: float = 0.3, rows: np.ndarray | None = None
                        ) -> np.ndarray:
    """Standardised clipped variance of every gene, from two passes over the cells (`rows` of them, sorted, when
    given): an in-memory matrix in one block, a CountMatrix block by block."""
    from skmisc.loess import loess

    def blocks() -> Iterable[sp.csr_matrix]:
        if sp.issparse(counts):
            return [counts if rows is None else counts[rows]]
        return counts.blocks() if rows is None else counts.row_blocks(rows)

    n, total, total_sq = 0, 0.0, 0.0
    for block in blocks():
        x = sp.csr_matrix(block, dtype=np.float64)
        n += x.shape[0]
        total = total + np.asarray(x.sum(0)).ravel()
        total_sq = total_sq + np.asarray(x.multiply(x).sum(0)).ravel()
    mean = total / n
    var = total_sq / n - mean**2
    var *= n / max(n - 1, 1)
    expressed = var > 0
    if not expressed.any():  # no trend to fit (np.polyfit fails on no points): say what is wrong with the data
        where = "the data" if sp.issparse(counts) else f"{counts.path} ({counts.key})"
        raise UserError(f"{where}: none of the {len(var)} genes varies across cells (all zero or constant), so "
                        "no gene is highly variable; check the file and layer (--set data.layer=NAME)")
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
    clipped_total, clipped_sq = 0.0, 0.0
    for block in blocks():
        x = sp.csr_matrix(block, dtype=np.float64, copy=True)
        np.minimum(x.data, clip[x.indices], out=x.data)
        clipped_total = clipped_total + np.asarray(x.sum(0)).ravel()
        clipped_sq = clipped_sq + np.asarray(x.multiply(x).sum(0)).ravel()
    with np.errstate(divide="ignore", invalid="ignore"):
        norm_var = (n * mean**2 + clipped_sq - 2 * mean * clipped_total) / ((n - 1) * reg_std**2)
    return np.where(expressed, norm_var, -np.inf)


def highly_variable_genes(counts: sp.csr_matrix | CountMatrix, n_top: int, rows: np.ndarray | None = None
                          ) -> np.ndarray:
    """Sorted column indices of the `n_top` most variable genes of the cells `rows` (all when None; all genes when
    there are fewer). A CountMatrix is read block by block, twice."""
    n_genes = counts.shape[1] if sp.issparse(counts) else counts.n_vars
    if n_top >= n_genes:
        return np.arange(n_genes)
    order = np.argsort(-seurat_v3_variances(counts, rows=rows), kind="stable")
    return np.sort(order[:n_top])
