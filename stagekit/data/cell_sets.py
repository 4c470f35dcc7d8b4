"""Cell sets for perturbation models: each step takes, per (perturbation, context) group, a set of perturbed cells
and a set of control cells paired with them within the same context and batch.

Sets are drawn anew every epoch from a seed and the epoch (unlike a sampler that fixes them once per run), and a
step is a list of row indices, so batches are read from the count matrix in bulk and resume can replay a step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class CellSet:
    pert: int
    context: int
    perturbed: np.ndarray  # row indices, set_len of them
    controls: np.ndarray  # row indices, one paired control per perturbed cell (same context and batch)


@dataclass
class CellGroups:
    """Rows of every (perturbation, context) group of perturbed cells, and of the controls of each (context,
    batch). `short` names the groups smaller than a set (they are drawn with replacement)."""

    groups: list[tuple[int, int, np.ndarray]]
    controls: dict[tuple[int, int], np.ndarray]
    batch: np.ndarray
    short: list[tuple[int, int]] = field(default_factory=list)


def group_cells(pert: np.ndarray, context: np.ndarray, batch: np.ndarray | None, control: int,
                rows: np.ndarray, set_len: int) -> CellGroups:
    """Groups among `rows` (e.g. the training cells). `pert`, `context`, `batch` are integer codes of every cell;
    `control` is the code of the control perturbation. A perturbed group whose context has no control cells is
    left out (nothing to pair it with)."""
    batch = np.zeros(len(pert), np.int64) if batch is None else batch
    is_control = pert[rows] == control
    controls: dict[tuple[int, int], np.ndarray] = {}
    for c, b in set(zip(context[rows][is_control].tolist(), batch[rows][is_control].tolist(), strict=True)):
        controls[(c, b)] = rows[is_control & (context[rows] == c) & (batch[rows] == b)]
    contexts_with_controls = {c for c, _ in controls}
    perturbed = rows[~is_control]
    groups, short = [], []
    for p, c in sorted(set(zip(pert[perturbed].tolist(), context[perturbed].tolist(), strict=True))):
        if c not in contexts_with_controls:
            continue
        members = perturbed[(pert[perturbed] == p) & (context[perturbed] == c)]
        groups.append((p, c, members))
        if len(members) < set_len:
            short.append((p, c))
    return CellGroups(groups, controls, batch, short)


def epoch_sets(groups: CellGroups, set_len: int, sets_per_step: int, seed: int, epoch: int) -> list[list[CellSet]]:
    """Every group once per epoch, in a seeded order, `sets_per_step` sets a step. Each set draws `set_len`
    perturbed cells of its group (with replacement only when the group is smaller) and pairs every one with a
    control cell of the same context and batch (any batch of the context when that batch has no controls)."""
    rng = np.random.default_rng([seed, epoch, 23])
    order = rng.permutation(len(groups.groups))
    sets = []
    for g in order:
        p, c, members = groups.groups[g]
        perturbed = rng.choice(members, set_len, replace=len(members) < set_len)
        controls = np.empty(set_len, np.int64)
        batches = groups.batch[perturbed]
        for b in np.unique(batches):
            pool = groups.controls.get((c, int(b)))
            if pool is None:  # no control of this batch in the context: any of the context's
                pool = np.concatenate([v for (cc, _), v in groups.controls.items() if cc == c])
            where = batches == b
            controls[where] = rng.choice(pool, int(where.sum()), replace=True)
        sets.append(CellSet(p, c, np.asarray(perturbed, np.int64), controls))
    return [sets[i:i + sets_per_step] for i in range(0, len(sets), sets_per_step)]
