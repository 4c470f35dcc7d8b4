"""Groundwork for `align`: vectorised cross-species triplet mining and the cosine triplet loss."""

import torch

from stagekit.losses.triplet import cosine_triplet_loss, mine_triplets, mutual_neighbours


def _toy(seed=0):
    """Two species x two cell types; species B is a shifted copy of A (naive 1-NN transfer: 0.8 for seed 0)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    types = torch.arange(40) % 2
    species = (torch.arange(40) >= 20).long()
    z = centres[types] + 0.4 * torch.randn(40, 3, generator=g) + torch.tensor([0.7, 0.0, 2.0]) * species[:, None]
    labels = species * 2 + types  # species-prefixed labels: 4 codes
    return z, species, labels, types


def test_mutual_neighbours_cross_species_only():
    z, species, _, types = _toy()
    sim = torch.nn.functional.normalize(z, dim=-1) @ torch.nn.functional.normalize(z, dim=-1).T
    mask = mutual_neighbours(sim, species, k=3)
    assert torch.equal(mask, mask.T) and mask.any()
    i, j = mask.nonzero().T
    assert (species[i] != species[j]).all()
    assert (types[i] == types[j]).float().mean() > 0.7  # MNN pairs mostly share the cell type (chance: 0.5)


def test_mined_triplets_obey_the_rules():
    z, species, labels, _ = _toy()
    a, p, n = mine_triplets(z, species, labels, margin=0.2, generator=torch.Generator().manual_seed(0))
    assert len(a) > 0
    assert (labels[n] != labels[a]).all()
    assert ((species[n] == species[a]) | (species[n] == species[p])).all()
    unit = torch.nn.functional.normalize(z, dim=-1)
    gap = (unit[a] * unit[p]).sum(-1) - (unit[a] * unit[n]).sum(-1)
    assert ((gap > 0) & (gap <= 0.2 + 1e-6)).all()
    assert (species[p] != species[a]).any()  # cross-species positives from MNN


def test_label_without_partners_is_skipped_not_a_crash():
    z = torch.randn(6, 4)
    species = torch.tensor([0, 0, 0, 1, 1, 1])
    labels = torch.tensor([0, 1, 2, 3, 4, 5])  # every cell alone in its label
    a, p, n = mine_triplets(z, species, labels, mnn=False)
    assert len(a) == len(p) == len(n) == 0
    assert cosine_triplet_loss(z.requires_grad_(), a, p, n).item() == 0.0


def test_triplet_training_pulls_types_together_across_species():
    z0, species, labels, types = _toy()

    def transfer(z):
        unit = torch.nn.functional.normalize(z.detach(), dim=-1)
        sim = unit[species == 1] @ unit[species == 0].T
        return (types[species == 0][sim.argmax(1)] == types[species == 1]).float().mean()

    before = transfer(z0)
    z = z0.clone().requires_grad_()
    optimizer = torch.optim.Adam([z], lr=0.05)
    g = torch.Generator().manual_seed(0)
    for _ in range(60):
        a, p, n = mine_triplets(z, species, labels, margin=0.2, generator=g)
        loss = cosine_triplet_loss(z, a, p, n)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert before <= 0.85 and transfer(z) >= 0.95
