"""Positive pairs for contrastive and consistency terms: another cell of the same group, or a near neighbour."""

from __future__ import annotations

import numpy as np


class GroupPartners:
    """Another cell of the same group (itself when the group has one cell), vectorised."""

    def __init__(self, groups: np.ndarray) -> None:
        order = np.argsort(groups, kind="stable")
        counts = np.bincount(groups)
        self.members = order
        self.offsets = np.concatenate([[0], np.cumsum(counts)])[groups]
        self.sizes = counts[groups]

    def sample(self, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        picks = (rng.random(len(rows)) * self.sizes[rows]).astype(np.int64)
        return self.members[self.offsets[rows] + picks]


class NeighbourPartners:
    """One of each cell's k nearest neighbours (Euclidean, itself excluded) in a given embedding."""

    def __init__(self, embedding: np.ndarray, k: int) -> None:
        from sklearn.neighbors import NearestNeighbors

        k = min(k, len(embedding) - 1)
        self.neighbours = NearestNeighbors(n_neighbors=k + 1).fit(embedding).kneighbors(embedding)[1][:, 1:]

    def sample(self, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.neighbours[rows, rng.integers(0, self.neighbours.shape[1], len(rows))]


Partners = GroupPartners | NeighbourPartners


def with_partners(plan: list[np.ndarray], partners: Partners | None, seed: int, epoch: int
                  ) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Each batch of an epoch plan with one positive partner per cell, drawn reproducibly (None: no pairs)."""
    if partners is None:
        return [(rows, None) for rows in plan]
    rng = np.random.default_rng([seed, epoch, 1])
    return [(rows, partners.sample(rows, rng)) for rows in plan]


def cells_of(item: tuple[np.ndarray, np.ndarray | None]) -> np.ndarray:
    """The rows to load for a batch: anchors first, then their partners."""
    rows, partners = item
    return rows if partners is None else np.concatenate([rows, partners])
