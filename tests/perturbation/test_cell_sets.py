"""Cell sets on the real IFN-beta stimulation data (Kang: ctrl/stim x 5 cell types): controls are paired within
context and batch, sets change every epoch and repeat for the same seed and epoch, small groups are flagged."""

import numpy as np

from stagekit.data.anndata_io import category_codes, load_counts
from stagekit.data.cell_sets import epoch_sets, group_cells, grouped_rows
from tests.conftest import shared_file


def test_sets_pair_controls_within_context_and_batch_and_change_every_epoch():
    counts = load_counts(shared_file("kang2018_muscat_example_sce.h5ad"))
    pert, perts = category_codes(counts.obs, "group_id")
    context, _ = category_codes(counts.obs, "cluster_id")
    counts.obs["donor"] = counts.obs["sample_id"].astype(str).str[-3:]  # ctrl101 / stim101: donor 101
    batch, _ = category_codes(counts.obs, "donor")
    control = perts.index("ctrl")
    rows = np.arange(counts.n_obs)
    groups = group_cells(pert, context, batch, control, rows, set_len=32)
    assert len(groups.groups) == len(set(context[pert != control].tolist()))  # one stimulated group per type
    steps = epoch_sets(groups, 32, 4, seed=0, epoch=0)
    sets = [s for step in steps for s in step]
    expected = sum(max(1, round(len(m) / 32)) for _, _, m in groups.groups)  # every group's cells about once
    assert len(sets) == expected and all(len(step) <= 4 for step in steps)
    for p, c, members in groups.groups:  # each group's cells once (topped up with repeats to whole sets)
        drawn = np.concatenate([s.perturbed for s in sets if (s.pert, s.context) == (p, c)])
        assert len(np.unique(drawn)) == min(len(members), len(drawn)) and set(drawn) <= set(members)
    for s in sets:
        assert (pert[s.perturbed] == s.pert).all() and (context[s.perturbed] == s.context).all()
        assert (pert[s.controls] == control).all() and (context[s.controls] == s.context).all()
        assert (batch[s.controls] == batch[s.perturbed]).all()  # paired within batch
    again = [s for step in epoch_sets(groups, 32, 4, seed=0, epoch=0) for s in step]
    later = [s for step in epoch_sets(groups, 32, 4, seed=0, epoch=1) for s in step]
    assert all(np.array_equal(a.perturbed, b.perturbed) for a, b in zip(sets, again, strict=True))
    assert not all(np.array_equal(a.perturbed, b.perturbed) for a, b in zip(sets, later, strict=True))
    x = counts.rows_in_order(np.concatenate([s.perturbed for s in steps[0]]))  # one bulk read a step
    assert x.shape == (32 * len(steps[0]), counts.n_vars)


def test_small_groups_are_drawn_with_replacement_and_flagged():
    pert = np.array([0] * 10 + [1] * 3 + [2] * 40)
    context = np.zeros(len(pert), np.int64)
    groups = group_cells(pert, context, None, control=0, rows=np.arange(len(pert)), set_len=8)
    assert groups.short == [(1, 0)]
    (small,) = [s for step in epoch_sets(groups, 8, 2, 0, 0) for s in step if s.pert == 1]
    assert len(small.perturbed) == 8 and set(small.perturbed) <= {10, 11, 12}
    with_controls = group_cells(pert, context, None, control=0, rows=np.arange(len(pert)), set_len=8,
                                control_sets=True)
    assert [(p, c) for p, c, _ in with_controls.groups] == [(0, 0), (1, 0), (2, 0)]  # controls map to themselves


def test_grouped_rows_equals_a_mask_per_combination():
    rng = np.random.default_rng(0)
    pert, context = rng.integers(-1, 40, 5000), rng.integers(0, 3, 5000)
    rows = rng.permutation(5000)[:3000]  # any order: each group keeps it
    expected = [((p, c), rows[(pert[rows] == p) & (context[rows] == c)])
                for p, c in sorted(set(zip(pert[rows].tolist(), context[rows].tolist(), strict=True)))]
    found = grouped_rows(rows, pert, context)
    assert [k for k, _ in found] == [k for k, _ in expected]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(found, expected, strict=True))
    assert grouped_rows(rows[:0], pert, context) == []
