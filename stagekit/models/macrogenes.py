"""Macrogene initialisation (SATURN): k-means centroids of protein embeddings, gene -> macrogene weights by rank."""

from __future__ import annotations

import numpy as np

SCORINGS = ("default", "one_hot", "smoothed")


def rank_weights(ranks: np.ndarray, scoring: str = "default") -> np.ndarray:
    """Weight from the rank r (1 = nearest) of a centroid among all centroids for one gene."""
    if scoring == "default":
        return 2.0 * np.log1p(1.0 / ranks) ** 2
    if scoring == "one_hot":
        return (ranks == 1).astype(np.float64)
    if scoring == "smoothed":
        return 1.0 / ranks
    raise ValueError(f"unknown macrogene scoring {scoring!r}; choose one of {SCORINGS}")


def macrogene_centroids(gene_embeddings: np.ndarray, n_macrogenes: int, seed: int = 0,
                        seeding_dims: int = 128) -> np.ndarray:
    """k-means centroids (macrogenes x dim) of the stacked gene embeddings, seeded.

    The k-means++ seeding (scikit-learn's greedy variant, as the reference) takes k sequential rounds, each
    reading every embedding: at SATURN's sizes it is most of the k-means, memory-bound. It runs on the
    embeddings' first `seeding_dims` principal components (randomized PCA, seeded); Lloyd's iterations then run
    on every dimension from those starting genes, to an inertia close to seeding on every dimension.
    `seeding_dims` 0, or at least the dimension, seeds on every dimension. The seeding runs on float64
    (scikit-learn upcasts float32 block by block in every round); Lloyd's iterations with BLAS single-threaded:
    scikit-learn already spreads their chunks over OpenMP threads, and BLAS threads within each chunk
    oversubscribe the cores."""
    from sklearn.cluster import KMeans, kmeans_plusplus
    from threadpoolctl import threadpool_limits

    n_macrogenes = min(n_macrogenes, len(gene_embeddings))
    space = np.asarray(gene_embeddings, dtype=np.float64)
    if 0 < seeding_dims < min(space.shape):
        from sklearn.decomposition import PCA

        space = PCA(seeding_dims, svd_solver="randomized", random_state=seed).fit_transform(space)
    _, rows = kmeans_plusplus(space, n_macrogenes, random_state=seed)
    with threadpool_limits(limits=1, user_api="blas"):
        kmeans = KMeans(n_clusters=n_macrogenes, init=gene_embeddings[rows], n_init=1,
                        random_state=seed).fit(gene_embeddings)
    return kmeans.cluster_centers_.astype(np.float32)


def log_weights_from_centroids(gene_embeddings: np.ndarray, centroids: np.ndarray, scoring: str = "default",
                               floor: float = 1e-6, block: int = 512) -> np.ndarray:
    """Log weights (genes x macrogenes) from each gene's distance rank to every centroid; W = exp(.) > 0.

    Distances come from |g|^2 - 2 g.c + |c|^2 one block of genes at a time, so memory stays at genes x
    macrogenes (never genes x macrogenes x dim). `floor` keeps zero weights (one_hot) trainable and finite.
    """
    genes = gene_embeddings.astype(np.float64)
    centres = centroids.astype(np.float64)
    out = np.empty((len(genes), len(centres)), dtype=np.float32)
    centre_sq = (centres**2).sum(1)
    for start in range(0, len(genes), block):
        chunk = genes[start:start + block]
        distances = (chunk**2).sum(1)[:, None] - 2.0 * chunk @ centres.T + centre_sq[None, :]
        ranks = np.empty(distances.shape)
        np.put_along_axis(ranks, distances.argsort(1), np.arange(1.0, len(centres) + 1.0)[None, :], 1)
        out[start:start + block] = np.log(rank_weights(ranks, scoring) + floor)
    return out


def initial_log_weights(gene_embeddings: np.ndarray, n_macrogenes: int, seed: int = 0, scoring: str = "default",
                        floor: float = 1e-6, seeding_dims: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """(log weights genes x macrogenes, centroids macrogenes x dim)."""
    centroids = macrogene_centroids(gene_embeddings, n_macrogenes, seed, seeding_dims)
    return log_weights_from_centroids(gene_embeddings, centroids, scoring, floor), centroids
