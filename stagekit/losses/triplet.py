"""Cross-species triplet mining and the cosine triplet margin loss (SATURN's metric-learning stage).

Everything is vectorised over the batch: no Python loop over labels, pairs or cells.

Labels are species-prefixed codes ("human:beta" and "mouse:beta" differ), so positives have to be inferred
across species, as SATURN's cross-species miner does. Each label L defines a group: its own cells, plus, for each
of them, its nearest cell of another species, when that cell's own nearest cell of another species carries L
again (a mutual-neighbour check at the label level, `mnn = true`: the majority label of that cell's `mnn_k`
nearest cross-species cells, 1 being the reference's single nearest; without it every nearest cell joins). Then
for an anchor a:
- positives: cells of another species that share one of a's groups (so every positive is cross-species);
- negatives: cells sharing no group with a, from a's species or the positive's species;
- semi-hard: 0 < cos(a, p) - cos(a, n) <= margin.
One positive is drawn per anchor and one semi-hard negative per (anchor, positive), at random. Nearest cells
are found in `neighbour_space` when given (e.g. macrogene expression), else in the embedding itself.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def cosine_similarity(x: torch.Tensor) -> torch.Tensor:
    """(B, B) cosine similarity between the rows of x (no gradient)."""
    unit = F.normalize(x.detach().float(), dim=-1)
    return unit @ unit.T


def label_groups(similarity: torch.Tensor, species: torch.Tensor, labels: torch.Tensor, mnn: bool = True,
                 mnn_k: int = 5) -> torch.Tensor:
    """(B, n_labels) membership: each cell's own label, plus the labels of the cells of another species whose
    nearest cross-species cell it is, kept (with `mnn`) only if it points back to that label: the majority label
    of its `mnn_k` nearest cross-species cells (1: its single nearest, as the reference)."""
    other = species[:, None] != species[None, :]
    scores = similarity.masked_fill(~other, float("-inf"))
    best, nearest = scores.max(1)  # nearest cell of another species
    has_other = best > float("-inf")
    if mnn:
        k = max(1, min(mnn_k, int(other.sum(1).max())))
        closest, voters = scores.topk(k, dim=1)  # each cell's k nearest cells of another species ...
        votes = torch.zeros(len(labels), int(labels.max()) + 1, device=labels.device)
        # ... fewer where a species has fewer than k cells in the batch (those picks score -inf)
        votes.scatter_add_(1, labels[voters], (closest > float("-inf")).to(votes.dtype))
        linked = has_other & (votes.argmax(1)[nearest] == labels)
    else:
        linked = has_other
    groups = F.one_hot(labels, int(labels.max()) + 1).bool()
    groups[nearest[linked], labels[linked]] = True
    return groups


def mine_triplets(z: torch.Tensor, species: torch.Tensor, labels: torch.Tensor, margin: float = 0.2,
                  mnn: bool = True, generator: torch.Generator | None = None,
                  neighbour_space: torch.Tensor | None = None, balance_species: bool = False, mnn_k: int = 5
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices (anchors, positives, negatives) of semi-hard triplets; anchors without one are left out.
    `balance_species` keeps the same number of triplets for every anchor species (a random subset of each)."""
    with torch.no_grad():
        similarity = cosine_similarity(z)
        neighbour_similarity = similarity if neighbour_space is None else cosine_similarity(neighbour_space)
        groups = label_groups(neighbour_similarity, species, labels, mnn, mnn_k).float()
        shared = (groups @ groups.T) > 0
        positive = shared & (species[:, None] != species[None, :])
        # one key matrix draws both picks, a uniform choice within each (disjoint) set, whole rows at once: row i's
        # keys are frac(c_j + r_i), i.i.d. uniform along the row, at the price of 2 x B random numbers, not B x B
        column_keys, row_shifts = torch.rand(2, len(z), generator=generator, device=z.device)
        noise = (column_keys[None, :] + row_shifts[:, None]).frac_()
        positive_key, positives = noise.masked_fill(~positive, -1.0).max(1)  # key -1: no positive in the row
        ap = similarity.gather(1, positives[:, None])
        candidate = ~shared
        candidate &= (species[None, :] == species[:, None]) | (species[None, :] == species[positives, None])
        gap = ap - similarity
        candidate &= (gap > 0) & (gap <= margin)  # semi-hard
        negative_key, negatives = noise.masked_fill_(~candidate, -1.0).max(1)
        anchors = ((positive_key >= 0) & (negative_key >= 0)).nonzero().squeeze(1)
        if balance_species and len(anchors):
            anchors = _balanced(anchors, species[anchors],
                                torch.rand(len(anchors), generator=generator, device=z.device))
    return anchors, positives[anchors], negatives[anchors]


def _balanced(anchors: torch.Tensor, species: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """A random subset of the anchors with as many of each species present as the rarest one has."""
    names, counts = species.unique(return_counts=True)
    keep = int(counts.min()) if len(names) > 1 else len(anchors)
    # rank each anchor within its species by random noise; keep the first `keep` of every species
    order = torch.argsort(noise)
    ranked_species = species[order]
    rank = torch.zeros_like(order)
    for name in names:  # a handful of species, not cells
        members = ranked_species == name
        rank[order[members]] = torch.arange(int(members.sum()), device=anchors.device)
    return anchors[rank < keep]


def cosine_triplet_loss(z: torch.Tensor, anchors: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor,
                        margin: float = 0.2) -> torch.Tensor:
    """mean(max(0, d(a, p) - d(a, n) + margin)) with d = 1 - cosine similarity; zero with no triplets."""
    if len(anchors) == 0:
        return z.sum() * 0.0
    a, p, n = (F.normalize(z[i], dim=-1) for i in (anchors, positives, negatives))
    d_ap, d_an = 1 - (a * p).sum(-1), 1 - (a * n).sum(-1)
    return F.relu(d_ap - d_an + margin).mean()
