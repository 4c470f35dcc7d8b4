"""Two-stage Mean Teacher from the command line on real PBMC cells: it learns, stage 2 builds on stage 1, the
collapse guard stops a collapsing run with its last good state, and bad input is one line."""

import json

import anndata
import numpy as np
import pytest
import torch

from stagekit.bundle import read_bundle
from tests.conftest import run_cli

FAST = ["--set", "training.batch_size=128", "--set", "mean_teacher.labelled_batch_size=32", "-q"]


@pytest.fixture(scope="module")
def chain(tmp_path_factory, small_h5ad):
    folder = tmp_path_factory.mktemp("mt")
    return {"data": small_h5ad, "s1": folder / "s1.stk", "s2": folder / "s2.stk", "cells": folder / "cells.h5ad",
            "report": folder / "report", "folder": folder}


def test_two_stage_learns_and_stage_two_extends_stage_one(capsys, chain):
    code, out, err = run_cli(capsys, "pretrain", "-p", "mean-teacher", chain["data"], "--label-key", "cluster_id",
                             "--labelled-fraction", "0.05", "--set", "training.epochs=8",
                             "--set", "mean_teacher.rampup_epochs=3", *FAST, "-o", chain["s1"])
    assert code == 0, err
    code, out, err = run_cli(capsys, "finetune", "-p", "mean-teacher", chain["s1"], chain["data"],
                             "--labelled-fraction", "0.2", "--set", "training.epochs=4", *FAST, "-o", chain["s2"])
    assert code == 0, err
    s1, s2 = read_bundle(chain["s1"]), read_bundle(chain["s2"])
    assert set(s1.results["labelled"]) < set(s2.results["labelled"])  # stage 2's labels contain stage 1's
    assert np.array_equal(s1.results["validation"], s2.results["validation"])
    assert s2.lineage[0]["stage"] == "pretrain" and s2.lineage[0]["model"] == "mean-teacher"
    assert {"val_f1", "val_student_f1", "largest_class_share", "train_consistency"} <= set(s1.history)
    assert s1.top_k and s1.final_metrics["val_f1"] == max(s1.history["val_f1"])  # the best epoch is kept
    # the teacher is an average of the student, not a copy, and was saved with it
    assert not np.array_equal(s1.weights["teacher.head.weight"], s1.weights["student.head.weight"])

    code, out, err = run_cli(capsys, "extract", chain["s2"], "-o", chain["cells"], "-q")
    assert code == 0, err
    cells = anndata.read_h5ad(chain["cells"])
    assert cells.obsm["stagekit_class_probabilities"].shape == (600, 4)
    assert set(cells.obs["stagekit_split"]) == {"labelled", "validation", "unlabelled"}
    code, out, err = run_cli(capsys, "evaluate", chain["cells"], "--label-key", "cluster_id", "--no-umap", "-q",
                             "-o", chain["report"])
    assert code == 0, err
    report = json.loads((chain["report"] / "metrics.json").read_text())["classification"]
    truth = cells.obs["cluster_id"].astype(str)[cells.obs["stagekit_split"] != "labelled"]
    majority = (truth == truth.mode()[0]).mean() / 4  # macro-F1 of predicting the commonest type: < 0.25
    assert report["macro_f1"] > 0.8 > majority and report["cells"] == len(truth)


def test_collapse_guard_stops_a_collapsing_run_and_keeps_the_last_good_state(capsys, chain):
    """A binary classifier trained from scratch at 50x the preset's learning rate swings from predicting most
    cells positive to far fewer in one epoch: the guard stops it, keeping the end of the last epoch that passed."""
    out = chain["folder"] / "collapse.stk"
    code, _, err = run_cli(capsys, "pretrain", "-p", "mean-teacher", chain["data"], "--label-key", "cluster_id",
                           "--positive-class", "CD14+ Monocytes", "--labelled-fraction", "0.2",
                           "--set", "training.epochs=10", "--set", "training.lr=5e-2", *FAST, "-o", out)
    assert code == 2 and "collapsing" in err, err
    assert "mean_probability_drift" in err or "pred_positive_fraction" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()
    partial = read_bundle(out.with_name("collapse.stk.partial"), resume=True)
    assert partial.status == "stopped" and f"at epoch {partial.epochs_done + 1}," in err
    h = partial.history
    assert len(h["pred_positive_fraction"]) == partial.epochs_done >= 1  # the kept state passed every check
    assert all(v <= 0.25 for v in h["mean_probability_drift"]) and min(h["pred_positive_fraction"]) >= 0.25 * 0.25


def test_bad_input_is_one_line(capsys, chain, tmp_path):
    def fails(*args, needle):
        code, out, err = run_cli(capsys, *map(str, args), "-o", tmp_path / "x.stk")
        assert code == 2 and out == "" and "Traceback" not in err and needle in err, err
        assert len(err.strip().splitlines()) == 1 and not (tmp_path / "x.stk").exists()

    data = chain["data"]
    fails("pretrain", "-p", "mean-teacher", data, needle="--label-key")
    fails("pretrain", "-p", "mean-teacher", data, "--label-key", "cluster_id", "--labelled-fraction", "0.001",
          needle="gets no labelled cell")
    fails("pretrain", "-p", "mean-teacher", data, "--label-key", "cluster_id", "--positive-class", "Monocytes",
          needle="CD14+ Monocytes")
    fails("pretrain", "-p", "mean-teacher", data, "--label-key", "cluster_id", "--labelled-fraction", "1.5",
          needle="(0, 1]")
    fails("pretrain", "-p", "mean-teacher", data, "--label-key", "cluster_id", "--labelled-fraction", "0",
          needle="data.labelled_fraction")
    if chain["s1"].exists():
        fails("finetune", "-p", "mean-teacher", chain["s1"], "--labelled-fraction", "0.01", needle="smaller than")
        other = tmp_path / "other.h5ad"
        adata = anndata.read_h5ad(data)
        adata[:, ::-1].copy().write_h5ad(other)
        fails("finetune", "-p", "mean-teacher", chain["s1"], other, needle="genes differ")
    vae = tmp_path / "vae.stk"
    assert run_cli(capsys, "pretrain", "-p", "vae", data, "--set", "training.epochs=1", "-q", "-o", vae)[0] == 0
    fails("finetune", "-p", "mean-teacher", vae, needle="finetune --preset mean-teacher continues")


def test_init_from_a_vae_encoder_reports_what_it_loaded(capsys, chain, tmp_path):
    vae = tmp_path / "vae.stk"
    code = run_cli(capsys, "pretrain", "-p", "vae", chain["data"], "--set", "training.epochs=1", "-q", "-o", vae)[0]
    assert code == 0
    out = tmp_path / "mt.stk"
    code, _, err = run_cli(capsys, "pretrain", "-p", "mean-teacher", chain["data"], "--label-key", "cluster_id",
                           "--labelled-fraction", "0.1", "--init-from", vae, "--set", "model.norm=\"layer\"",
                           "--set", "model.n_hidden=[128]", "--set", "training.epochs=1", "-o", out)
    assert code == 0, err
    report = json.loads(bytes(read_bundle(out).results["load_report"]).decode())
    assert "body.0.weight" in report["loaded"] and report["new"] == ["head.weight", "head.bias"]
    assert read_bundle(out).lineage[0]["model"] == "vae"
    code, _, err = run_cli(capsys, "pretrain", "-p", "mean-teacher", chain["data"], "--label-key", "cluster_id",
                           "--labelled-fraction", "0.1", "--init-from", vae, "-o", tmp_path / "y.stk")
    assert code == 2 and "model.norm" in err


def test_losses():
    from stagekit.losses.classification import consistency_loss, focal_loss, sigmoid_rampup, soft_dice_loss

    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0]])
    y = torch.tensor([0, 1])
    ce = torch.nn.functional.cross_entropy(logits, y)
    assert focal_loss(logits, y, gamma=0.0) == pytest.approx(float(ce))  # gamma 0: cross-entropy
    assert focal_loss(logits, y, gamma=2.0) < ce  # easy examples weigh less
    perfect = torch.tensor([[20.0, -20.0], [-20.0, 20.0]])
    assert soft_dice_loss(perfect, torch.tensor([0, 1])) < 1e-3 < soft_dice_loss(perfect, torch.tensor([1, 0]))
    binary = torch.tensor([[3.0], [-3.0]])
    assert focal_loss(binary, torch.tensor([1, 0]), 2.0) < focal_loss(binary, torch.tensor([0, 1]), 2.0)
    assert consistency_loss(logits, logits) == 0 and consistency_loss(logits, logits, "kl") == pytest.approx(0.0)
    assert consistency_loss(logits, logits.flip(0)) > 0
    assert sigmoid_rampup(0.0) == pytest.approx(np.exp(-5)) and sigmoid_rampup(1.0) == 1.0


def test_ema_averages_batchnorm_statistics_when_asked():
    from stagekit.train import EMA

    student = torch.nn.BatchNorm1d(3)
    teacher = torch.nn.BatchNorm1d(3)
    ema = EMA(student, decay=0.5, teacher=teacher, buffers="average")
    student(torch.randn(16, 3) + 5)
    ema.after_optimizer_step(student, None, {})  # first update: a copy
    assert torch.equal(teacher.running_mean, student.running_mean)
    before = teacher.running_mean.clone()
    student(torch.randn(16, 3) + 5)
    ema.after_optimizer_step(student, None, {})
    assert torch.allclose(teacher.running_mean, 0.5 * before + 0.5 * student.running_mean)
    assert teacher.num_batches_tracked == student.num_batches_tracked  # counters are copied
