"""Bad input: one line naming the file/key/column, exit 2, no traceback, existing output untouched."""

from pathlib import Path

import anndata
import numpy as np
import pytest
import scipy.sparse as sp

from tests.conftest import run_cli


def _write(path: Path, X, obs=None) -> Path:
    adata = anndata.AnnData(X=X)
    if obs:
        for k, v in obs.items():
            adata.obs[k] = v
    adata.write_h5ad(path)
    return path


def _pretrain(capsys, data, out, *extra):
    return run_cli(capsys, "pretrain", "--preset", "vae", data, "-o", out, "--set", "training.epochs=1", *extra)


def _assert_user_error(code, out, err, *needles):
    assert code == 2, err
    assert out == "" and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err


def test_missing_file(capsys, tmp_path, existing_output):
    _assert_user_error(*_pretrain(capsys, tmp_path / "nope.h5ad", existing_output), "nope.h5ad", "does not exist")
    assert existing_output.read_bytes() == b"precious"


def test_not_an_h5ad(capsys, tmp_path, existing_output):
    bad = tmp_path / "cells.h5ad"
    bad.write_text("barcode,gene\n")
    _assert_user_error(*_pretrain(capsys, bad, existing_output), "cells.h5ad", "not a readable .h5ad")
    assert existing_output.read_bytes() == b"precious"


def test_missing_obs_column(capsys, tmp_path, existing_output):
    data = _write(tmp_path / "d.h5ad", sp.csr_matrix(np.ones((20, 5), np.float32)), {"cell_type": ["a"] * 20})
    _assert_user_error(*_pretrain(capsys, data, existing_output, "--label-key", "celltype"),
                       "obs column 'celltype' not found", "cell_type")
    assert existing_output.read_bytes() == b"precious"


def test_negative_counts(capsys, tmp_path, existing_output):
    X = np.ones((20, 5), np.float32)
    X[3, 2] = -1
    _assert_user_error(*_pretrain(capsys, _write(tmp_path / "neg.h5ad", sp.csr_matrix(X)), existing_output),
                       "neg.h5ad", "negative values", "data.layer")


def test_nan_and_non_integer(capsys, tmp_path, existing_output):
    X = np.ones((20, 5), np.float32)
    X[1, 1] = np.nan
    _assert_user_error(*_pretrain(capsys, _write(tmp_path / "nan.h5ad", X), existing_output), "nan.h5ad", "NaN")
    X[1, 1] = 0.5
    _assert_user_error(*_pretrain(capsys, _write(tmp_path / "frac.h5ad", X), existing_output), "non-integer")
    assert existing_output.read_bytes() == b"precious"


def test_missing_layer_and_missing_obs_values(capsys, tmp_path, existing_output):
    data = _write(tmp_path / "d.h5ad", np.ones((20, 5), np.float32), {"donor": ["a"] * 19 + [None]})
    _assert_user_error(*_pretrain(capsys, data, existing_output, "--layer", "counts"), "layer 'counts' not found")
    _assert_user_error(*_pretrain(capsys, data, existing_output, "--batch-key", "donor"), "1 missing values")


def test_output_folder_missing_and_resume_of_non_bundle(capsys, tmp_path, small_h5ad):
    _assert_user_error(*_pretrain(capsys, small_h5ad, tmp_path / "no" / "out.stk"), "does not exist")
    fake = tmp_path / "fake.stk"
    fake.write_text("x")
    _assert_user_error(*run_cli(capsys, "pretrain", small_h5ad, "-o", tmp_path / "o.stk", "--resume", fake),
                       "not a stagekit bundle")


def test_written_h5ad_has_plain_strings_for_any_anndata(tmp_path):
    """pandas 3 makes string columns Arrow-backed by default; anndata refuses to write those unless told to."""
    import anndata
    import pandas as pd

    from stagekit.data.anndata_io import write_h5ad

    obs = pd.DataFrame({"label": pd.array(["a", "b", "c"], dtype="string")},
                       index=pd.Index(["x", "y", "z"], dtype="string"))
    write_h5ad(anndata.AnnData(np.ones((3, 2), dtype=np.float32), obs=obs), tmp_path / "t.h5ad")
    back = anndata.read_h5ad(tmp_path / "t.h5ad")
    assert back.obs["label"].tolist() == ["a", "b", "c"] and back.obs_names.tolist() == ["x", "y", "z"]


def test_all_zero_counts(capsys, tmp_path, existing_output):
    """Every cell with zero counts: one line naming the file (normalising by totals used to divide by zero)."""
    zero = _write(tmp_path / "zero.h5ad", sp.csr_matrix((40, 60), dtype=np.float32))
    _assert_user_error(*_pretrain(capsys, zero, existing_output), "zero.h5ad", "every cell has zero counts")
    assert existing_output.read_bytes() == b"precious"
    _assert_user_error(*run_cli(capsys, "pretrain", "--preset", "autoencoder", zero, "-o", existing_output,
                                "--set", "training.epochs=1"), "zero.h5ad", "every value is zero")
    assert existing_output.read_bytes() == b"precious"


def test_zero_count_cells_and_genes_among_others_train(capsys, tmp_path):
    X = np.random.default_rng(0).poisson(1.0, (40, 60)).astype(np.float32)
    X[[3, 7]] = 0  # empty droplets
    X[:, 5] = 0  # a gene never seen
    code, out, err = _pretrain(capsys, _write(tmp_path / "some.h5ad", sp.csr_matrix(X)), tmp_path / "o.stk")
    assert code == 0 and out.strip().endswith("o.stk"), err


def test_a_species_or_gene_selection_without_counts(tmp_path):
    from stagekit.data.anndata_io import load_counts, split_by_column
    from stagekit.data.hvg import highly_variable_genes
    from stagekit.errors import UserError

    X = np.random.default_rng(0).poisson(1.0, (40, 80)).astype(np.float32)
    X[20:] = 0
    data = _write(tmp_path / "two.h5ad", sp.csr_matrix(X), {"species": ["human"] * 20 + ["mouse"] * 20})
    counts = load_counts(data, obs_keys=("species",))
    with pytest.raises(UserError, match=r"two.h5ad \(X\): every cell of obs column 'species' = 'mouse' has zero"):
        split_by_column(counts, "species")
    with pytest.raises(UserError, match="none of the 80 genes varies across cells"):
        highly_variable_genes(sp.csr_matrix(X[20:]), 10)
    backed = load_counts(data, backed=True).select_genes(np.arange(40))
    X[:, :40] = 0
    _write(data, sp.csr_matrix(X))
    with pytest.raises(UserError, match=r"two.h5ad \(X\): none of the 40 genes varies"):
        highly_variable_genes(backed, 10)


def test_pickled_protein_embeddings_are_refused_in_one_line(tmp_path):
    import torch

    from stagekit.data.protein_embeddings import load_gene_embeddings
    from stagekit.errors import UserError

    pickled = tmp_path / "emb.pt"
    torch.save({"INS": np.ones(4)}, pickled)  # numpy arrays are pickled objects to torch
    with pytest.raises(UserError) as caught:
        load_gene_embeddings(pickled)
    message = str(caught.value)
    assert message == (f"{pickled} holds pickled Python objects, which stagekit never loads; save a dict of gene "
                       "symbol -> tensor with torch.save (tensors only), or use .h5/.npz")
    plain = tmp_path / "plain.pt"
    torch.save({"INS": torch.ones(4), "GCG": torch.zeros(4, dtype=torch.float64)}, plain)
    assert load_gene_embeddings(plain).vectors.shape == (2, 4)  # tensors only: still accepted


def test_one_cell_is_too_few_to_train(capsys, tmp_path, existing_output):
    data = _write(tmp_path / "one.h5ad", sp.csr_matrix(np.ones((1, 5), np.float32)))
    _assert_user_error(*_pretrain(capsys, data, existing_output), "one.h5ad", "1 cell", "too few to train")
    assert existing_output.read_bytes() == b"precious"
