"""Evidence that refines the network's link scores at prediction, from the sample as segmented so far.

The network scores each (transcript, nucleus) pair from a tile's graph; it never sees the cell a nucleus has
become. Once every transcript has a provisional cell, the cells fall into expression groups (cell types, roughly),
and a transcript whose gene and neighbourhood do not fit its candidate cell's group (background, a cell of another
type whose nucleus the stain missed) can be told from one that does. The same idea drives Baysor's and ProSeg's
expression models; here it is a few rounds of re-scoring on top of the GNN, not a second model.

Why groups and not each cell's own profile: a cell holds ~100 transcripts, so most genes of a panel are absent
from it by chance and a gene foreign to its type looks no rarer than an ordinary one; and a transcript placed in
the cell is one of those ~100, so it vouched for itself (a background transcript of a foreign gene scored as
well as the cell's markers). A group of similar cells holds thousands of transcripts and tells the two apart;
the transcript scored is still left out of its own group's counts, so a gene too rare to have been seen
elsewhere in the group says nothing either way instead of tying the transcript to where it already is.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import csr_matrix

from stagekit.stages.segmentation.graph import SampleGraph


def farther_than_nearest(graph: SampleGraph) -> np.ndarray:
    """How much farther (micron) each candidate nucleus' outline is than the transcript's nearest candidate's."""
    counts = np.diff(graph.cand_start)
    has = counts > 0
    if not len(graph.cand_distance):
        return np.zeros(0, np.float32)
    nearest = np.minimum.reduceat(graph.cand_distance, graph.cand_start[:-1][has])
    return (graph.cand_distance - np.repeat(nearest, counts[has])).astype(np.float32)


def expression_groups(genes: np.ndarray, nucleus_of: np.ndarray, n_nuclei: int, n_groups: int,
                      min_transcripts: int = 10, seed: int = 0) -> np.ndarray:
    """The expression group (0..n_groups-1) of every nucleus' cell, -1 for a cell without transcripts: k-means on
    a truncated SVD of the log-normalised counts of the cells with at least `min_transcripts`, the smaller cells
    placed at their nearest group centre. Fewer groups where there are few cells (about 10 cells a group)."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import TruncatedSVD

    group = np.full(n_nuclei, -1, np.int64)
    placed = nucleus_of >= 0
    n_genes = int(genes.max()) + 1 if len(genes) else 1
    counts = csr_matrix((np.ones(placed.sum(), np.float32), (nucleus_of[placed], genes[placed])),
                        shape=(n_nuclei, n_genes))
    size = np.asarray(counts.sum(1)).ravel()
    fitted = size >= min_transcripts
    k = min(n_groups, int(fitted.sum()) // 10)
    if k < 2 or n_genes < 3:
        group[size > 0] = 0
        return group
    has = np.flatnonzero(size > 0)
    logged = csr_matrix(counts[has].multiply(100.0 / size[has][:, None]))
    logged.data = np.log1p(logged.data)
    dims = min(30, n_genes - 1, int(fitted.sum()) - 1)
    embedding = TruncatedSVD(dims, random_state=seed).fit(logged[fitted[has]]).transform(logged)
    kmeans = KMeans(k, n_init=3, random_state=seed).fit(embedding[fitted[has]])
    group[has] = kmeans.predict(embedding)
    return group


def profile_evidence(graph: SampleGraph, nucleus_of: np.ndarray, n_nuclei: int, n_groups: int, gene_weight: float,
                     context_weight: float, chunk: int = 500_000) -> np.ndarray:
    """Per candidate pair (t, c): `gene_weight` x log r_G(gene of t) plus `context_weight` x the mean of the same
    over t's kNN neighbours, where G is the expression group of the cell `nucleus_of` gives c and r_G(g) how much
    more often G's transcripts carry gene g than the sample's: (n_Gg + 1) / (n_G p(g) + 1), a Gamma-Poisson
    posterior mean with one pseudo-count, so that a gene expected less than about once in G counts as neither
    present nor absent. The transcript scored is left out of G's counts when it is one of them. A nucleus whose
    cell has no transcripts yet scores 0."""
    genes = graph.genes
    n_genes = int(genes.max()) + 1 if len(genes) else 1
    frequency = np.bincount(genes, minlength=n_genes) / max(len(genes), 1)
    group = expression_groups(genes, nucleus_of, n_nuclei, n_groups)
    n_found = int(group.max()) + 1 if len(group) else 0
    group_of_tx = np.where(nucleus_of >= 0, group[np.maximum(nucleus_of, 0)], -1)
    placed = group_of_tx >= 0
    # one row per group and a last row for cells without a group, whose log ratio is 0
    counts = np.bincount(group_of_tx[placed] * n_genes + genes[placed],
                         minlength=(n_found + 1) * n_genes).reshape(n_found + 1, n_genes).astype(np.float64)
    size = counts.sum(1)
    row_of = np.where(group >= 0, group, n_found)

    def log_ratio(row: np.ndarray, tx: np.ndarray) -> np.ndarray:
        gene = genes[tx]
        itself = (group_of_tx[tx] == row).astype(np.float64)
        ratio = np.log((counts[row, gene] - itself + 1.0) / ((size[row] - itself) * frequency[gene] + 1.0))
        return np.where(row == n_found, 0.0, ratio)

    evidence = np.empty(len(graph.cand_tx), np.float32)
    for start in range(0, len(evidence), chunk):
        tx, row = graph.cand_tx[start:start + chunk], row_of[graph.cand_bd[start:start + chunk]]
        neighbours = graph.knn[tx]
        valid = neighbours >= 0
        around = np.where(valid, log_ratio(np.repeat(row[:, None], neighbours.shape[1], 1),
                                           np.maximum(neighbours, 0)), 0.0)
        evidence[start:start + chunk] = (gene_weight * log_ratio(row, tx)
                                         + context_weight * around.sum(1) / np.maximum(valid.sum(1), 1))
    return evidence
