"""Evidence that refines the network's link scores at prediction, from the sample as segmented so far.

The network scores each (transcript, nucleus) pair from a tile's graph; it never sees the cell a nucleus has
become. Once every transcript has a provisional cell, each nucleus-bearing cell has an expression profile of
~100 transcripts (its nucleus alone holds ~30), and a transcript whose gene and neighbourhood do not fit that
profile (a cell of another type whose nucleus the stain missed, background) can be told from one that does. The
same idea drives Baysor's and ProSeg's expression models; here it is a few rounds of re-scoring on top of the
GNN, not a second model.
"""

from __future__ import annotations

import numpy as np

from stagekit.stages.segmentation.graph import SampleGraph


def farther_than_nearest(graph: SampleGraph) -> np.ndarray:
    """How much farther (micron) each candidate nucleus' outline is than the transcript's nearest candidate's."""
    counts = np.diff(graph.cand_start)
    has = counts > 0
    if not len(graph.cand_distance):
        return np.zeros(0, np.float32)
    nearest = np.minimum.reduceat(graph.cand_distance, graph.cand_start[:-1][has])
    return (graph.cand_distance - np.repeat(nearest, counts[has])).astype(np.float32)


def profile_evidence(graph: SampleGraph, nucleus_of: np.ndarray, n_nuclei: int, prior: float,
                     chunk: int = 500_000) -> np.ndarray:
    """Per candidate pair (t, c): log p_c(gene of t) / p(gene) plus the mean of the same over t's kNN neighbours,
    where p_c is the gene distribution of the transcripts `nucleus_of` gives to c, shrunk towards the sample's by
    `prior` pseudo-transcripts (a cell with few transcripts says little) and p the sample's.

    Counts are looked up by (nucleus, gene) key in a sorted array of the pairs that occur, so memory follows the
    transcripts, not nuclei x genes (100,000 cells x a 5,000-gene panel would be 2 GB dense)."""
    genes = graph.genes
    n_genes = int(genes.max()) + 1 if len(genes) else 1
    background = np.bincount(genes, minlength=n_genes) / max(len(genes), 1)
    placed = nucleus_of >= 0
    keys, counts = np.unique(nucleus_of[placed] * n_genes + genes[placed], return_counts=True)
    size = np.bincount(nucleus_of[placed], minlength=n_nuclei).astype(np.float64)

    def log_ratio(nucleus: np.ndarray, gene: np.ndarray) -> np.ndarray:
        key = nucleus * n_genes + gene
        count = np.zeros(key.shape)
        if len(keys):
            at = np.minimum(np.searchsorted(keys, key), len(keys) - 1)
            count = np.where(keys[at] == key, counts[at], 0)
        p_background = np.maximum(background[gene], 1e-12)
        return np.log((count + prior * p_background) / (size[nucleus] + prior)) - np.log(p_background)

    evidence = np.empty(len(graph.cand_tx), np.float32)
    for start in range(0, len(evidence), chunk):
        tx, bd = graph.cand_tx[start:start + chunk], graph.cand_bd[start:start + chunk]
        neighbours = graph.knn[tx]
        valid = neighbours >= 0
        around = np.where(valid, log_ratio(np.repeat(bd[:, None], neighbours.shape[1], 1),
                                           genes[np.maximum(neighbours, 0)]), 0.0)
        evidence[start:start + chunk] = log_ratio(bd, genes[tx]) + around.sum(1) / np.maximum(valid.sum(1), 1)
    return evidence
