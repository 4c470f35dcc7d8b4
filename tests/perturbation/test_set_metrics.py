"""The permutation test behind "measurable": its distance is the energy distance of the subsampled sets, a clear
shift is measurable and cells drawn like the controls mostly are not."""

import numpy as np

from stagekit.metrics.perturbation import MAX_CELLS, effect_is_measurable, energy_distance


def test_distance_is_the_energy_distance_of_the_subsampled_sets():
    rng = np.random.default_rng(0)
    observed, controls = rng.normal(0.5, 1, (300, 10)), rng.normal(0, 1, (MAX_CELLS + 700, 10))
    measurable, distance, null = effect_is_measurable(observed, controls, seed=3)
    assert np.isclose(distance, energy_distance(observed, controls, 3), rtol=1e-4)
    assert measurable and distance > null > 0


def test_cells_like_the_controls_are_rarely_measurable():
    rng = np.random.default_rng(1)
    flagged = [effect_is_measurable(rng.normal(0, 1, (40, 10)), rng.normal(0, 1, (500, 10)), seed=s)[0]
               for s in range(40)]
    assert sum(flagged) <= 6  # p < 1/21 by construction: about 2 of 40 expected
    shifted = [effect_is_measurable(rng.normal(0.8, 1, (40, 10)), rng.normal(0, 1, (500, 10)), seed=s)[0]
               for s in range(10)]
    assert all(shifted)
