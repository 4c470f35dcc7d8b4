"""Phenotype clustering: pretrain (vae) -> cluster-search -> finetune (dec) -> extract -> evaluate."""

import json

import anndata
import numpy as np
import pytest
import torch

from stagekit.bundle import read_bundle
from stagekit.losses.clustering import dec_kl, nt_xent, student_t_assignment, target_distribution
from stagekit.metrics.clustering import cluster_accuracy
from stagekit.stages.clustering.cluster_search import choose_k, score_table
from tests.conftest import run_cli


def test_choose_k_rules():
    table = {"k": np.array([2, 3, 4, 5, 6]),
             "silhouette": np.array([0.30, 0.20, 0.35, 0.30, 0.10]),       # -> 4
             "calinski_harabasz": np.array([900, 800, 700, 600, 500.0]),   # -> 2 (monotone)
             "davies_bouldin": np.array([1.5, 1.4, 1.3, 1.2, 1.1])}        # -> 6
    assert choose_k(table, "silhouette") == 4
    assert choose_k(table, "calinski_harabasz") == 2
    assert choose_k(table, "davies_bouldin") == 6
    assert choose_k(table, "consensus") == 4  # the median vote
    assert choose_k(table, "silhouette_plateau", tolerance=0.15) == 5  # largest k with silhouette >= 0.2975
    assert choose_k(table, "silhouette_plateau", tolerance=0.0) == 4
    gap = table | {"gap": np.array([0.1, 0.3, 0.5, 0.52, 0.53]), "gap_sd": np.full(5, 0.05)}
    assert choose_k(gap, "gap") == 4  # smallest k with gap(k) >= gap(k+1) - sd(k+1)
    graph = table | {"eigengap": np.array([0.01, 0.02, 0.05, 0.06, 0.01]), "leiden": np.array(9)}
    assert choose_k(graph, "eigengap") == 5
    assert choose_k(graph, "leiden") == 6  # 9 communities, clipped to the largest k tried
    # ranks, k = 2..6: silhouette 2, 4, 1, 2, 5; eigengap 4, 3, 2, 1, 4 -> means 3, 3.5, 1.5, 1.5, 4.5;
    # k = 4 and 5 tie and the smaller k wins
    assert choose_k(graph, "mean_rank") == 4
    assert choose_k(graph, "mean_rank", rank_criteria=("eigengap",)) == 5
    assert choose_k(graph, "mean_rank", rank_criteria=("silhouette", "calinski_harabasz")) == 2


def test_neighbour_graph_finds_separated_groups():
    from stagekit.metrics.neighbour_graph import (
        knn_adjacency,
        laplacian_spectrum,
        leiden_partition,
        nearest_neighbours,
        self_tuning_affinity,
    )

    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [20, 0], [0, 20]])
    points = np.concatenate([c + rng.normal(size=(100, 2)) for c in centres])
    graph = knn_adjacency(points, 10)
    assert (graph != graph.T).nnz == 0 and set(np.unique(graph.data)) == {1.0}
    affinity = self_tuning_affinity(*nearest_neighbours(points, 10))
    assert (affinity != affinity.T).nnz == 0 and affinity.data.min() > 0 and affinity.data.max() <= 1
    for adjacency in (graph, affinity):
        spectrum = laplacian_spectrum(adjacency, 6)
        assert spectrum[:3].max() < 1e-6 and spectrum[3] > 0.01  # three components: three zero eigenvalues
        assert int(np.argmax(np.diff(spectrum)[1:]) + 2) == 3  # the eigengap rule reads k = 3
    communities = leiden_partition(graph, 0.1, seed=0)
    assert len(np.unique(communities)) == 3
    assert all(len(np.unique(communities[i * 100:(i + 1) * 100])) == 1 for i in range(3))


def test_dec_losses():
    z = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0]])
    centres = torch.tensor([[0.0, 0.0], [5.0, 5.0]])
    q = student_t_assignment(z, centres)
    assert torch.allclose(q.sum(1), torch.ones(3)) and q[0, 0] > 0.9 and q[2, 1] > 0.9
    p = target_distribution(q)
    assert (p.max(1).values >= q.max(1).values).all()  # the target is sharper
    assert dec_kl(q, q) == pytest.approx(0.0, abs=1e-6) and dec_kl(p, q) > 0
    torch.manual_seed(0)
    a = torch.randn(16, 8)
    assert nt_xent(a, a + 0.01 * torch.randn(16, 8)) < nt_xent(a, torch.randn(16, 8))


def test_cluster_accuracy_uses_best_matching():
    labels = np.array(["a"] * 5 + ["b"] * 5 + ["c"] * 5)
    clusters = np.array([2] * 5 + [0] * 4 + [1] + [1] * 5)
    assert cluster_accuracy(labels, clusters) == pytest.approx(14 / 15)


@pytest.fixture(scope="module")
def chain(tmp_path_factory, small_h5ad):
    """The whole chain on 600 real PBMC cells, once for the module."""
    import contextlib

    tmp = tmp_path_factory.mktemp("chain")
    paths = {"vae": tmp / "vae.stk", "clusters": tmp / "clusters.stk", "dec": tmp / "dec.stk",
             "cells": tmp / "cells.h5ad", "report": tmp / "report"}
    runs = [["pretrain", "-p", "vae", small_h5ad, "--label-key", "cluster_id", "--set", "training.epochs=30",
             "--set", "training.batch_size=64", "-o", paths["vae"]],
            ["cluster-search", paths["vae"], "--set", "cluster.k_max=8", "-o", paths["clusters"]],
            ["finetune", "-p", "dec", paths["clusters"], "--set", "training.epochs=15", "--set",
             "training.batch_size=64", "--set", "dec.update_interval=10", "-o", paths["dec"]],
            ["extract", paths["dec"], "-o", paths["cells"]],
            ["evaluate", paths["cells"], "-o", paths["report"]]]
    from stagekit.cli import main

    codes = []
    for args in runs:
        try:
            with contextlib.redirect_stdout(None):
                main([str(a) for a in args])
            codes.append(0)
        except SystemExit as exc:
            codes.append(exc.code)
    assert codes == [0] * 5
    return paths


def test_cluster_search_bundle(chain):
    b = read_bundle(chain["clusters"])
    # the default rule (eigengap) chose 6 on Kang PBMC (4 labelled types) at every benchmark seed (README,
    # "Choosing k"); here the chosen k is the eigengap's best, with its centres stored
    k = int(b.final_metrics["k"])
    assert k == choose_k(b.results, "eigengap") and 3 <= k <= 8 and b.results["centres"].shape == (k, 32)
    assert list(b.results["k"]) == list(range(2, 9)) and len(b.results["silhouette"]) == 7
    assert b.lineage[0]["stage"] == "pretrain" and set(b.weights) == set(read_bundle(chain["vae"]).weights)
    assert chain["clusters"].with_name("clusters.scores.png").stat().st_size > 1000


def test_cluster_search_graph_rules_from_the_command_line(capsys, chain, tmp_path):
    """The eigengap and Leiden community count are stored and read by their rules; a bad criterion is refused."""
    default = read_bundle(chain["clusters"], weights=False).results
    assert len(default["eigengap"]) == 7 and (default["eigengap"] > -1e-9).all() and int(default["leiden"]) >= 2
    out = tmp_path / "leiden.stk"
    code, _, err = run_cli(capsys, "cluster-search", chain["vae"], "--set", "cluster.k_max=8", "--set",
                           "cluster.selection='leiden'", "--set", "cluster.leiden_resolution=0.3", "-o", out)
    leiden = read_bundle(out, weights=False)
    assert code == 0 and "Leiden communities" in err
    assert int(leiden.final_metrics["k"]) == min(max(int(leiden.results["leiden"]), 2), 8)
    code, _, err = run_cli(capsys, "cluster-search", chain["vae"], "--set", "cluster.rank_criteria=['silhoutte']",
                           "-o", tmp_path / "bad.stk", "-q")
    assert code == 2 and "cluster.rank_criteria: silhoutte" in err and not (tmp_path / "bad.stk").exists()


def test_cluster_search_shows_the_pca_baselines(capsys, chain, tmp_path):
    """k-means on PCA-50 of the log-normalised counts at every k and scanpy's default Leiden, beside the latent's
    clusters: their agreement is stored and shown, and with labels each baseline's own ARI."""
    from stagekit.metrics.clustering import label_agreement
    from stagekit.stages.clustering.baselines import expression_pca, kmeans_labels

    b = read_bundle(chain["clusters"], weights=False)
    agreement = b.results["pca_kmeans_ari"]
    assert len(agreement) == 7 and (agreement <= 1).all() and int(b.results["pca_leiden"]) >= 2
    k = int(b.final_metrics["k"])
    cells = anndata.read_h5ad(chain["cells"])
    labels = cells.obs["cluster_id"].astype(str).to_numpy()
    pca = expression_pca(cells.X, 0)
    assert pca.shape == (600, 50)
    expected = label_agreement(labels, kmeans_labels(pca, k, 0))["ari"]
    assert b.final_metrics["label_ari_pca_kmeans"] == pytest.approx(expected, abs=1e-6)
    assert b.final_metrics["label_ari_pca_kmeans"] > 0.5 and b.final_metrics["label_ari_pca_leiden"] > 0.3
    shown = score_table(chain["clusters"])  # what cluster-search prints after its run
    assert "ARI with PCA-50 k-means" in shown.columns
    assert any("PCA-50 Leiden" in note and "obs['cluster_id']" in note for note in shown.notes)
    best_jumps = [int(k) for k in b.results["k"][np.argsort(-b.results["eigengap"])[:3]]]
    assert f"largest eigengaps: k = {best_jumps[0]} (" in " ".join(shown.notes) and best_jumps[0] == k
    # a k at the edge of the searched range is named with the key that widens it
    code, _, err = run_cli(capsys, "cluster-search", chain["vae"], "--set", "cluster.k_max=3", "--set",
                           "cluster.baselines=false", "-o", tmp_path / "narrow.stk")
    narrow = read_bundle(tmp_path / "narrow.stk", weights=False)
    assert code == 0 and "pca_kmeans_ari" not in narrow.results
    assert "at the edge of the searched range 2..3" in err
    assert ("cluster.k_max" if narrow.final_metrics["k"] == 3 else "cluster.k_min") in err
    assert err.count("at the edge") == 2  # logged, and noted under the table printed after the run


def test_dec_learns_and_keeps_lineage(chain):
    b = read_bundle(chain["dec"])
    h = b.history
    # assignments sharpen as DEC trains (KL(P||Q) itself stays level: each update re-sharpens the target)
    assert h["confidence"][-1] > h["confidence"][0] + 0.03
    assert [e["stage"] for e in b.lineage] == ["cluster-search", "pretrain"]
    kmeans = read_bundle(chain["clusters"]).final_metrics
    # DEC ends at least as close to the labels as the k-means it started from (small tolerance on 600 cells)
    assert b.final_metrics["label_ari"] >= kmeans["label_ari"] - 0.05
    assert b.final_metrics["label_ari"] > 0.5


def test_extract_and_evaluate_outputs(chain):
    cells = anndata.read_h5ad(chain["cells"])
    assert "stagekit_cluster" in cells.obs and cells.obsm["X_stagekit"].shape == (600, 32)
    soft = cells.obsm["stagekit_soft_assignment"]
    assert np.allclose(soft.sum(1), 1, atol=1e-5)
    assert cells.uns["stagekit"]["stage"] == "finetune"
    report = json.loads((chain["report"] / "metrics.json").read_text())
    assert {"acc", "ari", "nmi", "silhouette", "k"} <= set(report["clustering"])
    assert sum(report["cluster_sizes"].values()) == 600
    assert report["clustering"]["ari"] == pytest.approx(read_bundle(chain["dec"]).final_metrics["label_ari"],
                                                        abs=1e-6)
    for name in ("contingency.png", "umap.png", "loss_curves.png"):
        assert (chain["report"] / name).stat().st_size > 1000
    # the simple baselines on the same cells, k-means at the model's k: the figures cluster-search stored
    baselines = report["clustering_baselines"]
    searched = read_bundle(chain["clusters"], weights=False).final_metrics
    assert baselines["k-means on PCA-50"]["k"] == report["clustering"]["k"]
    assert baselines["k-means on PCA-50"]["ari"] == pytest.approx(searched["label_ari_pca_kmeans"], abs=1e-6)
    assert baselines["Leiden on the PCA-50 graph"]["ari"] == pytest.approx(searched["label_ari_pca_leiden"],
                                                                           abs=1e-6)


def test_dec_is_reproducible(capsys, chain, tmp_path):
    args = ["finetune", "-p", "dec", chain["clusters"], "--set", "training.epochs=3", "--set",
            "training.batch_size=64", "-q"]
    for name in ("a", "b"):
        assert run_cli(capsys, *args, "-o", tmp_path / f"{name}.stk")[0] == 0
    a, b = read_bundle(tmp_path / "a.stk"), read_bundle(tmp_path / "b.stk")
    assert np.array_equal(a.results["assignments"], b.results["assignments"])
    assert all(np.array_equal(a.weights[k], b.weights[k]) for k in a.weights)


def test_collapse_guard_refuses_a_starting_partition_that_breaks_it(capsys, chain, tmp_path):
    out = tmp_path / "dec.stk"
    code, _, err = run_cli(capsys, "finetune", "-p", "dec", chain["clusters"], "-o", out, "-q",
                           "--set", "dec.collapse_fraction=0.2")
    assert code == 2 and "starting partition" in err and "cluster sizes [" in err
    assert not out.exists() and not out.with_name("dec.stk.partial").exists()


def test_collapse_guard_stops_during_training_and_keeps_the_last_good_state(capsys, chain, tmp_path):
    """The guard fires on a partition DEC reaches while training (the largest cluster grows past the bound),
    not on the one it starts from; the last good state (an epoch end before it) is kept in OUT.partial."""
    start = np.bincount(read_bundle(chain["clusters"]).results["assignments"])
    bound = start.max() / start.sum() + 0.01
    out = tmp_path / "dec.stk"
    code, _, err = run_cli(capsys, "finetune", "-p", "dec", chain["clusters"], "-o", out, "-q",
                           "--set", f"dec.collapse_fraction={bound}", "--set", "dec.gamma=20",
                           "--set", "training.batch_size=64", "--set", "dec.update_interval=2",
                           "--set", "training.epochs=20", "--set", "dec.tol=0")
    assert code == 2 and "largest_cluster" in err and "went above" in err, err
    assert "cluster sizes [" in err and "dec.gamma" in err and not out.exists()
    partial = read_bundle(out.with_name("dec.stk.partial"), resume=True)
    assert partial.status == "stopped" and f"at epoch {partial.epochs_done + 1}," in err
    # model and task state are those of the kept epoch end (10 steps an epoch, a target update every 2 steps,
    # one before training), not of the step where the guard fired
    assert partial.resume["task"]["updates"] == 1 + 5 * partial.epochs_done
    assert partial.resume["loop"]["global_step"] == 10 * partial.epochs_done


def test_clustering_user_errors(capsys, chain, tmp_path):
    code, _, err = run_cli(capsys, "finetune", "-p", "dec", chain["vae"], "-o", tmp_path / "x.stk")
    assert code == 2 and "is a 'pretrain' bundle" in err
    code, _, err = run_cli(capsys, "cluster-search", chain["vae"], "--set", "cluster.k_min=9",
                           "--set", "cluster.k_max=4", "-o", tmp_path / "x.stk")
    assert code == 2 and "k_min" in err
    code, _, err = run_cli(capsys, "finetune", "-p", "dec", chain["clusters"], "--set", "dec.positive_key=donor",
                           "--set", "dec.contrastive_weight=1", "-o", tmp_path / "x.stk")
    assert code == 2 and "obs column 'donor' not found" in err
    code, _, err = run_cli(capsys, "evaluate", chain["cells"], "--label-key", "celltype", "-o", tmp_path / "r")
    assert code == 2 and "'celltype' not found" in err


def test_contrastive_positive_pairs_run(capsys, chain, tmp_path):
    out = tmp_path / "c.stk"
    code, _, err = run_cli(capsys, "finetune", "-p", "dec", chain["clusters"], "-o", out, "-q",
                           "--set", "dec.positive_key=cluster_id", "--set", "dec.contrastive_weight=0.5",
                           "--set", "dec.consistency_weight=1.0", "--set", "training.epochs=3",
                           "--set", "training.batch_size=64")
    assert code == 0, err
    h = read_bundle(out).history
    assert "train_contrastive" in h and "train_consistency" in h
    code, _, err = run_cli(capsys, "finetune", "-p", "dec", chain["clusters"], "-o", tmp_path / "n.stk", "-q",
                           "--set", "dec.positive_neighbours=5", "--set", "dec.consistency_weight=1.0",
                           "--set", "training.epochs=2", "--set", "training.batch_size=64")
    assert code == 0, err
    assert "train_consistency" in read_bundle(tmp_path / "n.stk").history


def test_dec_interrupt_and_resume_matches_uninterrupted(capsys, chain, tmp_path, monkeypatch):
    import os
    import signal

    from stagekit.stages.clustering import finetune

    args = ["finetune", "-p", "dec", chain["clusters"], "--set", "training.epochs=4", "--set",
            "training.batch_size=64", "--set", "dec.update_interval=4", "-q"]
    assert run_cli(capsys, *args, "-o", tmp_path / "straight.stk")[0] == 0

    original = finetune.DECTask.after_optimizer_step

    def interrupt_at_step_13(self, model, ctx, values):
        original(self, model, ctx, values)
        if self.steps == 13:  # mid-epoch, after a target update at step 12
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(finetune.DECTask, "after_optimizer_step", interrupt_at_step_13)
    code, _, err = run_cli(capsys, *args, "-o", tmp_path / "run.stk")
    assert code == 130 and "--resume" in err
    monkeypatch.setattr(finetune.DECTask, "after_optimizer_step", original)
    partial = tmp_path / "run.stk.partial"
    code, _, err = run_cli(capsys, "finetune", chain["clusters"], "--resume", partial, "-o", tmp_path / "run.stk", "-q")
    assert code == 0, err
    a, b = read_bundle(tmp_path / "straight.stk"), read_bundle(tmp_path / "run.stk")
    assert all(np.array_equal(a.weights[k], b.weights[k]) for k in a.weights)
    assert np.array_equal(a.results["assignments"], b.results["assignments"])


def test_contrastive_pretraining_learns(capsys, small_h5ad, tmp_path):
    """NT-Xent on positive pairs shapes the pretrain latent: pairs from the labels separate them better than
    reconstruction alone; pairs from input-space neighbours (PCA of log-normalised counts) train too."""
    from sklearn.metrics import silhouette_score

    base = ["pretrain", "-p", "vae", small_h5ad, "-q", "--set", "training.epochs=8", "--set", "training.batch_size=64"]
    runs = {"plain": [], "labels": ["--set", "contrastive.weight=0.05", "--set", "contrastive.positive_key=cluster_id"],
            "neighbours": ["--set", "contrastive.weight=0.05", "--set", "contrastive.positive_neighbours=5"]}
    silhouette = {}
    for name, extra in runs.items():
        code, _, err = run_cli(capsys, *base, *extra, "-o", tmp_path / f"{name}.stk")
        assert code == 0, err
        code, _, err = run_cli(capsys, "extract", tmp_path / f"{name}.stk", "-o", tmp_path / f"{name}.h5ad")
        assert code == 0, err
        cells = anndata.read_h5ad(tmp_path / f"{name}.h5ad")
        labels = cells.obs["cluster_id"].astype(str)
        silhouette[name] = silhouette_score(cells.obsm["X_stagekit"], labels, random_state=0)
        history = read_bundle(tmp_path / f"{name}.stk").history
        if name != "plain":
            assert history["train_contrastive"][-1] < history["train_contrastive"][0]
    assert silhouette["labels"] > silhouette["plain"] + 0.05


def test_contrastive_pretraining_user_errors(capsys, small_h5ad, tmp_path):
    base = ["pretrain", "-p", "vae", small_h5ad, "-o", tmp_path / "x.stk"]
    code, _, err = run_cli(capsys, *base, "--set", "contrastive.weight=1")
    assert code == 2 and "contrastive.weight need positive pairs" in err
    code, _, err = run_cli(capsys, *base, "--set", "contrastive.positive_key=cluster_id",
                           "--set", "contrastive.positive_neighbours=3")
    assert code == 2 and "not both" in err
    code, _, err = run_cli(capsys, *base, "--set", "contrastive.weight=1", "--set", "contrastive.positive_key=donor")
    assert code == 2 and "obs column 'donor' not found" in err
    assert not (tmp_path / "x.stk").exists()


def test_extract_and_evaluate_take_quiet_like_every_phase(capsys, chain, tmp_path):
    cells = tmp_path / "q.h5ad"
    code, out, err = run_cli(capsys, "extract", chain["dec"], "-o", cells, "-q")
    assert code == 0 and out.strip() == str(cells) and err == ""
    code, out, err = run_cli(capsys, "evaluate", cells, "--label-key", "cluster_id", "-o", tmp_path / "r", "--no-umap",
                             "--quiet")
    assert code == 0 and out.strip() == str(tmp_path / "r" / "metrics.json") and err == ""
