"""Backed (on-disk) reads give exactly the in-memory rows."""

import numpy as np


def test_backed_rows_match_memory_for_scattered_and_contiguous_rows(kang):
    from stagekit.data.anndata_io import load_counts

    in_memory, backed = load_counts(kang), load_counts(kang, backed=True).select_genes(np.arange(0, 500, 7))
    in_memory = in_memory.select_genes(np.arange(0, 500, 7))
    for index in (np.arange(100, 400), np.array([3, 4, 900, 5000, 5001, 8683])):
        assert np.array_equal(backed.rows(index), in_memory.rows(index))
    scattered = np.array([5001, 3, 900, 3])
    assert np.array_equal(backed.rows_in_order(scattered), in_memory.rows_in_order(scattered))


def test_the_expression_space_is_the_same_fitted_from_disk_or_memory(kang, monkeypatch):
    """Highly variable genes and principal components of a subset of cells, read in several blocks: bit for
    bit the same whether the cells are in memory or read from disk."""
    from stagekit.data.anndata_io import load_counts
    from stagekit.stages.perturbation import space

    monkeypatch.setattr(space, "_EMBED_BLOCK", 1000)  # several blocks of the 8,684 cells' subset
    rows = np.sort(np.random.default_rng(0).choice(8684, 3500, replace=False))
    in_memory = space.fit_space(load_counts(kang), rows, 300, 20)
    backed = space.fit_space(load_counts(kang, backed=True), rows, 300, 20)
    assert in_memory.genes == backed.genes and len(backed.genes) == 300
    assert np.array_equal(in_memory.mean, backed.mean) and np.array_equal(in_memory.components, backed.components)
