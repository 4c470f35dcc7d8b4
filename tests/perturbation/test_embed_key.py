"""`--embed-key`: the transition model works in an embedding the data already hold (obsm), with a gene decoder
where the data hold counts and in the embedding alone where they do not."""

import anndata
import h5py
import numpy as np
import pytest
import scipy.sparse as sp

from stagekit.bundle import read_bundle
from tests.conftest import run_cli, shared_file

DESIGN = ["--pert-key", "group_id", "--control", "ctrl", "--context-key", "cluster_id"]
SMALL = ["--set", "model.hidden=32", "--set", "model.n_layers=1", "--set", "data.n_genes=200", "-q"]
WIDTH = 12


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    """Kang's control / IFN-beta cells with obsm["X_latent"] (the top principal components of their log-normalised
    counts, a stand-in for an scVI or STATE embedding); the same cells without counts; two halves whose
    embeddings differ in width (every other cell)."""
    folder = tmp_path_factory.mktemp("embed")
    adata = anndata.read_h5ad(shared_file("kang2018_muscat_example_sce.h5ad"))
    counts = sp.csr_matrix(adata.X, dtype=np.float32)
    logged = np.log1p(np.asarray((sp.diags(1e4 / counts.sum(1).A1) @ counts).todense()))
    centred = logged - logged.mean(0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    adata.obsm["X_latent"] = (u[:, :WIDTH] * s[:WIDTH]).astype(np.float32)
    found = {"counts": folder / "counts.h5ad", "no_counts": folder / "no_counts.h5ad",
             "half_a": folder / "a.h5ad", "half_b": folder / "b.h5ad"}
    adata.write_h5ad(found["counts"])
    anndata.AnnData(obs=adata.obs.copy(), obsm={"X_latent": adata.obsm["X_latent"]}).write_h5ad(found["no_counts"])
    adata[::2].copy().write_h5ad(found["half_a"])
    narrow = adata[1::2].copy()
    narrow.obsm["X_latent"] = narrow.obsm["X_latent"][:, :WIDTH - 2]
    narrow.write_h5ad(found["half_b"])
    return found


def _pretrain(capsys, data, out, *extra):
    return run_cli(capsys, "pretrain", "--preset", "transition", data, *DESIGN, "--embed-key", "X_latent", *SMALL,
                   *extra, "-o", out)


def test_with_counts_the_model_works_in_the_embedding_and_decodes_genes(files, tmp_path, capsys):
    """The embedding is the data's own (no PCA); the decoder maps it to the highly variable genes; the model
    learns; from disk the same run; evaluate scores in both spaces."""
    runs = {}
    for mode, extra in (("memory", []), ("backed", ["--backed"])):
        runs[mode] = tmp_path / f"{mode}.stk"
        code, _, err = _pretrain(capsys, files["counts"], runs[mode], "--set", "training.epochs=6", *extra)
        assert code == 0, err
    memory, backed = read_bundle(runs["memory"]), read_bundle(runs["backed"])
    assert len(memory.categories["space_genes"]) == 200 and memory.results["space_components"].shape == (0, 200)
    assert "n_embedding = 12" in memory.model_config and 'embed_key = "X_latent"' in memory.model_config
    assert any(k.startswith("gene_decoder") for k in memory.weights)
    loss, no_change = memory.history["val_embedding_loss"], memory.history["val_control_distance"]
    assert loss[-1] < loss[0] and loss[-1] < no_change[-1], (loss, no_change)  # better than predicting no change
    for key, value in memory.weights.items():
        assert np.array_equal(value, backed.weights[key]), key
    code, _, err = run_cli(capsys, "extract", runs["memory"], "-o", tmp_path / "cells.h5ad", "-q")
    assert code == 0, err
    cells = anndata.read_h5ad(tmp_path / "cells.h5ad")
    observed = cells.obs["stagekit_source"].astype(str).to_numpy() == "observed"
    rows = cells.obs["stagekit_row"].to_numpy()[observed]
    latent = anndata.read_h5ad(files["counts"]).obsm["X_latent"]
    assert np.array_equal(cells.obsm["X_pert_embedding"][observed], latent[rows])  # the data's embedding, as is
    assert cells.n_vars == 200
    code, _, err = run_cli(capsys, "evaluate", runs["memory"], "-o", tmp_path / "report", "--no-umap",
                           "--no-cell-eval", "-q")
    assert code == 0, err
    model = _metrics(tmp_path / "report")["perturbation"]["mean"]["model"]
    assert {"energy_embedding", "energy_genes", "pearson_delta_top50"} <= set(model)


def _metrics(folder):
    import json

    return json.loads((folder / "metrics.json").read_text())


def test_without_counts_the_model_is_scored_in_the_embedding_alone(files, tmp_path, capsys):
    """X empty: no gene decoder (said once), extract writes no genes, evaluate scores the embedding, beating
    control mean, and says why cell-eval does not run; extract --backed writes the same cells."""
    bundle = tmp_path / "tx.stk"
    code, _, err = _pretrain(capsys, files["no_counts"], bundle, "--set", "training.epochs=20")
    assert code == 0, err
    stored = read_bundle(bundle)
    assert stored.categories["space_genes"] == [] and not any("decoder" in k for k in stored.weights)
    outputs = {}
    for mode, extra in (("memory", []), ("backed", ["--backed"])):
        outputs[mode] = tmp_path / f"{mode}.h5ad"
        code, _, err = run_cli(capsys, "extract", bundle, *extra, "-o", outputs[mode], "-q")
        assert code == 0, err
    memory, backed = anndata.read_h5ad(outputs["memory"]), anndata.read_h5ad(outputs["backed"])
    assert memory.n_vars == 0 and memory.n_obs == backed.n_obs
    assert np.allclose(memory.obsm["X_pert_embedding"], backed.obsm["X_pert_embedding"], atol=1e-6)
    code, _, err = run_cli(capsys, "evaluate", bundle, "-o", tmp_path / "report", "--no-umap", "-q")
    assert code == 0, err
    metrics = _metrics(tmp_path / "report")
    mean = metrics["perturbation"]["mean"]
    assert "energy_genes" not in mean["model"]
    assert mean["model"]["energy_embedding"] < mean["control_mean"]["energy_embedding"]
    assert "predicts no genes" in metrics["cell_eval"]["skipped"]


def _one_line_error(code, err, output):
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert not output.exists()
    return err


def test_bad_embed_keys(files, tmp_path, capsys):
    bundle = tmp_path / "tx.stk"
    code, _, err = _pretrain(capsys, files["counts"], bundle, "--set", "training.epochs=1")
    assert code == 0, err
    out = tmp_path / "bad.stk"
    code, _, err = run_cli(capsys, "pretrain", "--preset", "transition", files["counts"], *DESIGN, "--embed-key",
                           "X_state", "-o", out)
    assert "obsm['X_state'] not found (obsm keys: X_latent)" in _one_line_error(code, err, out)
    code, _, err = _pretrain(capsys, files["counts"], out, "--set", "data.n_components=20")
    assert "drop one of them" in _one_line_error(code, err, out)
    code, _, err = _pretrain(capsys, files["half_a"], out, files["half_b"])
    assert "every file of one screen needs the same embedding" in _one_line_error(code, err, out)
    code, _, err = run_cli(capsys, "finetune", "--preset", "frozen-backbone", bundle, files["half_b"], "-o", out)
    assert "the model works in a 12-dimensional embedding" in _one_line_error(code, err, out)
    cells = tmp_path / "cells.h5ad"
    code, _, err = run_cli(capsys, "extract", bundle, files["half_b"], "--pert", "stim", "-o", cells)
    assert "has 10 dimensions" in _one_line_error(code, err, cells)
    with h5py.File(files["half_a"], "r") as f:  # the files are untouched
        assert f["obsm/X_latent"].shape[1] == WIDTH


def test_embed_key_needs_a_model_pretrained_in_one(files, tmp_path, capsys):
    bundle, out = tmp_path / "pca.stk", tmp_path / "bad.stk"
    code, _, err = run_cli(capsys, "pretrain", "--preset", "transition", files["counts"], *DESIGN, *SMALL,
                           "--set", "training.epochs=1", "--set", "data.n_components=10", "-o", bundle)
    assert code == 0, err
    code, _, err = run_cli(capsys, "finetune", "--preset", "frozen-backbone", bundle, files["counts"],
                           "--embed-key", "X_latent", "-o", out)
    assert "--embed-key needs a model pretrained in an obsm embedding" in _one_line_error(code, err, out)
