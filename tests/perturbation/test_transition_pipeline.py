"""`pretrain --preset transition` -> extract -> evaluate on real IFN-beta data (Kang: ctrl/stim x 5 cell types),
B cells held out zero-shot: training learns (loss falls, validation beats predicting no change), held-out cells
never reach training, and the model's predicted set for the held-out B cells is closer to the observed one than
predicting no change."""

from __future__ import annotations

import json
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest

from stagekit.bundle import read_bundle
from stagekit.cli import main
from stagekit.stages.perturbation.screen import TEST, TRAIN
from tests.conftest import run_cli

SMALL = ["--set", "data.n_genes=400", "--set", "data.n_components=20", "--set", "model.hidden=64",
         "--set", "model.n_layers=2", "--set", "training.epochs=30"]


@pytest.fixture(scope="module")
def tx_bundle(stim_h5ad, tmp_path_factory) -> Path:
    """Through the command line, as a user runs it."""
    out = tmp_path_factory.mktemp("tx") / "tx.stk"
    try:
        main(["pretrain", "--preset", "transition", str(stim_h5ad), "--pert-key", "group_id", "--control", "ctrl",
              "--context-key", "cluster_id", "--batch-key", "donor", "--holdout-contexts", "B cells", "-q", "-o",
              str(out), *SMALL])
    except SystemExit as exc:
        assert not exc.code
    return out


def test_training_learns_and_keeps_held_out_cells_out(tx_bundle, stim_h5ad):
    bundle = read_bundle(tx_bundle)
    h = bundle.history
    assert h["train_loss"][-1] < 0.7 * h["train_loss"][0]
    assert h["val_embedding_loss"][-1] < h["val_control_distance"][-1]  # beats predicting no change
    assert {"train_loss", "train_embedding_loss", "train_gene_loss"} <= set(h)  # the total and both parts
    split, pert, context = (np.asarray(bundle.results[k]) for k in ("split", "pert", "context"))
    b_cells = bundle.categories["contexts"].index("B cells")
    stim = bundle.categories["perts"].index("stim")
    assert (split[(context == b_cells) & (pert == stim)] == TEST).all()  # zero-shot: every stimulated B cell
    assert ((split == TEST) & (context != b_cells)).sum() > 0  # and 20 % of every other group
    assert (split == TRAIN).sum() > 0.5 * len(split)
    assert len(bundle.categories["space_genes"]) == 400 and bundle.results["space_components"].shape == (20, 400)


def test_extract_and_evaluate_beat_no_change_on_the_held_out_context(tx_bundle, tmp_path, capsys):
    code, out, err = run_cli(capsys, "extract", tx_bundle, "-o", tmp_path / "pred.h5ad")
    assert code == 0, err
    pred = anndata.read_h5ad(tmp_path / "pred.h5ad")
    source = pred.obs["stagekit_source"].astype(str)
    b_stim = (pred.obs["cluster_id"] == "B cells") & (pred.obs["group_id"] == "stim")
    assert (b_stim & (source == "predicted")).sum() == (b_stim & (source == "observed")).sum() > 100
    assert not (b_stim & (source == "reference")).any()  # zero-shot: no training cells of the group
    assert pred.obsm["X_pert_embedding"].shape == (pred.n_obs, 20) and pred.n_vars == 400
    code, out, err = run_cli(capsys, "evaluate", tmp_path / "pred.h5ad", "-o", tmp_path / "report", "--no-umap")
    assert code == 0, err
    report = json.loads(Path(out.strip()).read_text())["perturbation"]
    (b,) = [g for g in report["groups"] if g["context"] == "B cells"]
    model, no_change = b["methods"]["model"], b["methods"]["control_mean"]
    assert model["energy_embedding"] < 0.5 * no_change["energy_embedding"]
    assert model["pearson_delta_top50"] > 0.5 and "other_contexts" in b["methods"]
    assert (tmp_path / "report" / "delta_scatter.png").is_file()
    code, out, err = run_cli(capsys, "evaluate", tx_bundle, "--label-key", "cluster_id", "-o", tmp_path / "r2")
    assert code == 2 and "--label-key does not apply" in err, err


def test_backed_extract_and_evaluate_match_memory(tx_bundle, tmp_path, capsys, monkeypatch):
    """--backed reads the screen a context at a time and writes the extract as it goes (X sparse): the same cells,
    values and shifts as in memory, and evaluate's scores (groups scored a few at a time) are the same figures."""
    from stagekit.stages.perturbation import report

    monkeypatch.setattr(report, "BATCH_VALUES", 1)  # every group a batch of its own
    files = {}
    for mode, extra in (("memory", []), ("backed", ["--backed"])):
        files[mode] = tmp_path / f"{mode}.h5ad"
        code, _, err = run_cli(capsys, "extract", tx_bundle, *extra, "-o", files[mode])
        assert code == 0, err
    memory, backed = anndata.read_h5ad(files["memory"]), anndata.read_h5ad(files["backed"])
    assert not hasattr(memory.X, "toarray") and hasattr(backed.X, "toarray")
    pd.testing.assert_frame_equal(memory.obs.astype(str), backed.obs.astype(str))
    assert len(set(memory.obs["cluster_id"])) == 5
    assert np.allclose(memory.X, backed.X.toarray(), atol=1e-6)
    assert np.array_equal(memory.obsm["X_pert_embedding"], backed.obsm["X_pert_embedding"])
    for key, value in memory.uns["stagekit_shifts"].items():
        value, other = np.asarray(value), np.asarray(backed.uns["stagekit_shifts"][key])
        assert np.array_equal(value, other, equal_nan=value.dtype.kind == "f"), key
    assert backed.uns["stagekit"]["pert_key"] == "group_id"
    reports = {}
    for mode, extra in (("memory", []), ("backed", ["--backed"])):
        code, out, err = run_cli(capsys, "evaluate", tx_bundle, *extra, "--no-umap", "--no-cell-eval",
                                 "-o", tmp_path / f"report_{mode}")
        assert code == 0, err
        reports[mode] = json.loads(Path(out.strip()).read_text())["perturbation"]
    assert reports["memory"]["groups"] == reports["backed"]["groups"]
    assert reports["memory"]["mean"] == reports["backed"]["mean"]
    code, _, err = run_cli(capsys, "evaluate", files["backed"], "--backed", "-o", tmp_path / "r3")
    assert code == 2 and "need the model" in err


@pytest.mark.filterwarnings("ignore:Observation names are not unique")
def test_baselines_start_from_the_prediction_controls_even_with_repeated_cell_names(stim_h5ad, tmp_path, capsys):
    """Cell names repeat in real files (barcodes across samples): evaluate pairs by row, so the scores are those
    of the same file with unique names."""
    adata = anndata.read_h5ad(stim_h5ad)
    adata = adata[np.random.default_rng(0).choice(adata.n_obs, 500, replace=False)].copy()
    adata.write_h5ad(tmp_path / "unique.h5ad")
    adata.obs_names = [f"cell{i % 50}" for i in range(adata.n_obs)]
    adata.write_h5ad(tmp_path / "repeated.h5ad")
    tiny = ["--set", "data.n_genes=100", "--set", "data.n_components=5", "--set", "model.hidden=16",
            "--set", "model.n_heads=2", "--set", "model.n_layers=1", "--set", "training.epochs=1"]
    scores = []
    for name in ("unique", "repeated"):
        code, _, err = run_cli(capsys, "pretrain", "--preset", "transition", tmp_path / f"{name}.h5ad", "--pert-key",
                               "group_id", "--control", "ctrl", "--context-key", "cluster_id", "-q", "-o",
                               tmp_path / f"{name}.stk", *tiny)
        assert code == 0, err
        code, out, err = run_cli(capsys, "evaluate", tmp_path / f"{name}.stk", "-o", tmp_path / name, "--no-umap")
        assert code == 0, err
        report = json.loads(Path(out.strip()).read_text())["perturbation"]
        scores.append([g["methods"]["control_mean"]["energy_genes"] for g in report["groups"]])
    assert np.allclose(scores[0], scores[1])


def test_extract_predicts_a_perturbation_for_new_control_cells(tx_bundle, stim_h5ad, tmp_path, capsys):
    adata = anndata.read_h5ad(stim_h5ad)
    controls = adata[adata.obs["group_id"] == "ctrl"][:100].copy()
    controls.write_h5ad(tmp_path / "ctrl.h5ad")
    code, out, err = run_cli(capsys, "extract", tx_bundle, tmp_path / "ctrl.h5ad", "--pert", "stim",
                             "-o", tmp_path / "new.h5ad")
    assert code == 0, err
    new = anndata.read_h5ad(tmp_path / "new.h5ad")
    predicted = new[new.obs["stagekit_source"] == "predicted"]
    assert predicted.n_obs == 100 and (predicted.obs["group_id"] == "stim").all()
    isg15 = list(new.var_names).index("ISG15")  # the interferon response: ISG15 goes up
    assert predicted.X[:, isg15].mean() > new[new.obs["stagekit_source"] == "control"].X[:, isg15].mean() + 0.5
    code, out, err = run_cli(capsys, "extract", tx_bundle, tmp_path / "ctrl.h5ad", "--pert", "IL2",
                             "-o", tmp_path / "x.h5ad")
    assert code == 2 and "'IL2'" in err and not (tmp_path / "x.h5ad").exists()


def test_held_out_perturbation_through_features(tmp_path, capsys):
    """CRISPR knockouts (Papalexi, real cells): a target never seen in training is predicted through its feature
    vector; the features are stored in the bundle and the held-out target's cells come out of extract."""
    from tests.conftest import shared_file

    adata = anndata.read_h5ad(shared_file("papalexi2021_sceptre_lowmoi.h5ad"))
    keep = adata.obs["perturbation"].isin(["control", "IRF1", "STAT1", "IFNGR1", "JAK2"]).to_numpy()
    adata[keep].copy().write_h5ad(tmp_path / "ko.h5ad")
    rng = np.random.default_rng(0)
    targets = ["IRF1", "STAT1", "IFNGR1", "JAK2", "SPI1"]
    np.savez(tmp_path / "features.npz", genes=np.array(targets), embeddings=rng.normal(size=(5, 8)).astype("f4"))
    code, _, err = run_cli(capsys, "pretrain", "--preset", "transition", tmp_path / "ko.h5ad", "--pert-key",
                           "perturbation", "--control", "control", "--holdout-perts", "JAK2", "--pert-features",
                           tmp_path / "features.npz", "-q", "-o", tmp_path / "ko.stk", "--set", "training.epochs=2",
                           "--set", "data.n_components=10", "--set", "model.n_layers=1")
    assert code == 0, err
    b = read_bundle(tmp_path / "ko.stk")
    assert b.results["pert_inputs"].shape == (5, 8)  # control, IFNGR1, IRF1, JAK2, STAT1: features, control zeros
    assert not b.results["pert_inputs"][b.categories["perts"].index("control")].any()
    code, _, err = run_cli(capsys, "extract", tmp_path / "ko.stk", "-o", tmp_path / "ko.h5ad.out.h5ad")
    assert code == 0, err
    pred = anndata.read_h5ad(tmp_path / "ko.h5ad.out.h5ad")
    jak2 = pred.obs["perturbation"] == "JAK2"
    assert (jak2 & (pred.obs["stagekit_source"] == "predicted")).sum() == (jak2 & (pred.obs["stagekit_source"]
                                                                                   == "observed")).sum() > 50
