import numpy as np

from stagekit.data.pairs import GroupPartners, NeighbourPartners


def test_group_partners_stay_in_group():
    groups = np.array([0, 1, 0, 2, 1, 0, 1])
    partners = GroupPartners(groups).sample(np.arange(7), np.random.default_rng(0))
    assert np.array_equal(groups[partners], groups)
    assert partners[3] == 3  # a group of one pairs a cell with itself


def test_neighbour_partners_are_near_neighbours():
    noise = np.random.default_rng(0).normal(0, 0.1, (10, 2))
    points = np.concatenate([np.zeros((5, 2)), np.full((5, 2), 10.0)]) + noise
    sampler = NeighbourPartners(points, k=3)
    partners = sampler.sample(np.arange(10), np.random.default_rng(1))
    assert np.array_equal(partners // 5, np.arange(10) // 5) and (partners != np.arange(10)).all()
