"""Clustering quality: against labels (ACC by Hungarian matching, ARI, NMI) and internal scores."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn import metrics


def contingency(labels: np.ndarray, clusters: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts table (label x cluster) with its row and column values."""
    label_values, label_idx = np.unique(labels, return_inverse=True)
    cluster_values, cluster_idx = np.unique(clusters, return_inverse=True)
    table = np.zeros((len(label_values), len(cluster_values)), dtype=np.int64)
    np.add.at(table, (label_idx, cluster_idx), 1)
    return table, label_values, cluster_values


def cluster_accuracy(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Best one-to-one matching of clusters to labels (scipy's linear_sum_assignment), as a fraction of cells."""
    table, _, _ = contingency(labels, clusters)
    rows, cols = linear_sum_assignment(-table)
    return float(table[rows, cols].sum() / table.sum())


def label_agreement(labels: np.ndarray, clusters: np.ndarray) -> dict[str, float]:
    return {"acc": cluster_accuracy(labels, clusters),
            "ari": float(metrics.adjusted_rand_score(labels, clusters)),
            "nmi": float(metrics.normalized_mutual_info_score(labels, clusters))}


def internal_scores(latent: np.ndarray, clusters: np.ndarray, sample_size: int = 2000, seed: int = 0
                    ) -> dict[str, float]:
    """Silhouette (on a seeded subsample), Calinski-Harabasz and Davies-Bouldin."""
    n = len(latent)
    return {"silhouette": float(metrics.silhouette_score(latent, clusters, sample_size=min(sample_size, n),
                                                         random_state=seed)),
            "calinski_harabasz": float(metrics.calinski_harabasz_score(latent, clusters)),
            "davies_bouldin": float(metrics.davies_bouldin_score(latent, clusters))}
