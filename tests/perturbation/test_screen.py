"""Splits of a perturbation screen: fractions per group (controls included), zero-shot contexts and
perturbations, the features a held-out perturbation needs, and seeded repeatability."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stagekit.errors import UserError
from stagekit.stages.perturbation.screen import EXCLUDED, TEST, TRAIN, VAL, SplitRequest, assign_split, read_screen


def _screen():
    rng = np.random.default_rng(0)
    pert = np.repeat(["ctrl", "A", "B", "junk"], [400, 200, 200, 50])
    context = rng.choice(["T", "B", "NK"], len(pert))
    obs = pd.DataFrame({"p": pert, "c": context, "b": rng.choice(["d1", "d2"], len(pert))})
    return read_screen(obs, Path("s.h5ad"), "p", "ctrl", "c", "b", ["junk"])


def _request(**kw):
    return SplitRequest(**({"test_fraction": 0.2, "val_fraction": 0.1, "holdout_contexts": [], "holdout_perts": [],
                            "has_features": False, "seed": 0} | kw))


def test_fractions_per_group_and_excluded_cells():
    screen = _screen()
    split = assign_split(screen, _request(), Path("s.h5ad"))
    assert (split[screen.pert < 0] == EXCLUDED).all() and (screen.pert < 0).sum() == 50
    for p in range(len(screen.perts)):
        for c in range(len(screen.contexts)):
            members = (screen.pert == p) & (screen.context == c)
            assert abs((split[members] == TEST).mean() - 0.2) < 0.03
            assert abs((split[members] == VAL).sum() / (split[members] != TEST).sum() - 0.1) < 0.03
    assert np.array_equal(split, assign_split(screen, _request(), Path("s.h5ad")))  # seeded
    assert not np.array_equal(split, assign_split(screen, _request(seed=1), Path("s.h5ad")))


def test_zero_shot_context_and_perturbation():
    screen = _screen()
    split = assign_split(screen, _request(holdout_contexts=["NK"], holdout_perts=["B"], has_features=True),
                         Path("s.h5ad"))
    nk, b, ctrl = screen.contexts.index("NK"), screen.perts.index("B"), screen.control
    assert (split[(screen.context == nk) & (screen.pert != ctrl) & (screen.pert >= 0)] == TEST).all()
    assert (split[screen.pert == b] == TEST).all()
    assert (split[(screen.context == nk) & (screen.pert == ctrl)] == TRAIN).mean() > 0.6  # its controls train
    assert sorted(screen.held_out_groups()) == screen.held_out_groups()


def test_a_perturbation_never_seen_needs_features():
    screen = _screen()
    with pytest.raises(UserError, match="--holdout-perts needs --pert-features"):
        assign_split(screen, _request(holdout_perts=["A"]), Path("s.h5ad"))
    with pytest.raises(UserError, match="no perturbed cell is left"):
        assign_split(screen, _request(holdout_perts=["A", "B"], has_features=True), Path("s.h5ad"))
