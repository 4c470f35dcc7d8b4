"""`align`'s vectorised cross-species triplet mining (SATURN's label groups) and the cosine triplet loss."""

import pytest
import torch

from stagekit.losses.triplet import cosine_triplet_loss, label_groups, mine_triplets


def _toy(seed=0):
    """Two species x two cell types; species B is a shifted copy of A (naive 1-NN transfer: 0.8 for seed 0)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    types = torch.arange(40) % 2
    species = (torch.arange(40) >= 20).long()
    z = centres[types] + 0.4 * torch.randn(40, 3, generator=g) + torch.tensor([0.7, 0.0, 2.0]) * species[:, None]
    labels = species * 2 + types  # species-prefixed labels: 4 codes
    return z, species, labels, types


def test_label_groups_add_mutual_cross_species_neighbours():
    # species 0: cells 0 (label 0), 1 (label 1); species 1: cells 2 (label 2), 3 (label 3)
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9]])
    species, labels = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 2, 3])
    groups = label_groups(z, species, labels, mnn_k=1)
    # cell 2 is cell 0's nearest other-species cell and points back at label 0, so it joins label 0's group
    assert groups[2, 0] and groups[0, 2] and groups[3, 1] and groups[1, 3]
    assert not groups[2, 1] and not groups[3, 0]
    # a one-way link is dropped with mnn and kept without it
    z_oneway = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]])
    # nearest other-species: 0 -> 2, 1 -> 2, 2 -> 1, 3 -> 1; 0's link to 2 is not returned (2 points at label 1)
    assert not label_groups(z_oneway, species, labels, mnn_k=1)[2, 0]
    assert label_groups(z_oneway, species, labels, mnn=False)[2, 0]


def test_label_links_are_confirmed_by_a_majority_of_neighbours():
    # species 0: cells 0-2 label 0, cell 3 label 1; species 1: cell 4 (label 2) sits nearest to cell 3 but its
    # other neighbours are label-0 cells: with 3 voters the link 3 -> 4 is not confirmed, with 1 voter it is
    z = torch.tensor([[1.0, 0.05], [1.0, 0.1], [1.0, 0.15], [1.0, 0.0], [1.0, 0.01]])
    species, labels = torch.tensor([0, 0, 0, 0, 1]), torch.tensor([0, 0, 0, 1, 2])
    assert label_groups(z, species, labels, mnn_k=1)[4, 1]
    assert not label_groups(z, species, labels, mnn_k=3)[4, 1]


def test_mined_triplets_obey_the_rules():
    z, species, labels, _ = _toy()
    a, p, n = mine_triplets(z, species, labels, margin=0.2, generator=torch.Generator().manual_seed(0))
    assert len(a) > 0
    assert (labels[n] != labels[a]).all()
    assert ((species[n] == species[a]) | (species[n] == species[p])).all()
    unit = torch.nn.functional.normalize(z, dim=-1)
    gap = (unit[a] * unit[p]).sum(-1) - (unit[a] * unit[n]).sum(-1)
    assert ((gap > 0) & (gap <= 0.2 + 1e-6)).all()
    assert (species[p] != species[a]).all()  # every positive is from another species
    assert (labels[n] != labels[p]).all()  # never the positive's own cell type


def test_a_negative_never_has_the_positives_label_even_when_unlinked():
    # angles (radians): species 0: cell 0 at 0.0 and cell 1 at 0.1 (label 0), cell 2 at 1.5 (label 1); species 1:
    # cells 3 at 0.08 and 4 at 0.6 (label 2), cell 5 at 1.45 (label 3). Cell 3 (nearest to cell 0) joins label 0's
    # group; cell 4 is of the same label as cell 3 but shares no group with cell 0: it must not be 0's negative.
    angles = torch.tensor([0.0, 0.1, 1.5, 0.08, 0.6, 1.45])
    z = torch.stack([angles.cos(), angles.sin()], 1)
    species, labels = torch.tensor([0, 0, 0, 1, 1, 1]), torch.tensor([0, 0, 1, 2, 2, 3])
    groups = label_groups(z, species, labels, mnn_k=1)
    assert groups[3, 0] and not (groups[0] & groups[4]).any()
    for seed in range(20):
        a, p, n = mine_triplets(z, species, labels, margin=1.0, generator=torch.Generator().manual_seed(seed),
                                mnn_k=1)
        assert not ((a == 0) & (n == 4)).any() and (labels[n] != labels[p]).all()


def test_a_random_negative_counts_only_when_semi_hard():
    z, species, labels, _ = _toy()
    unit = torch.nn.functional.normalize(z, dim=-1)
    searched = mine_triplets(z, species, labels, margin=0.2, generator=torch.Generator().manual_seed(0), search=True)
    drawn = mine_triplets(z, species, labels, margin=0.2, generator=torch.Generator().manual_seed(0), search=False)
    a, p, n = drawn
    gap = (unit[a] * unit[p]).sum(-1) - (unit[a] * unit[n]).sum(-1)
    assert 0 < len(a) < len(searched[0]) and ((gap > 0) & (gap <= 0.2 + 1e-6)).all()
    assert (labels[n] != labels[p]).all() and (labels[n] != labels[a]).all()


def test_cells_without_partners_are_skipped_not_a_crash():
    z = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    a, p, n = mine_triplets(z, torch.zeros(6, dtype=torch.long), labels, mnn=False)  # one species: no positives
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


def test_species_balancing_equalises_triplets_per_anchor_species():
    z, species, labels, _ = _toy()
    keep = torch.cat([torch.arange(20), torch.arange(20, 28)])  # species 1 has far fewer cells
    z, species, labels = z[keep], species[keep], labels[keep]
    a, _, _ = mine_triplets(z, species, labels, margin=0.5, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(species[a], minlength=2)
    assert counts[0] != counts[1]
    a, p, n = mine_triplets(z, species, labels, margin=0.5, generator=torch.Generator().manual_seed(0),
                            balance_species=True)  # the same draw, then a balanced subset
    counts_balanced = torch.bincount(species[a], minlength=2)
    assert counts_balanced[0] == counts_balanced[1] == counts.min()
    assert (species[p] != species[a]).all()


def test_three_species_negatives_come_from_the_anchor_or_positive_species():
    g = torch.Generator().manual_seed(1)
    types = torch.arange(60) % 3
    species = torch.arange(60) // 20
    z = torch.eye(4)[types] + 0.5 * torch.randn(60, 4, generator=g) + 0.3 * species[:, None]
    labels = species * 3 + types
    a, p, n = mine_triplets(z, species, labels, margin=0.3, generator=torch.Generator().manual_seed(0))
    assert len(a) > 0 and (species[p] != species[a]).all()
    assert ((species[n] == species[a]) | (species[n] == species[p])).all()
    assert (species[n] != species[a]).any()  # some negatives from the positive's species: all three are used


def test_cells_must_come_grouped_by_species():
    z = torch.randn(4, 3)
    with pytest.raises(ValueError, match="grouped by species"):
        mine_triplets(z, torch.tensor([0, 1, 0, 1]), torch.tensor([0, 1, 0, 1]))
