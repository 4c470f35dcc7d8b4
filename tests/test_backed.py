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


def test_stored_csr_rows_come_in_one_read_each_and_match_memory(kang, monkeypatch):
    """A dense selection, scattered rows, repeated rows and none: the same rows as in memory, and the values and
    indices of all of them read together (one HDF5 read per _RANGES_PER_READ ranges), also when that is small."""
    from stagekit.data import anndata_io

    backed, in_memory = anndata_io.load_counts(kang, backed=True), anndata_io.load_counts(kang)
    reads = []
    original = anndata_io._read_ranges
    monkeypatch.setattr(anndata_io, "_read_ranges", lambda *a: reads.append(1) or original(*a))
    rng = np.random.default_rng(1)
    for index in (np.sort(rng.choice(8684, 3000, replace=False)), np.sort(rng.choice(8684, 40, replace=False)),
                  np.array([7, 7, 8, 8683]), np.array([], np.int64)):
        reads.clear()
        assert np.array_equal(backed.sparse_rows(index).toarray(), in_memory.sparse_rows(index).toarray())
        assert len(reads) == 3  # indptr, data, indices
    monkeypatch.setattr(anndata_io, "_RANGES_PER_READ", 7)  # 3,000 ranges in 429 reads of the union of 7
    index = np.sort(rng.choice(8684, 3000, replace=False))
    assert np.array_equal(backed.sparse_rows(index).toarray(), in_memory.sparse_rows(index).toarray())


def test_a_dense_matrix_is_read_in_windows_with_the_same_rows(kang, tmp_path, monkeypatch):
    """Nearby wanted rows of a dense X form one run; a run longer than the window is read in several reads (so a
    selection spread over a large file never reads the whole file at once), with the same rows."""
    import anndata

    from stagekit.data import anndata_io

    small = anndata.read_h5ad(kang)[:2000, :300]
    dense = anndata.AnnData(X=small.X.toarray(), obs=small.obs, var=small.var)
    dense.write_h5ad(tmp_path / "dense.h5ad")
    index = np.sort(np.random.default_rng(1).choice(2000, 700, replace=False))
    whole = anndata_io.load_counts(tmp_path / "dense.h5ad", backed=True).sparse_rows(index).toarray()
    monkeypatch.setattr(anndata_io, "_SPAN", 100)
    assert np.array_equal(anndata_io.load_counts(tmp_path / "dense.h5ad", backed=True).sparse_rows(index).toarray(),
                          whole)
    assert np.array_equal(whole, small.X[index].toarray())


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
