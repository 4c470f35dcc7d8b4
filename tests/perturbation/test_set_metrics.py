"""The permutation test behind "measurable": its distance is the energy distance of the subsampled sets, a clear
shift is measurable and cells drawn like the controls mostly are not."""

import numpy as np

from stagekit.metrics.perturbation import (
    MAX_CELLS,
    SetDistances,
    _subsample,
    effect_is_measurable,
    energy_distance,
    mmd,
)


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


def _geomloss(kind: str, a: np.ndarray, b: np.ndarray, seed: int, blur: float = 0.05) -> float:
    """geomloss on the subsamples the set distances take (`a` drawn first)."""
    import torch
    from geomloss import SamplesLoss

    rng = np.random.default_rng(seed)
    x, y = (torch.from_numpy(_subsample(v, rng).astype(np.float64)) for v in (a, b))
    return float(SamplesLoss(kind, blur=blur)(x, y))


def test_set_distances_are_geomloss_energy_and_gaussian_mmd():
    rng = np.random.default_rng(2)
    observed = rng.normal(3.0, 1, (MAX_CELLS + 300, 20))
    distances = SetDistances(observed, width=4.0)
    for candidate in (rng.normal(3.2, 1.1, (150, 20)), rng.normal(3.0, 0.5, (MAX_CELLS + 50, 20)), observed[:40]):
        energy, kernel = distances.against(candidate, seed=5)
        assert np.isclose(energy, _geomloss("energy", candidate, observed, 5), rtol=1e-4, atol=1e-6)
        assert np.isclose(kernel, _geomloss("gaussian", candidate, observed, 5, blur=4.0), rtol=1e-4, atol=1e-7)
        assert energy == energy_distance(candidate, observed, 5)
        assert kernel == mmd(candidate, observed, 4.0, 5)
    assert distances.against(observed[:MAX_CELLS], seed=1)[0] < distances.against(observed[:40] + 1.0, seed=1)[0]
