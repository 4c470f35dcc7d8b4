"""A pipeline declared outside the package (tests/toy_pipeline) runs pretrain -> extract -> evaluate -> info through
the command line, with no change to any file outside its folder."""

from __future__ import annotations

import json
from pathlib import Path

import anndata

from stagekit.bundle import read_bundle
from tests.conftest import run_subprocess

TOY = Path(__file__).resolve().parent / "toy_pipeline"


def test_a_toy_pipeline_runs_every_command(monkeypatch, tmp_path, small_h5ad):
    monkeypatch.setenv("STAGEKIT_PIPELINES", "tests.toy_pipeline.spec")
    monkeypatch.setenv("PYTHONPATH", str(TOY.parents[1]))
    help_text = run_subprocess("pretrain", "--help").stdout
    assert "toy autoencoding options" in help_text and "--code-size" in help_text

    out = tmp_path / "toy.stk"
    run = run_subprocess("pretrain", "--preset", TOY / "toy.toml", small_h5ad, "--code-size", "3", "-q", "-o", out)
    assert run.returncode == 0, run.stderr
    bundle = read_bundle(out)
    assert (bundle.stage, bundle.model) == ("pretrain", "toy-linear") and bundle.weights["encode.weight"].shape[0] == 3
    loss = bundle.history["train_loss"]
    assert loss[-1] < 0.5 * loss[0]  # it learns

    cells = tmp_path / "cells.h5ad"
    run = run_subprocess("extract", out, "-o", cells, "-q")
    assert run.returncode == 0, run.stderr
    assert anndata.read_h5ad(cells).obsm["X_stagekit"].shape[1] == 3

    run = run_subprocess("evaluate", cells, "-o", tmp_path / "report")
    assert run.returncode == 0, run.stderr
    assert "gene means" in run.stderr  # the report's table
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["mse"] < metrics["mse_gene_means"]  # beats predicting every gene's mean

    run = run_subprocess("info", out)
    assert run.returncode == 0 and "toy-linear" in run.stdout, run.stderr

    run = run_subprocess("evaluate", cells, "--label-key", "cluster_id", "-o", tmp_path / "r2")
    assert run.returncode == 2 and "--label-key does not apply" in run.stderr, run.stderr
