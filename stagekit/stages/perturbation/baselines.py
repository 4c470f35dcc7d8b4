"""The shifts evaluate's baselines add to control cells, computed from the training cells: the mean shift of every
training perturbation, a perturbation's own shift in the other contexts (the zero-shot baseline), and the group's
own shift where it has training cells (the few-shot baseline: what its few training cells say on average)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from stagekit.stages.perturbation.screen import TRAIN, Screen


def training_shifts(screen: Screen, genes: sp.csr_matrix, embedding: np.ndarray) -> dict[str, np.ndarray]:
    """Mean training shift over perturbed groups, and each (perturbation, context) group's own shift, in both
    spaces; a shift is the mean of the group's training cells minus the mean of its context's training controls."""
    train = screen.rows(TRAIN)
    keys, shifts_g, shifts_e = [], [], []
    for c in sorted(set(screen.context[train].tolist())):
        in_context = train[screen.context[train] == c]
        ctrl = in_context[screen.pert[in_context] == screen.control]
        if not len(ctrl):
            continue
        base_g, base_e = np.asarray(genes[ctrl].mean(0)).ravel(), embedding[ctrl].mean(0)
        for p in sorted(set(screen.pert[in_context].tolist()) - {screen.control}):
            rows = in_context[screen.pert[in_context] == p]
            keys.append((p, c))
            shifts_g.append(np.asarray(genes[rows].mean(0)).ravel() - base_g)
            shifts_e.append(embedding[rows].mean(0) - base_e)
    return {"keys": np.array(keys, np.int64).reshape(-1, 2), "genes": np.array(shifts_g, np.float32),
            "embedding": np.array(shifts_e, np.float32)}


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
