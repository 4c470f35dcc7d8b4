"""Cell sets for perturbation models: each step takes sets of perturbed cells of one (perturbation, context) group,
each cell paired with a control cell of the same context and batch.

Sets are drawn anew every epoch from a seed and the epoch (unlike a sampler that fixes them once per run): an
epoch covers every group's cells about once (a group of n cells gives round(n / set_len) sets, at least one), so
large groups weigh as much as their cells do. A step is a list of row indices, so batches are read in bulk and
resume can replay a step.
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

    def context_controls(self, context: int) -> np.ndarray:
        return np.concatenate([v for (c, _), v in self.controls.items() if c == context])


def grouped_rows(rows: np.ndarray, *codes: np.ndarray) -> list[tuple[tuple[int, ...], np.ndarray]]:
    """The rows of each combination of `codes` (integer codes of every cell) among `rows`: combinations in sorted
    order, each one's rows in the order they have in `rows`. One stable sort, where a mask per combination would
    scan every row once per group (2,000 groups of 1,000,000 cells: 2,000 passes)."""
    if not len(rows):
        return []
    values = [np.asarray(code)[rows].astype(np.int64) for code in codes]
    key = np.zeros(len(rows), np.int64)
    for v in values:  # mixed radix: sorting the key sorts the combinations
        key = key * int(v.max() - v.min() + 1) + (v - v.min())
    order = np.argsort(key, kind="stable")
    key = key[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    ends = np.r_[starts[1:], len(key)]
    return [(tuple(int(v[order[s]]) for v in values), rows[order[s:e]]) for s, e in zip(starts, ends, strict=True)]


def group_cells(pert: np.ndarray, context: np.ndarray, batch: np.ndarray | None, control: int,
                rows: np.ndarray, set_len: int, control_sets: bool = False,
                control_rows: np.ndarray | None = None) -> CellGroups:
    """Groups among `rows` (e.g. the training cells). `pert`, `context`, `batch` are integer codes of every cell;
    `control` is the code of the control perturbation. Controls are paired from `control_rows` (default: the
    controls among `rows`). A perturbed group whose context has no control cells is left out (nothing to pair it
    with). `control_sets` adds a group of the controls of each context, to be mapped to themselves (the model
    learns that no perturbation means no change)."""
    batch = np.zeros(len(pert), np.int64) if batch is None else batch
    pool = rows[pert[rows] == control] if control_rows is None else control_rows
    controls: dict[tuple[int, int], np.ndarray] = dict(grouped_rows(pool, context, batch))
    contexts_with_controls = {c for c, _ in controls}
    members_of = rows if control_sets else rows[pert[rows] != control]
    groups, short = [], []
    for (p, c), members in grouped_rows(members_of, pert, context):
        if c not in contexts_with_controls:
            continue
        groups.append((p, c, members))
        if len(members) < set_len:
            short.append((p, c))
    return CellGroups(groups, controls, batch, short)


def group_sets(groups: CellGroups, g: int, set_len: int, rng: np.random.Generator, every_cell: bool = False
               ) -> list[CellSet]:
    """One pass over group `g`: its cells in a random order cut into round(n / set_len) sets (topped up with
    random members of the group, or drawn with replacement when it is smaller than a set), each cell paired with a
    control of its context and batch (any batch of the context when that batch has no controls). `every_cell`:
    ceil(n / set_len) sets, so the first n cells of the sets are the group's n cells (the rest is the top-up)."""
    p, c, members = groups.groups[g]
    n_sets = max(1, int(np.ceil(len(members) / set_len) if every_cell else round(len(members) / set_len)))
    order = rng.permutation(members)[: n_sets * set_len]
    if len(order) < n_sets * set_len:
        order = np.concatenate([order, rng.choice(members, n_sets * set_len - len(order), replace=True)])
    controls = np.empty(len(order), np.int64)
    batches = groups.batch[order]
    for b in np.unique(batches):
        pool = groups.controls.get((c, int(b)))
        if pool is None:
            pool = groups.context_controls(c)
        where = batches == b
        controls[where] = rng.choice(pool, int(where.sum()), replace=True)
    return [CellSet(p, c, order[i:i + set_len].astype(np.int64), controls[i:i + set_len])
            for i in range(0, len(order), set_len)]


def epoch_sets(groups: CellGroups, set_len: int, sets_per_step: int, seed: int, epoch: int) -> list[list[CellSet]]:
    """The sets of one epoch (every group's cells about once), shuffled across groups, `sets_per_step` a step."""
    rng = np.random.default_rng([seed, epoch, 23])
    sets = [s for g in range(len(groups.groups)) for s in group_sets(groups, g, set_len, rng)]
    sets = [sets[i] for i in rng.permutation(len(sets))]
    return [sets[i:i + sets_per_step] for i in range(0, len(sets), sets_per_step)]
