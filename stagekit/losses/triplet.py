"""Cross-species triplet mining and the cosine triplet margin loss (SATURN's metric-learning stage).

Everything is vectorised over the batch: no Python loop over labels, pairs or cells. The only loops run over the
species: cells come grouped by species, so one species' anchors meet every cell in one (n_s, B) block and "another
species" is the columns outside the block, with no (B, B) species masks.

Labels are species-prefixed codes ("human:beta" and "mouse:beta" differ), so positives have to be inferred
across species, as SATURN's cross-species miner does. Each label L defines a group: its own cells, plus, for each
of them, its nearest cell of another species, when that cell's own nearest cell of another species carries L
again (a mutual-neighbour check at the label level, `mnn = true`: the majority label of that cell's `mnn_k`
nearest cross-species cells, 1 being the reference's single nearest; without it every nearest cell joins). Then
for an anchor a:
- positives: cells of another species that share one of a's groups (so every positive is cross-species);
- negatives: cells sharing no group with a and not of the positive's label, from a's species or the positive's;
- semi-hard: 0 < cos(a, p) - cos(a, n) <= margin.
One positive is drawn per anchor and one negative per (anchor, positive), at random: as the
reference, among all negatives, the triplet kept only when it is semi-hard (`search = False`), or among the
semi-hard ones (`search = True`). Nearest cells are found in `neighbour_space` when given (e.g. macrogene
expression), else in the embedding itself.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def species_blocks(species: torch.Tensor) -> list[tuple[int, int]]:
    """(start, stop) of each species' run of cells; the cells must come grouped by species (as align's batches
    do: one block per species), so that "another species" is every column outside the block, no B x B mask."""
    change = (species[1:] != species[:-1]).nonzero().squeeze(1) + 1
    bounds = [0, *change.tolist(), len(species)]
    blocks = list(zip(bounds[:-1], bounds[1:], strict=True))
    if len({int(species[a]) for a, _ in blocks}) != len(blocks):
        raise ValueError("cells must be grouped by species (one contiguous run per species)")
    return blocks


def _outside(start: int, stop: int, n: int, device: torch.device) -> torch.Tensor:
    return torch.cat([torch.arange(0, start, device=device), torch.arange(stop, n, device=device)])


def label_groups(space: torch.Tensor, species: torch.Tensor, labels: torch.Tensor, mnn: bool = True,
                 mnn_k: int = 5) -> torch.Tensor:
    """(B, n_labels) membership: each cell's own label, plus the labels of the cells of another species whose
    nearest cross-species cell it is (cosine similarity of the rows of `space`), kept (with `mnn`) only if it
    points back to that label: the majority label of its `mnn_k` nearest cross-species cells (1: its single
    nearest, as the reference). Cells come grouped by species."""
    unit = F.normalize(space.detach().float(), dim=-1)
    n_labels = int(labels.max()) + 1
    nearest = torch.full_like(labels, -1)  # nearest cell of another species; -1: none in the batch
    votes = torch.zeros(len(labels), n_labels, device=labels.device)
    blocks = species_blocks(species)
    # each pair of species' similarities once (A's cells x B's serve B's rows transposed): half the products
    pairs = {(a, b): unit[blocks[a][0]:blocks[a][1]] @ unit[blocks[b][0]:blocks[b][1]].T
             for a in range(len(blocks)) for b in range(a + 1, len(blocks))}
    for a, (start, stop) in enumerate(blocks):
        others = _outside(start, stop, len(labels), labels.device)
        if len(others) == 0:
            continue
        # this species' cells x every cell of another species, the other blocks in order (as `others`)
        scores = torch.cat([pairs[a, b] if a < b else pairs[b, a].T for b in range(len(blocks)) if b != a], 1)
        voters = others[scores.topk(min(mnn_k if mnn else 1, len(others)), dim=1).indices]  # nearest first
        nearest[start:stop] = voters[:, 0]
        votes[start:stop].scatter_add_(1, labels[voters], torch.ones(voters.shape, device=votes.device))
    linked = nearest >= 0
    if mnn:
        linked &= votes.argmax(1)[nearest.clamp_min(0)] == labels
    groups = F.one_hot(labels, n_labels).bool()
    groups[nearest[linked], labels[linked]] = True
    return groups


def mine_triplets(z: torch.Tensor, species: torch.Tensor, labels: torch.Tensor, margin: float = 0.2,
                  mnn: bool = True, generator: torch.Generator | None = None,
                  neighbour_space: torch.Tensor | None = None, balance_species: bool = False, mnn_k: int = 5,
                  search: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices (anchors, positives, negatives) of semi-hard triplets, at most one per anchor; anchors without one
    are left out. Cells come grouped by species. `balance_species` keeps the same number of triplets for every
    anchor species (a random subset of each)."""
    with torch.no_grad():
        unit = F.normalize(z.detach().float(), dim=-1)
        groups = label_groups(z if neighbour_space is None else neighbour_space, species, labels, mnn,
                              mnn_k).float()
        blocks = species_blocks(species)
        anchors, positives, negatives = _draw(unit, species, labels, groups, blocks, margin, generator, search)
        if balance_species and len(anchors):
            keep = _balanced(species[anchors], torch.rand(len(anchors), generator=generator, device=z.device))
            anchors, positives, negatives = anchors[keep], positives[keep], negatives[keep]
    return anchors, positives, negatives


def _draw(unit: torch.Tensor, species: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor,
          blocks: list[tuple[int, int]], margin: float, generator: torch.Generator | None, search: bool = False
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One positive per anchor and one negative per (anchor, positive) as the module describes, for the anchors
    whose triplet is semi-hard."""
    n, device = len(unit), unit.device
    # one key matrix draws both picks, a uniform choice within each (disjoint) set, whole rows at once: row i's
    # keys are frac(c_j + r_i), i.i.d. uniform along the row, at the price of 2 x B random numbers, not B x B
    column_keys, row_shifts = torch.rand(2, n, generator=generator, device=device)
    positives, negatives = (torch.zeros(n, dtype=torch.long, device=device) for _ in range(2))
    found = torch.zeros(n, dtype=torch.bool, device=device)
    for start, stop in blocks:  # one species' anchors against every cell: (n_s, B), never (B, B) at once
        rows = slice(start, stop)
        not_shared = (groups[rows] @ groups.T) == 0
        keys = (column_keys[None, :] + row_shifts[rows, None]).frac_()
        positive_key = torch.full((stop - start,), -1.0, device=device)  # -1: no positive
        for other_start, other_stop in blocks:  # every positive is from another species
            if other_start != start:
                columns = slice(other_start, other_stop)
                key, pick = keys[:, columns].masked_fill(not_shared[:, columns], -1.0).max(1)
                better = key > positive_key
                positive_key = torch.where(better, key, positive_key)
                positives[rows] = torch.where(better, pick + other_start, positives[rows])
        similarity = unit[rows] @ unit.T
        ap = similarity.gather(1, positives[rows, None])
        # never a cell of the positive's own label: it is the positive's type, whatever the links say
        candidate = not_shared & (labels[None, :] != labels[positives[rows], None])
        if len(blocks) > 2:  # with two species every cell is of the anchor's or the positive's species
            candidate &= ((species[None, :] == species[start])
                          | (species[None, :] == species[positives[rows], None]))
        semi_hard = (similarity < ap) & (similarity >= ap - margin)  # 0 < a.p - a.n <= margin
        if search:
            candidate &= semi_hard
        negative_key, negatives[rows] = keys.masked_fill_(~candidate, -1.0).max(1)
        found[rows] = (positive_key >= 0) & (negative_key >= 0)
        if not search:  # a negative drawn from all candidates counts only when it is semi-hard
            found[rows] &= semi_hard.gather(1, negatives[rows, None]).squeeze(1)
    anchors = found.nonzero().squeeze(1)
    return anchors, positives[anchors], negatives[anchors]


def _balanced(species: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Mask of a random subset of the triplets with as many of each anchor species present as the rarest one
    has."""
    names, counts = species.unique(return_counts=True)
    keep = int(counts.min()) if len(names) > 1 else len(species)
    # rank each anchor within its species by random noise; keep the first `keep` of every species
    order = torch.argsort(noise)
    ranked_species = species[order]
    rank = torch.zeros_like(order)
    for name in names:  # a handful of species, not cells
        members = ranked_species == name
        rank[order[members]] = torch.arange(int(members.sum()), device=species.device)
    return rank < keep


def cosine_triplet_loss(z: torch.Tensor, anchors: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor,
                        margin: float = 0.2) -> torch.Tensor:
    """mean(max(0, d(a, p) - d(a, n) + margin)) with d = 1 - cosine similarity; zero with no triplets."""
    if len(anchors) == 0:
        return z.sum() * 0.0
    unit = F.normalize(z, dim=-1)
    # index_select: its backward is an index_add, far cheaper than the index_put of z[indices]
    a, p, n = (unit.index_select(0, i) for i in (anchors, positives, negatives))
    d_ap, d_an = 1 - (a * p).sum(-1), 1 - (a * n).sum(-1)
    return F.relu(d_ap - d_an + margin).mean()
