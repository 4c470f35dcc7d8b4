"""`stagekit pretrain --preset saturn` on the two-species pancreas cells with ortholog-derived embeddings."""

import json
from pathlib import Path

import anndata
import numpy as np
import pytest
import torch

from stagekit.bundle import read_bundle
from stagekit.data.demo import DEMO_ORTHOLOGS, write_demo_inputs
from stagekit.stages.cross_species.pretrain import load_model
from tests.conftest import run_cli, run_subprocess

FAST = ["--set", "data.hv_genes=1500", "--set", "model.n_macrogenes=150", "--set", "model.n_hidden=128",
        "--set", "model.n_embed=64", "--set", "training.batch_size=128"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return write_demo_inputs(DEMO_ORTHOLOGS, tmp_path_factory.mktemp("demo"))  # the copy the package ships


def _pretrain_both(capsys, demo, out, epochs, *extra):
    """pretrain --preset saturn on the two demo species; returns the bundle path."""
    code, _, err = run_cli(capsys, "pretrain", "-p", "saturn", demo["human"], demo["mouse"], "--protein-emb",
                           demo["human_embeddings"], "--protein-emb", demo["mouse_embeddings"],
                           "--set", f"training.epochs={epochs}", *FAST, *extra, "-o", out)
    assert code == 0, err
    return out


def _embed(bundle_path, files):
    bundle = read_bundle(bundle_path)
    model = load_model(bundle)
    out = []
    for i, path in enumerate(files):
        cells = anndata.read_h5ad(path)
        genes = [g for g, s in zip(bundle.var_names, bundle.results["gene_species"], strict=True) if s == i]
        with torch.no_grad():
            z = model.embed(torch.from_numpy(cells[:, genes].X.toarray()), i).numpy()
        out.append((z / np.linalg.norm(z, axis=1, keepdims=True), cells.obs["Group"].astype(str).to_numpy()))
    return bundle, out


def test_saturn_pretrain_learns_a_shared_space(capsys, demo, tmp_path):
    out = tmp_path / "saturn.stk"
    code, stdout, err = run_cli(capsys, "pretrain", "-p", "saturn", demo["human"], demo["mouse"], "--protein-emb",
                                f"human={demo['human_embeddings']}", "--protein-emb",
                                f"mouse={demo['mouse_embeddings']}", "--label-key", "Group",
                                "--set", "training.epochs=25", *FAST, "--set", "model.n_macrogenes=1500", "-o", out)
    assert code == 0, err
    assert "human: " in err and "genes matched a protein embedding" in err
    bundle, ((za, la), (zb, lb)) = _embed(out, [demo["human"], demo["mouse"]])
    h = bundle.history
    assert h["train_nll"][-1] < 0.8 * h["train_nll"][0]
    assert bundle.categories["species"] == ["human", "mouse"] and len(bundle.categories["labels"]) == 5
    assert len(bundle.results["macrogene_centroids"]) == 1500
    # cells of one species find their cell type among the other species' cells (chance: 0.2)
    assert (la[(zb @ za.T).argmax(1)] == lb).mean() > 0.6
    assert (lb[(za @ zb.T).argmax(1)] == la).mean() > 0.6
    # eval is deterministic: the same cells embed the same twice
    again = _embed(out, [demo["human"], demo["mouse"]])[1][0][0]
    assert np.array_equal(za, again)


def _pretrain(capsys, tmp_path, *args):
    return run_cli(capsys, "pretrain", "-p", "saturn", *args, "--set", "training.epochs=1", *FAST,
                   "-o", tmp_path / "x.stk")


def test_saturn_input_errors(capsys, demo, tmp_path):
    h, m, he, me = demo["human"], demo["mouse"], demo["human_embeddings"], demo["mouse_embeddings"]
    code, _, err = _pretrain(capsys, tmp_path, h, m, "--protein-emb", f"human={he}")
    assert code == 2 and "species 'mouse' has no protein embedding file" in err
    ids = tmp_path / "ensembl.npz"  # embeddings keyed by Ensembl IDs, not symbols
    np.savez(ids, genes=np.array([f"ENSG{i:011d}" for i in range(100)]), embeddings=np.ones((100, 64), np.float32))
    code, _, err = _pretrain(capsys, tmp_path, h, m, "--protein-emb", f"human={ids}", "--protein-emb", f"mouse={me}")
    assert code == 2 and "species 'human': only 0 of" in err and "unmatched e.g. A1CF" in err
    short = tmp_path / "short.npz"
    genes = np.load(me)["genes"]
    np.savez(short, genes=genes, embeddings=np.zeros((len(genes), 8), np.float32) + 1)
    code, _, err = _pretrain(capsys, tmp_path, h, m, "--protein-emb", f"human={he}", "--protein-emb", f"mouse={short}")
    assert code == 2 and "differ in length between species (human: 64, mouse: 8)" in err
    code, _, err = _pretrain(capsys, tmp_path, h, m, "--protein-emb", he, "--protein-emb", me, "--label-key", "cell")
    assert code == 2 and "obs column 'cell' not found" in err
    code, _, err = _pretrain(capsys, tmp_path, h, "--protein-emb", he)
    assert code == 2 and "at least two species" in err
    assert not (tmp_path / "x.stk").exists()


def test_three_species_and_species_column(capsys, demo, tmp_path):
    code, _, err = _pretrain(capsys, tmp_path, demo["human"], demo["mouse"], demo["mouse"], "--species", "human",
                             "--species", "mouse", "--species", "mouse2", "--protein-emb", demo["human_embeddings"],
                             "--protein-emb", demo["mouse_embeddings"], "--protein-emb", demo["mouse_embeddings"])
    assert code == 0, err
    assert read_bundle(tmp_path / "x.stk").categories["species"] == ["human", "mouse", "mouse2"]
    joined = tmp_path / "joined.h5ad"
    cells = anndata.read_h5ad(demo["mouse"])
    cells.obs["organism"] = np.where(np.arange(cells.n_obs) % 2, "mouse_a", "mouse_b")
    cells.write_h5ad(joined)
    code, _, err = _pretrain(capsys, tmp_path, joined, "--species-key", "organism", "--protein-emb",
                             f"mouse_a={demo['mouse_embeddings']}", "--protein-emb",
                             f"mouse_b={demo['mouse_embeddings']}")
    assert code == 0, err
    assert read_bundle(tmp_path / "x.stk").categories["species"] == ["mouse_a", "mouse_b"]


def test_extract_macrogenes_and_embedding_per_species(capsys, demo, tmp_path):
    bundle = _pretrain_both(capsys, demo, tmp_path / "saturn.stk", 2, "--label-key", "Group")
    cells = tmp_path / "cells.h5ad"
    code, out, err = run_cli(capsys, "extract", bundle, "-o", cells)
    assert code == 0 and out.strip() == str(cells), err
    adata = anndata.read_h5ad(cells)
    assert adata.n_obs == 350 and adata.obsm["X_macrogenes"].shape == (350, 150)
    assert adata.obsm["X_pretrain"].shape == (350, 64)
    assert sorted(adata.obs["species"].unique()) == ["human", "mouse"] and "Group" in adata.obs
    mouse_names = anndata.read_h5ad(demo["mouse"]).obs_names  # species:cell only where both species have the name
    human_names = set(anndata.read_h5ad(demo["human"]).obs_names)
    kept = adata.obs.loc[adata.obs["species"] == "mouse", "stagekit_cell"]
    assert list(kept) == list(mouse_names)
    assert list(kept.index) == [f"mouse:{n}" if n in human_names else n for n in mouse_names]
    assert adata.obs_names.is_unique and "X_pca_shared_genes" in adata.obsm  # the unintegrated reference
    assert adata.uns["stagekit"]["macrogene_weights"].shape == (len(read_bundle(bundle).var_names), 150)
    # deterministic (no dropout in eval), and new mouse cells map through the same model (query mapping)
    code, _, err = run_cli(capsys, "extract", bundle, demo["mouse"], "--species", "mouse", "-o", tmp_path / "q.h5ad")
    assert code == 0, err
    query = anndata.read_h5ad(tmp_path / "q.h5ad")
    mouse = adata[adata.obs["species"] == "mouse"]
    assert np.array_equal(query.obsm["X_pretrain"], mouse.obsm["X_pretrain"])
    code, _, err = run_cli(capsys, "extract", bundle, demo["mouse"], "--species", "zebrafish",
                           "-o", tmp_path / "z.h5ad")
    assert code == 2 and "species 'zebrafish' is not in" in err
    # evaluate scores the integration of the extracted embedding
    code, _, err = run_cli(capsys, "evaluate", cells, "-o", tmp_path / "report", "--no-umap", "--no-scib")
    assert code == 0, err
    report = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert set(report["label_transfer"]) == {"human->mouse", "mouse->human"}
    assert {"accuracy", "balanced_accuracy", "max_accuracy", "unmatched_labels"} <= set(
        report["label_transfer"]["human->mouse"])
    assert {"knn_agreement", "species_mixing", "kmeans_vs_labels", "silhouette_labels"} <= set(report["integration"])
    assert report["integration"]["embedding"] == "X_pretrain"


def test_align_improves_transfer_and_mixing(capsys, demo, tmp_path):
    pre = tmp_path / "saturn.stk"  # the demo's settings (saturn-small: M = 2000), 20 epochs
    code, _, err = run_cli(capsys, "pretrain", "-p", "saturn-small", demo["human"], demo["mouse"], "--protein-emb",
                           demo["human_embeddings"], "--protein-emb", demo["mouse_embeddings"], "--label-key", "Group",
                           "--set", "training.epochs=20", "-o", pre)
    assert code == 0, err
    code, _, err = run_cli(capsys, "extract", pre, "-o", tmp_path / "pre.h5ad")
    assert code == 0, err
    aligned = tmp_path / "align.stk"
    code, out, err = run_cli(capsys, "align", pre, "--set", "training.epochs=20", "--set", "training.batch_size=128",
                             "--write-h5ad", tmp_path / "align.h5ad", "-o", aligned)
    assert code == 0 and out.strip() == str(aligned), err
    bundle = read_bundle(aligned)
    assert bundle.stage == "align" and bundle.lineage[0]["stage"] == "pretrain"
    assert set(bundle.weights) >= {"log_weights", "encoder.1.weight"} and "decoder.1.weight" not in bundle.weights
    assert np.array_equal(bundle.weights["log_weights"], read_bundle(pre).weights["log_weights"])  # frozen
    reports = {}
    for name in ("pre", "align"):
        code, _, err = run_cli(capsys, "evaluate", tmp_path / f"{name}.h5ad", "-o", tmp_path / f"r_{name}",
                               "--no-umap", "--no-scib")
        assert code == 0, err
        reports[name] = json.loads((tmp_path / f"r_{name}" / "metrics.json").read_text())
    pre_r, align_r = reports["pre"], reports["align"]
    assert align_r["integration"]["embedding"] == "X_align"
    both = anndata.read_h5ad(tmp_path / "align.h5ad")  # the lineage's embeddings in one file
    assert {"X_align", "X_pretrain", "X_macrogenes", "X_pca_shared_genes"} <= set(both.obsm)
    np.testing.assert_allclose(both.obsm["X_pretrain"], anndata.read_h5ad(tmp_path / "pre.h5ad").obsm["X_pretrain"],
                               atol=1e-5)
    for pair in ("human->mouse", "mouse->human"):
        assert align_r["label_transfer"][pair]["balanced_accuracy"] >= 0.9
        assert align_r["label_transfer"][pair]["balanced_accuracy"] > pre_r["label_transfer"][pair][
            "balanced_accuracy"]
    assert align_r["integration"]["species_mixing"] > pre_r["integration"]["species_mixing"]


def test_align_without_labels_uses_leiden(capsys, demo, tmp_path):
    pre = _pretrain_both(capsys, demo, tmp_path / "saturn.stk", 3)
    code, _, err = run_cli(capsys, "align", pre, "--set", "training.epochs=2", "--set", "training.batch_size=128",
                           "--unfreeze-macrogenes", "-o", tmp_path / "a.stk")
    assert code == 0, err
    assert "Leiden clusters of the pretrain embedding used" in err
    assert not np.array_equal(read_bundle(tmp_path / "a.stk").weights["log_weights"],
                              read_bundle(pre).weights["log_weights"])  # --unfreeze-macrogenes trains them


@pytest.mark.slow
def test_demo_meets_the_integration_targets(tmp_path):
    # a process of its own: scib-metrics starts JAX's threads, which later forking tests must not inherit
    run = run_subprocess("demo", "-o", tmp_path / "demo", "-q", timeout=600)
    code, out, err = run.returncode, run.stdout, run.stderr
    assert code == 0, err
    before = json.loads((tmp_path / "demo" / "report_pretrain" / "metrics.json").read_text())
    after = json.loads(Path(out.strip()).read_text())
    for pair in ("human->mouse", "mouse->human"):
        assert after["label_transfer"][pair]["balanced_accuracy"] >= 0.9
    assert after["integration"]["species_mixing"] > before["integration"]["species_mixing"]
    # scib-metrics on the align cells: the reference, the pretrain and the align embeddings side by side
    scib = after["scib"]["scores"]
    assert list(scib) == ["X_pca_shared_genes", "X_pretrain", "X_align"] and "scib" not in before
    assert scib["X_align"]["Total"] > scib["X_pca_shared_genes"]["Total"]
    assert scib["X_align"]["Bio conservation"] > scib["X_pretrain"]["Bio conservation"]
    assert "scib-metrics on the same cells" in err
    assert (tmp_path / "demo" / "report_align" / "umap.png").stat().st_size > 1000


def test_species_with_a_single_cell_type(capsys, demo, tmp_path):
    beta = tmp_path / "mouse_beta.h5ad"
    cells = anndata.read_h5ad(demo["mouse"])
    cells[cells.obs["Group"] == "beta"].copy().write_h5ad(beta)
    pre = tmp_path / "p.stk"
    code, _, err = run_cli(capsys, "pretrain", "-p", "saturn", demo["human"], beta, "--species", "human",
                           "--species", "mouse", "--protein-emb", demo["human_embeddings"], "--protein-emb",
                           demo["mouse_embeddings"], "--label-key", "Group", "--set", "training.epochs=2", *FAST,
                           "-o", pre)
    assert code == 0, err
    code, _, err = run_cli(capsys, "align", pre, "--set", "training.epochs=2", "--set", "training.batch_size=128",
                           "--set", "align.balance_species=true", "-o", tmp_path / "a.stk")
    assert code == 0, err


def test_macrogene_centroids_are_reused_only_for_the_same_inputs(capsys, demo, tmp_path):
    first = _pretrain_both(capsys, demo, tmp_path / "a.stk", 1)
    code, _, err = run_cli(capsys, "pretrain", "-p", "saturn", demo["human"], demo["mouse"], "--protein-emb",
                           demo["human_embeddings"], "--protein-emb", demo["mouse_embeddings"], *FAST,
                           "--set", "training.epochs=1", "--macrogenes-from", first, "-o", tmp_path / "b.stk")
    assert code == 0 and "macrogene centroids reused" in err, err
    assert np.array_equal(read_bundle(first).weights["log_weights"], read_bundle(tmp_path / "b.stk").weights[
        "log_weights"])  # same start, same seed, same training
    code, _, err = run_cli(capsys, "pretrain", "-p", "saturn", demo["human"], demo["mouse"], "--protein-emb",
                           demo["human_embeddings"], "--protein-emb", demo["mouse_embeddings"], *FAST,
                           "--set", "training.epochs=1", "--seed", "1", "--macrogenes-from", first,
                           "-o", tmp_path / "c.stk")
    assert code == 0 and "running k-means" in err, err
    code, _, err = run_cli(capsys, "pretrain", "-p", "vae", demo["human"], "--macrogenes-from", first,
                           "-o", tmp_path / "d.stk")
    assert code == 2 and "--macrogenes-from does not apply" in err and "model 'saturn'" in err


def test_backed_pretrain_align_extract(capsys, demo, tmp_path):
    """--backed reads each species from disk: the same genes are kept as in memory, training learns, and align
    and extract read the bundle's genes block by block."""
    in_memory = _pretrain_both(capsys, demo, tmp_path / "m.stk", 1)
    backed = _pretrain_both(capsys, demo, tmp_path / "b.stk", 6, "--backed")
    bundle = read_bundle(backed)
    assert bundle.var_names == read_bundle(in_memory).var_names
    assert bundle.history["train_nll"][-1] < bundle.history["train_nll"][0]
    code, _, err = run_cli(capsys, "align", backed, "--set", "training.epochs=1", "--set", "training.batch_size=128",
                           "-q", "--write-h5ad", tmp_path / "cells.h5ad", "-o", tmp_path / "a.stk")
    assert code == 0, err
    assert anndata.read_h5ad(tmp_path / "cells.h5ad").obsm["X_macrogenes"].shape == (350, 150)
    code, _, err = run_cli(capsys, "pretrain", "-p", "saturn", demo["human"], "--species-key", "Group",
                           "--protein-emb", demo["human_embeddings"], "--backed", "-o", tmp_path / "x.stk")
    assert code == 2 and "one file per species" in err


def test_backed_species_cells_read_the_same_rows_as_in_memory(demo):
    """A backed species stays on disk and its rows (any order, repeats, genes the file lacks read as zero) equal
    the in-memory matrix's: align and extract see the same cells either way."""
    from stagekit.data.anndata_io import load_counts
    from stagekit.stages.cross_species.cells import _species_cells

    names = load_counts(demo["mouse"]).var_names
    wanted = names[10:400:3] + ["NOT_A_GENE"] + [g.lower() for g in names[500:520]]
    in_memory = _species_cells(1, "mouse", load_counts(demo["mouse"]), wanted, "m", print)
    backed = _species_cells(1, "mouse", load_counts(demo["mouse"], backed=True), wanted, "m", print)
    assert backed.matrix is None and backed.n_obs == in_memory.n_obs == 175
    index = np.array([170, 3, 3, 90, 0, 174])
    assert np.array_equal(backed.rows(index).toarray(), in_memory.rows(index).toarray())
    assert in_memory.rows(index)[:, len(names[10:400:3])].nnz == 0  # the missing gene
    assert in_memory.rows(np.arange(175))[:, -20:].nnz > 0  # lower-case symbols match


def test_micro_batches_give_the_same_pretraining(capsys, demo, tmp_path):
    """Parts of 50 cells per species (the 175-cell batches in 4 parts) train the same model as whole batches."""
    no_dropout = ("--set", "model.dropout=0", "--set", "model.lambda_l1=0.01")
    whole = _pretrain_both(capsys, demo, tmp_path / "whole.stk", 2, *no_dropout)
    parts = _pretrain_both(capsys, demo, tmp_path / "parts.stk", 2, *no_dropout,
                           "--set", "training.micro_batch_size=50")
    a, b = read_bundle(whole), read_bundle(parts)
    for key in ("train_loss", "train_nll", "train_l1", "train_protein_similarity"):
        assert np.allclose(a.history[key], b.history[key], rtol=1e-4), key
    for name, value in a.weights.items():
        assert np.allclose(value, b.weights[name], rtol=1e-3, atol=1e-5), name


def test_bf16_mixed_pretrain_learns_quietly(capfd, demo, tmp_path):
    """bfloat16 autocast on CPU (runtime.precision): the products run in bf16, the likelihood in float32; the loss
    falls and --quiet stays quiet (Fabric's own mixed-precision notice included)."""
    out = tmp_path / "bf16.stk"
    code, stdout, err = run_cli(capfd, "pretrain", "-p", "saturn", demo["human"], demo["mouse"], "--protein-emb",
                                demo["human_embeddings"], "--protein-emb", demo["mouse_embeddings"],
                                "--set", "training.epochs=4", *FAST, "--precision", "bf16-mixed", "-q", "-o", out)
    assert code == 0, err
    assert stdout.strip() == str(out) and err == ""  # the output path only, for chaining
    bundle = read_bundle(out)
    assert "bf16-mixed" in bundle.device
    assert bundle.history["train_nll"][-1] < 0.9 * bundle.history["train_nll"][0]
