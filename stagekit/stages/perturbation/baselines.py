"""The shifts evaluate's baselines add to control cells, computed from the training cells: the mean shift of every
training perturbation, a perturbation's own shift in the other contexts (the zero-shot baseline), and the group's
own shift where it has training cells (the few-shot baseline: what its few training cells say on average)."""

from __future__ import annotations

import numpy as np

from stagekit.stages.perturbation.screen import TRAIN, Screen
from stagekit.stages.perturbation.space import SpaceGenes


def training_shifts(screen: Screen, genes: SpaceGenes, embedding: np.ndarray) -> dict[str, np.ndarray]:
    """Mean training shift over perturbed groups, and each (perturbation, context) group's own shift, in both
    spaces; a shift is the mean of the group's training cells minus the mean of its context's training controls.
    The gene means come from one pass over blocks of the training cells (in memory or on disk alike)."""
    train = screen.rows(TRAIN)
    with_controls = set(screen.context[train[screen.pert[train] == screen.control]].tolist())
    train = train[np.isin(screen.context[train], sorted(with_controls))]
    pairs = np.stack([screen.pert[train], screen.context[train]], 1)
    found, labels = np.unique(pairs, axis=0, return_inverse=True)
    labels = labels.ravel()
    means_g = genes.label_means(train, labels, len(found))
    means_e = np.zeros((len(found), embedding.shape[1]))
    np.add.at(means_e, labels, embedding[train])
    means_e /= np.maximum(np.bincount(labels, minlength=len(found)), 1)[:, None]
    base = {int(c): i for i, (p, c) in enumerate(found.tolist()) if p == screen.control}
    perturbed = [i for i, (p, c) in enumerate(found.tolist()) if p != screen.control]
    keys = found[perturbed]
    control_of = [base[int(c)] for c in keys[:, 1]]
    return {"keys": keys.astype(np.int64).reshape(-1, 2),
            "genes": (means_g[perturbed] - means_g[control_of]).astype(np.float32).reshape(len(perturbed), -1),
            "embedding": (means_e[perturbed] - means_e[control_of]).astype(np.float32).reshape(len(perturbed), -1)}


def baseline_shifts(screen: Screen, groups: list[tuple[int, int]], shifts: dict[str, np.ndarray]) -> dict:
    """Per held-out group: the mean training shift, the same perturbation's mean shift in the other contexts
    (NaN where it has no training cells elsewhere) and the group's own training shift (NaN without training
    cells)."""
    keys = shifts["keys"]
    out = {"groups": [f"{screen.perts[p]}\t{screen.contexts[c]}" for p, c in groups]}
    for space in ("genes", "embedding"):
        values = shifts[space]
        width = values.shape[1] if len(values) else 0
        out[f"training_mean_{space}"] = values.mean(0) if len(values) else np.zeros(width, np.float32)
        other = np.full((len(groups), width), np.nan, np.float32)
        own = np.full((len(groups), width), np.nan, np.float32)
        for i, (p, c) in enumerate(groups):
            same = (keys[:, 0] == p) & (keys[:, 1] != c) if len(keys) else np.zeros(0, bool)
            if same.any():
                other[i] = values[same].mean(0)
            itself = (keys[:, 0] == p) & (keys[:, 1] == c) if len(keys) else np.zeros(0, bool)
            if itself.any():
                own[i] = values[itself][0]
        out[f"other_contexts_{space}"] = other
        out[f"own_shift_{space}"] = own
    return out
