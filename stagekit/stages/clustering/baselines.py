"""The simple clusterings a user compares a learned one with, computed the way scanpy users do: 50 principal
components of log-normalised counts (or of the values as given, when they are not counts), k-means on them at a
given k, and Leiden communities of their 15-nearest-neighbour graph at resolution 1 (scanpy's defaults)."""

from __future__ import annotations

import numpy as np
from scipy import sparse

from stagekit.data.normalise import log_normalised
from stagekit.metrics.clustering import label_agreement

N_COMPONENTS = 50
PCA_KMEANS = "k-means on PCA-50"
PCA_LEIDEN = "Leiden on the PCA-50 graph"


def looks_like_counts(matrix) -> bool:
    """Non-negative whole numbers (checked on up to 100,000 stored values)."""
    values = matrix.data if sparse.issparse(matrix) else np.asarray(matrix).ravel()
    sample = values[:: max(1, len(values) // 100_000)]
    return bool(len(sample) == 0 or (sample.min() >= 0 and np.all(sample == np.round(sample))))


def expression_pca(matrix, seed: int, counts: bool | None = None) -> np.ndarray:
    """Cells x (up to) 50 principal components (scanpy's pca): of the log-normalised counts when `matrix` holds
    counts, else of the values as given. `counts` None: decided by `looks_like_counts`."""
    import anndata
    import scanpy as sc

    if looks_like_counts(matrix) if counts is None else counts:
        values = log_normalised(matrix)
    else:
        values = sparse.csr_matrix(matrix, dtype=np.float32) if sparse.issparse(matrix) else \
            np.asarray(matrix, dtype=np.float32)
    adata = anndata.AnnData(values)
    n_components = min(N_COMPONENTS, adata.n_obs - 1, adata.n_vars - 1)
    sc.pp.pca(adata, n_comps=n_components, random_state=seed)
    return np.asarray(adata.obsm["X_pca"], dtype=np.float32)


def kmeans_labels(pca: np.ndarray, k: int, seed: int, n_init: int = 10) -> np.ndarray:
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit_predict(pca)


def leiden_labels(pca: np.ndarray, seed: int) -> np.ndarray:
    """scanpy's neighbours (15, UMAP connectivities; exact, as scanpy computes them below 4,096 cells: its
    approximate search fails on some data with scipy's sparse arrays) and Leiden (resolution 1; the igraph
    flavour scanpy recommends: 2 iterations, undirected)."""
    import anndata
    import scanpy as sc

    adata = anndata.AnnData(np.zeros((len(pca), 0), dtype=np.float32), obsm={"X_pca": pca})
    sc.pp.neighbors(adata, n_neighbors=15, use_rep="X_pca", random_state=seed, transformer="sklearn")
    sc.tl.leiden(adata, resolution=1.0, random_state=seed, flavor="igraph", n_iterations=2, directed=False)
    return adata.obs["leiden"].astype(int).to_numpy()


def baseline_scores(pca: np.ndarray, labels: np.ndarray, k: int, seed: int) -> dict[str, dict[str, float]]:
    """ACC/ARI/NMI (and the number of clusters) of both baselines against `labels`, k-means at `k`."""
    out = {}
    for name, clusters in ((PCA_KMEANS, kmeans_labels(pca, k, seed)), (PCA_LEIDEN, leiden_labels(pca, seed))):
        out[name] = {"k": len(np.unique(clusters))} | label_agreement(labels, clusters)
    return out
