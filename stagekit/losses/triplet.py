"""Cross-species triplet mining and the cosine triplet margin loss (SATURN's metric-learning stage).

Groundwork for `stagekit align`; no command uses it yet. Everything is vectorised over the batch: no Python
loop over labels or pairs.

Labels are species-prefixed codes ("human:beta" and "mouse:beta" differ). For an anchor a:
- positives: cells of a's own label, and (with `mnn`) cells of another species that are mutual nearest
  neighbours of a among that species (top `mnn_k` by cosine similarity, both ways);
- negatives: cells of another label, from a's species or the positive's species;
- semi-hard: 0 < cos(a, p) - cos(a, n) <= margin.
One positive is drawn per anchor and one semi-hard negative per (anchor, positive), at random.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def mutual_neighbours(similarity: torch.Tensor, species: torch.Tensor, k: int) -> torch.Tensor:
    """(B, B) mask: j is among i's top-k most similar cells of j's species (another species than i's), and
    i among j's top-k of i's species."""
    other = species[:, None] != species[None, :]
    mask = torch.zeros_like(other)
    for s in species.unique():  # a loop over species (a handful), not over cells or labels
        columns = species == s
        scores = similarity[:, columns].masked_fill(~other[:, columns], float("-inf"))
        top = scores.topk(min(k, int(columns.sum())), dim=1).indices
        block = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, top, True) & other[:, columns]
        mask[:, columns] = block
    return mask & mask.T


def mine_triplets(z: torch.Tensor, species: torch.Tensor, labels: torch.Tensor, margin: float = 0.2,
                  mnn: bool = True, mnn_k: int = 5, generator: torch.Generator | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices (anchors, positives, negatives) of semi-hard triplets; anchors without one are left out."""
    with torch.no_grad():
        unit = F.normalize(z.detach().float(), dim=-1)
        similarity = unit @ unit.T
        same_label = labels[:, None] == labels[None, :]
        eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
        positive = same_label & ~eye
        if mnn:
            positive |= mutual_neighbours(similarity, species, mnn_k)
        # one noise matrix draws both picks: a uniform choice within each (disjoint) set, whole rows at once
        noise = torch.rand(positive.shape, generator=generator, device=z.device)
        positives = noise.masked_fill(~positive, -1.0).argmax(1)
        ap = similarity.gather(1, positives[:, None])
        candidate = ~same_label  # another label ...
        candidate &= (species[None, :] == species[:, None]) | (species[None, :] == species[positives, None])
        gap = ap - similarity
        candidate &= (gap > 0) & (gap <= margin)  # ... and semi-hard (p itself has gap 0, so it is excluded)
        negatives = noise.masked_fill_(~candidate, -1.0).argmax(1)
        anchors = (positive.any(1) & candidate.any(1)).nonzero().squeeze(1)
    return anchors, positives[anchors], negatives[anchors]


def cosine_triplet_loss(z: torch.Tensor, anchors: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor,
                        margin: float = 0.2) -> torch.Tensor:
    """mean(max(0, d(a, p) - d(a, n) + margin)) with d = 1 - cosine similarity; zero with no triplets."""
    if len(anchors) == 0:
        return z.sum() * 0.0
    a, p, n = (F.normalize(z[i], dim=-1) for i in (anchors, positives, negatives))
    d_ap, d_an = 1 - (a * p).sum(-1), 1 - (a * n).sum(-1)
    return F.relu(d_ap - d_an + margin).mean()
