"""Macrogene initialisation (SATURN): k-means centroids of protein embeddings, gene -> macrogene weights by rank.

Groundwork for cross-species integration; no command uses it yet.
"""

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


def initial_log_weights(gene_embeddings: np.ndarray, n_macrogenes: int, seed: int = 0, scoring: str = "default",
                        floor: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """(log weights genes x macrogenes, centroids macrogenes x dim); W = exp(log weights) > 0 everywhere.

    `floor` keeps zero weights (one_hot) trainable and finite in log space.
    """
    from sklearn.cluster import KMeans

    n_macrogenes = min(n_macrogenes, len(gene_embeddings))
    centroids = KMeans(n_clusters=n_macrogenes, n_init=1, random_state=seed).fit(gene_embeddings).cluster_centers_
    distances = ((gene_embeddings[:, None, :] - centroids[None, :, :]) ** 2).sum(-1)
    ranks = distances.argsort(1).argsort(1) + 1.0
    return np.log(rank_weights(ranks, scoring) + floor).astype(np.float32), centroids.astype(np.float32)
