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


@pytest.fixture
def existing_output(tmp_path: Path) -> Path:
    out = tmp_path / "out.stk"
    out.write_bytes(b"precious")
    return out


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
