"""Live logs: a training command writes every step's and epoch's scalars to CSV and TensorBoard while it runs,
read back here with TensorBoard's own event reader; a resumed run writes a run folder of its own."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from stagekit.bundle import read_bundle
from tests.conftest import run_cli


def _events(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_pretrain_writes_csv_and_tensorboard_logs_that_match_its_history(tmp_path, capsys, small_h5ad):
    out = tmp_path / "vae.stk"
    code, _, err = run_cli(capsys, "pretrain", "-p", "vae", small_h5ad, "--set", "training.epochs=3",
                           "--set", "training.batch_size=128", "--logger", "csv,tensorboard", "-o", out)
    assert code == 0, err
    run = tmp_path / "vae.logs" / "version_0"
    assert f"live logs: {run}" in err
    history = read_bundle(out).history
    table = pd.read_csv(run / "metrics.csv")
    epochs = table.dropna(subset=["epoch/train_loss"])
    np.testing.assert_allclose(epochs["epoch/train_loss"], history["train_loss"], rtol=1e-6)
    steps = table.dropna(subset=["step/loss"])
    assert len(steps) == epochs["step"].max() and steps["step"].is_monotonic_increasing
    assert (steps["lr/base"] > 0).all()
    scalars = _events(run)
    assert [v for _, v in scalars["epoch/val_loss"]] == pytest.approx(history["val_loss"], rel=1e-6)
    assert len(scalars["step/loss"]) == len(steps)
    settings = json.loads((run / "hyperparameters.json").read_text())
    assert settings["model.n_latent"] == 32 and settings["command"] == "pretrain"


def test_a_resumed_run_logs_beside_the_first(tmp_path, capsys, small_h5ad):
    first = tmp_path / "first.stk"
    code, _, err = run_cli(capsys, "pretrain", "-p", "vae", small_h5ad, "--set", "training.epochs=2",
                           "--keep-resume", "--logger", "csv", "--log-dir", tmp_path / "logs", "-o", first, "-q")
    assert code == 0, err
    code, _, err = run_cli(capsys, "pretrain", small_h5ad, "--resume", first, "--set", "training.epochs=3",
                           "--logger", "csv", "--log-dir", tmp_path / "logs", "-o", tmp_path / "more.stk", "-q")
    assert code == 0, err
    second = pd.read_csv(tmp_path / "logs" / "version_1" / "metrics.csv")
    assert second["epoch/epoch"].dropna().tolist() == [3.0]  # the epoch it added


def test_an_unknown_logger_is_refused_by_name(tmp_path, capsys, small_h5ad):
    code, _, err = run_cli(capsys, "pretrain", "-p", "vae", small_h5ad, "--logger", "wandb", "-o",
                           tmp_path / "x.stk")
    assert code == 2 and "runtime.logger" in err and "wandb" in err
    assert not (tmp_path / "x.logs").exists()
