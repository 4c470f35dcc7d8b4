import numpy as np
import scipy.sparse as sp

from stagekit.data.hvg import highly_variable_genes, seurat_v3_variances


def test_overdispersed_genes_rank_first():
    rng = np.random.default_rng(0)
    n, g = 500, 200
    means = rng.uniform(0.5, 5, g)
    means[:5] = 1.0
    counts = rng.poisson(means, size=(n, g)).astype(np.float32)  # Poisson: no excess variance
    marker = rng.random(n) < 0.2  # five genes high in a fifth of the cells, mean within the others' range
    counts[marker, :5] += rng.poisson(10, size=(marker.sum(), 5))
    top = highly_variable_genes(sp.csr_matrix(counts), 5)
    assert top.tolist() == [0, 1, 2, 3, 4]
    variances = seurat_v3_variances(sp.csr_matrix(counts))
    assert np.isfinite(variances).all() and variances[:5].min() > variances[5:].max()


def test_all_genes_when_fewer_than_requested_and_zero_genes_last():
    counts = sp.csr_matrix(np.array([[1, 0, 3], [2, 0, 1], [0, 0, 5]], dtype=np.float32))
    assert highly_variable_genes(counts, 10).tolist() == [0, 1, 2]
    assert seurat_v3_variances(counts)[1] == -np.inf


def test_few_cells_still_rank_genes():
    """35 real cells of one type give many tied means, where a narrow loess fit fails; it widens instead."""
    import anndata

    from stagekit.data.demo import DEMO_CELLS

    cells = anndata.read_h5ad(DEMO_CELLS)
    beta = cells[(cells.obs["Batch"] == "mouse") & (cells.obs["Group"] == "beta")]
    assert beta.n_obs == 35
    assert len(highly_variable_genes(sp.csr_matrix(beta.X), 2000)) == 2000


def test_backed_blocks_give_the_in_memory_genes(kang):
    from stagekit.data.anndata_io import load_counts

    in_memory = load_counts(kang)
    backed = load_counts(kang, backed=True)  # 8,684 cells: two blocks of at most 8,192
    assert np.array_equal(highly_variable_genes(in_memory.matrix, 1000), highly_variable_genes(backed, 1000))
    subset = np.arange(0, in_memory.n_vars, 3)
    assert np.array_equal(highly_variable_genes(in_memory.select_genes(subset).matrix, 300),
                          highly_variable_genes(backed.select_genes(subset), 300))

