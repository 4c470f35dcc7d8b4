"""Cross-species integration quality on an embedding: label transfer, neighbour agreement, species mixing."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, balanced_accuracy_score
from sklearn.neighbors import NearestNeighbors


def label_transfer(embedding: np.ndarray, species: np.ndarray, labels: np.ndarray, c: float = 0.005,
                   seeds: int = 10, train_fraction: float = 0.8) -> dict[str, dict]:
    """Logistic regression (C = `c`) trained on `train_fraction` of species A, tested on all of species B, for
    every ordered pair; median accuracy and balanced accuracy over `seeds` random training subsets.

    Where the species share only some labels, a classifier trained on A cannot name B's other labels: each pair
    also reports `max_accuracy` (the share of B's cells whose label A has: the ceiling of `accuracy`), the scores
    on those cells alone (`shared_accuracy`, `shared_balanced_accuracy`, as SATURN reports) and B's labels A
    lacks (`unmatched_labels`)."""
    out = {}
    names = sorted(set(species))
    for a in names:
        source = np.flatnonzero(species == a)
        known = set(labels[source].tolist())
        for b in names:
            if a == b:
                continue
            target = np.flatnonzero(species == b)
            shared = np.isin(labels[target], list(known))
            scores: dict[str, list[float]] = {"accuracy": [], "balanced_accuracy": [], "shared_accuracy": [],
                                              "shared_balanced_accuracy": []}
            for seed in range(seeds):
                train = np.random.default_rng(seed).choice(source, int(len(source) * train_fraction), replace=False)
                if len(set(labels[train])) < 2:
                    continue
                model = LogisticRegression(C=c, max_iter=2000).fit(embedding[train], labels[train])
                predicted = model.predict(embedding[target])
                with warnings.catch_warnings():  # labels B has and A lacks are the point here, not news
                    warnings.simplefilter("ignore", UserWarning)
                    scores["accuracy"].append(accuracy_score(labels[target], predicted))
                    scores["balanced_accuracy"].append(balanced_accuracy_score(labels[target], predicted))
                    if shared.any():
                        scores["shared_accuracy"].append(accuracy_score(labels[target][shared], predicted[shared]))
                        scores["shared_balanced_accuracy"].append(
                            balanced_accuracy_score(labels[target][shared], predicted[shared]))
            if scores["accuracy"]:
                out[f"{a}->{b}"] = {k: float(np.median(v)) for k, v in scores.items() if v} | {
                    "max_accuracy": float(shared.mean()),
                    "unmatched_labels": sorted(set(labels[target].tolist()) - known)}
    return out


MAX_QUERIES = 10_000  # cells whose neighbours are scored; estimates stay unbiased, cost stays linear in cells


def query_cells(mask: np.ndarray, max_queries: int = MAX_QUERIES, seed: int = 0) -> np.ndarray:
    """Indices of the cells in `mask`, a seeded uniform subsample when there are more than `max_queries`."""
    index = np.flatnonzero(mask)
    if len(index) <= max_queries:
        return index
    return np.sort(np.random.default_rng(seed).choice(index, max_queries, replace=False))


def cross_species_knn_agreement(embedding: np.ndarray, species: np.ndarray, labels: np.ndarray, k: int,
                                max_queries: int = MAX_QUERIES) -> float:
    """Mean fraction of a cell's k nearest cells of the other species (cosine) that share its label
    (over at most `max_queries` cells per species; the neighbours come from all cells)."""
    unit = embedding / np.maximum(np.linalg.norm(embedding, axis=1, keepdims=True), 1e-12)
    agreement = []
    for name in sorted(set(species)):
        query, reference = query_cells(species == name, max_queries), species != name
        k_eff = min(k, int(reference.sum()))
        index = NearestNeighbors(n_neighbors=k_eff).fit(unit[reference]).kneighbors(unit[query])[1]
        agreement.append((labels[reference][index] == labels[query][:, None]).mean(1))
    return float(np.concatenate(agreement).mean())


def species_mixing(embedding: np.ndarray, species: np.ndarray, k: int = 15, max_queries: int = MAX_QUERIES
                   ) -> float:
    """Observed fraction of other-species cells among each cell's k neighbours, over the fraction expected
    if species were perfectly mixed (1 = mixed, 0 = separate), averaged over cells (at most `max_queries`
    of them; the neighbours come from all cells)."""
    unit = embedding / np.maximum(np.linalg.norm(embedding, axis=1, keepdims=True), 1e-12)
    query = query_cells(np.ones(len(unit), dtype=bool), max_queries)
    index = NearestNeighbors(n_neighbors=min(k + 1, len(unit))).fit(unit).kneighbors(unit[query])[1][:, 1:]
    other = (species[index] != species[query, None]).mean(1)
    share = {s: (species != s).sum() / (len(species) - 1) for s in set(species)}
    expected = np.array([share[s] for s in species[query]])
    return float(np.mean(other / expected))
