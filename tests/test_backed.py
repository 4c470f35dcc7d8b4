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
