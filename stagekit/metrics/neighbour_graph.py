"""Clustering read off a k-nearest-neighbour graph of an embedding: Leiden communities (what scanpy users and
scDeepCluster's k estimate run) and the spectrum of the graph's normalised Laplacian (the eigengap heuristic)."""

from __future__ import annotations

import numpy as np
from scipy import sparse


def nearest_neighbours(embedding: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Distances to and indices of each point's k nearest other points."""
    from sklearn.neighbors import NearestNeighbors

    distances, indices = NearestNeighbors(n_neighbors=min(k + 1, len(embedding))).fit(embedding).kneighbors(embedding)
    return distances[:, 1:], indices[:, 1:]


def symmetric_graph(indices: np.ndarray, weights: np.ndarray | None = None) -> sparse.csr_matrix:
    """Adjacency with an edge i-j when j is among i's neighbours or i among j's (the larger weight kept)."""
    n, k = indices.shape
    values = np.ones(n * k) if weights is None else weights.ravel()
    directed = sparse.csr_matrix((values, (np.repeat(np.arange(n), k), indices.ravel())), shape=(n, n))
    return directed.maximum(directed.T).tocsr()


def knn_adjacency(embedding: np.ndarray, k: int) -> sparse.csr_matrix:
    """Symmetric 0/1 adjacency: i and j are linked when either is among the other's k nearest neighbours."""
    return symmetric_graph(nearest_neighbours(embedding, k)[1])


def self_tuning_affinity(distances: np.ndarray, indices: np.ndarray, local: int = 7) -> sparse.csr_matrix:
    """kNN affinities exp(-d_ij^2 / (s_i s_j)), s_i the distance to i's `local`-th neighbour (Zelnik-Manor &
    Perona 2004): dense and sparse regions get comparable weights, which sharpens the eigengap."""
    scale = np.maximum(distances[:, min(local, distances.shape[1]) - 1], 1e-12)
    return symmetric_graph(indices, np.exp(-distances**2 / (scale[:, None] * scale[indices])))


def leiden_partition(adjacency: sparse.csr_matrix, resolution: float, seed: int) -> np.ndarray:
    """Leiden communities (RB configuration model, seeded) of a graph; codes 0..c-1."""
    import igraph
    import leidenalg

    upper = sparse.triu(adjacency, k=0).tocoo()  # k=0 keeps the self-loops duplicated cells can give
    graph = igraph.Graph(n=adjacency.shape[0], edges=np.column_stack([upper.row, upper.col]).tolist())
    partition = leidenalg.find_partition(graph, leidenalg.RBConfigurationVertexPartition,
                                         resolution_parameter=resolution, seed=seed)
    return np.asarray(partition.membership, dtype=np.int64)


def laplacian_spectrum(adjacency: sparse.csr_matrix, n_eigenvalues: int, seed: int = 0) -> np.ndarray:
    """The smallest `n_eigenvalues` eigenvalues of a (weighted) graph's symmetric normalised Laplacian, ascending.

    With c well-separated groups the first c are near 0 and the (c+1)-th jumps (von Luxburg 2007, sec. 8.3).
    Computed as 1 - the largest eigenvalues of D^-1/2 A D^-1/2, which ARPACK finds quickly.
    """
    from scipy.sparse.linalg import eigsh

    n = adjacency.shape[0]
    scale = sparse.diags(1.0 / np.sqrt(np.asarray(adjacency.sum(1)).ravel()))
    normalised = scale @ adjacency @ scale
    if n_eigenvalues >= n - 1:  # ARPACK needs fewer eigenvalues than rows; small graphs go dense
        return np.sort(1.0 - np.linalg.eigvalsh(normalised.toarray()))[:n_eigenvalues]
    start = np.random.default_rng(seed).uniform(size=n)  # ARPACK's start vector, seeded
    return np.sort(1.0 - eigsh(normalised, k=n_eigenvalues, which="LA", v0=start)[0])
