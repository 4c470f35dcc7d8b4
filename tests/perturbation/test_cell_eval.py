"""Predictions that cell-eval takes as written: never negative, one predicted / real pair per context with the
control cells in both; `evaluate` scores the model and the baselines with cell-eval side by side."""

from __future__ import annotations

import json
import subprocess
import sys

import anndata
import numpy as np
import pytest

from tests.conftest import run_cli
from tests.release_bundles.commands import BUNDLES, DATA

pytest.importorskip("cell_eval")


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cell_eval")
    code = subprocess.run([sys.executable, "-m", "stagekit", "extract", str(BUNDLES / "transition.stk"),
                           str(DATA / "stim.h5ad"), "-o", str(folder / "pred.h5ad"), "-q"], capture_output=True,
                          text=True, timeout=300)
    assert code.returncode == 0, code.stderr
    return folder


def test_extract_writes_a_pair_per_context_that_the_cell_eval_command_reads(extracted):
    combined = anndata.read_h5ad(extracted / "pred.h5ad")
    assert combined.X.min() >= 0  # no predicted expression below zero
    contexts = sorted(p.name for p in (extracted / "pred.cell-eval").iterdir())
    assert contexts == ["B_cells", "CD14+_Monocytes", "CD4_T_cells", "CD8_T_cells", "FCGR3A+_Monocytes"]
    pair = extracted / "pred.cell-eval" / "CD14+_Monocytes"
    predicted, real = anndata.read_h5ad(pair / "predicted.h5ad"), anndata.read_h5ad(pair / "real.h5ad")
    assert list(predicted.var_names) == list(real.var_names) == list(combined.var_names)
    assert predicted.obs_names.is_unique and real.obs_names.is_unique
    assert (predicted.obs["group_id"] == "ctrl").sum() == (real.obs["group_id"] == "ctrl").sum() > 0
    assert "log1p" in predicted.uns["normalisation"]
    out = extracted / "cell-eval-out"
    run = subprocess.run([sys.executable, "-m", "cell_eval", "run", "-ap", str(pair / "predicted.h5ad"), "-ar",
                          str(pair / "real.h5ad"), "--control-pert", "ctrl", "--pert-col", "group_id", "-o",
                          str(out), "--num-threads", "1", "--skip-metrics",
                          "pearson_edistance,clustering_agreement"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (out / "results.csv").is_file()


def test_evaluate_scores_model_and_baselines_with_cell_eval(extracted, tmp_path, capsys):
    code, _, err = run_cli(capsys, "evaluate", extracted / "pred.h5ad", "--no-umap", "-o", tmp_path / "report")
    assert code == 0, err
    report = json.loads((tmp_path / "report" / "metrics.json").read_text())["cell_eval"]
    assert {"model", "control_mean", "training_shift", "other_contexts"} <= set(report["mean"])
    assert len(report["groups"]) == 5 and report["mean"]["model"]["groups"] == 5
    # the control cells moved by the training shift find the stimulation's DE genes; unchanged controls none
    assert report["mean"]["training_shift"]["overlap_at_50"] > report["mean"]["control_mean"]["overlap_at_50"]
    assert np.isfinite(report["mean"]["model"]["pearson_delta"])
    assert "cell-eval: mean over 5 held-out group(s)" in err and "Iterating over" not in err  # no progress bars
    assert (tmp_path / "report" / "cell_eval" / "CD14+_Monocytes" / "model" / "results.csv").is_file()


def test_one_held_out_group_is_extracted_and_scored_alone(tmp_path, capsys):
    bundle, data = BUNDLES / "transition.stk", DATA / "stim.h5ad"
    code, _, err = run_cli(capsys, "extract", bundle, data, "--group", "stim/CD14+ Monocytes", "-o",
                           tmp_path / "one.h5ad", "-q")
    assert code == 0, err
    assert [p.name for p in (tmp_path / "one.cell-eval").iterdir()] == ["CD14+_Monocytes"]
    observed = anndata.read_h5ad(tmp_path / "one.h5ad").obs.query("stagekit_source == 'observed'")
    assert set(observed["cluster_id"]) == {"CD14+ Monocytes"}
    code, _, err = run_cli(capsys, "evaluate", bundle, data, "--group", "stim/CD14+ Monocytes", "--no-umap",
                           "-o", tmp_path / "report")
    assert code == 0, err
    assert len(json.loads((tmp_path / "report" / "metrics.json").read_text())["perturbation"]["groups"]) == 1
    code, _, err = run_cli(capsys, "extract", bundle, data, "--group", "stim/Nope", "-o", tmp_path / "no.h5ad")
    assert code == 2 and "stim/CD14+ Monocytes" in err and not (tmp_path / "no.h5ad").exists()
