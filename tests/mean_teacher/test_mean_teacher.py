"""Two-stage Mean Teacher from the command line on real PBMC cells: it learns, stage 2 builds on stage 1, the
collapse guard stops a collapsing run with its last good state, and bad input is one line."""

import json
from pathlib import Path

import anndata
import numpy as np
import pytest
import torch

from stagekit.bundle import read_bundle
from stagekit.models.classifier import log_normalise
from tests.conftest import run_cli

FAST = ["--set", "training.batch_size=128", "--set", "mean_teacher.labelled_batch_size=32", "-q"]
# the recipe on genes that collapses at a high learning rate (the guard's test): an MLP 256-64 with BatchNorm on
# the log-normalised genes, focal + Dice loss, consistency of probabilities
GENES_RECIPE = [a for kv in ('model.input="genes"', "model.n_hidden=[256, 64]", 'model.norm="batch"',
                             'mean_teacher.supervised="focal_dice"', 'mean_teacher.consistency="mse"',
                             "mean_teacher.consistency_weight=10", "mean_teacher.input_noise=0.5",
                             "mean_teacher.input_dropout=0.5") for a in ("--set", kv)]


@pytest.fixture(scope="module")
def chain(tmp_path_factory, small_h5ad):
    """Stage 1 at 5 % labels (about 27 cells of 4 types) on 600 real PBMC cells."""
    from stagekit.cli import main

    folder = tmp_path_factory.mktemp("mt")
    paths = {"data": small_h5ad, "s1": folder / "s1.stk", "s2": folder / "s2.stk", "cells": folder / "cells.h5ad",
             "report": folder / "report", "folder": folder}
    with pytest.raises(SystemExit) as done:
        main(["pretrain", "-p", "mean-teacher", str(small_h5ad), "--label-key", "cluster_id", "--labelled-fraction",
              "0.05", "--set", "training.epochs=8", "--set", "mean_teacher.rampup_epochs=3", *FAST, "-o",
              str(paths["s1"])])
    assert done.value.code == 0
    return paths


def test_two_stage_learns_and_stage_two_extends_stage_one(capsys, chain):
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
    # probabilities are the teacher's softmax at the temperature fitted on the validation cells
    t = float(s2.results["temperature"])
    assert t == s2.final_metrics["temperature"] and t != 1.0 and cells.uns["stagekit"]["temperature"] == t
    assert s2.final_metrics["val_ece_calibrated"] <= s2.final_metrics["val_ece"]
    from stagekit.stages.mean_teacher.train import load_model

    with torch.no_grad():
        logits = load_model(s2).teacher(log_normalise(torch.from_numpy(anndata.read_h5ad(chain["data"]).X.toarray())))
    assert np.allclose(cells.obsm["stagekit_class_probabilities"], torch.softmax(logits / t, 1).numpy(), atol=1e-5)
    code, out, err = run_cli(capsys, "evaluate", chain["cells"], "--label-key", "cluster_id", "--no-umap", "-q",
                             "-o", chain["report"])
    assert code == 0, err
    report = json.loads((chain["report"] / "metrics.json").read_text())["classification"]
    from sklearn.metrics import f1_score

    truth = cells.obs["cluster_id"].astype(str)[cells.obs["stagekit_split"] == "unlabelled"]
    majority = f1_score(truth, [truth.mode()[0]] * len(truth), average="macro")  # the majority-class baseline
    assert report["macro_f1"] > majority + 0.5 and report["cells"] == len(truth)
    assert 0 <= report["expected_calibration_error"] < 0.5
    assert report["validation_cells"]["cells"] == len(s2.results["validation"])


def test_collapse_guard_stops_a_collapsing_run_and_keeps_the_last_good_state(capsys, chain):
    """A binary classifier trained from scratch at 50x the preset's learning rate swings from predicting most
    cells positive to far fewer in one epoch: the guard stops it, keeping the end of the last epoch that passed."""
    out = chain["folder"] / "collapse.stk"
    code, _, err = run_cli(capsys, "pretrain", "-p", "mean-teacher", chain["data"], "--label-key", "cluster_id",
                           "--positive-class", "CD14+ Monocytes", "--labelled-fraction", "0.2",
                           "--set", "training.epochs=10", "--set", "training.lr=5e-2", *GENES_RECIPE, *FAST, "-o", out)
    assert code == 2 and "collapsing" in err, err
    assert "mean_probability_drift" in err or "pred_positive_fraction" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()
    partial = read_bundle(out.with_name("collapse.stk.partial"), resume=True)
    assert partial.status == "stopped" and f"at epoch {partial.epochs_done + 1}," in err
    h = partial.history
    assert len(h["pred_positive_fraction"]) == partial.epochs_done >= 1  # the kept state passed every check
    assert all(v <= 0.25 for v in h["mean_probability_drift"]) and min(h["pred_positive_fraction"]) >= 0.25 * 0.25
    from stagekit.stages.phase import weights_resolved

    kept = weights_resolved(partial.resume, partial.weights)["model"]  # the weights written are those of the
    assert all(np.array_equal(partial.weights[k], np.asarray(kept[k]["__tensor__"])) for k in partial.weights)
    assert all("__weights__" in partial.resume["model"][k] for k in partial.weights)  # last good epoch end


def test_bad_input_is_one_line(capsys, chain, tmp_path):
    def fails(*args, needle):
        code, out, err = run_cli(capsys, *map(str, args), "-o", tmp_path / "x.stk")
        assert code == 2 and out == "" and "Traceback" not in err and needle in err, err
        assert len(err.strip().splitlines()) == 1 and not (tmp_path / "x.stk").exists()

    data = chain["data"]
    fails("pretrain", "-p", "mean-teacher", data, needle="--label-key")
    fails("pretrain", "-p", "mean-teacher", data, "--label-key", "cluster_id", "--positive-class", "Monocytes",
          needle="CD14+ Monocytes")
    fails("pretrain", "-p", "mean-teacher", data, "--label-key", "cluster_id", "--labelled-fraction", "1.5",
          needle="(0, 1]")
    fails("pretrain", "-p", "mean-teacher", data, "--label-key", "cluster_id", "--labelled-fraction", "0",
          needle="data.labelled_fraction")
    fails("finetune", "-p", "mean-teacher", chain["s1"], "--labelled-fraction", "0.01", needle="smaller than")
    other = tmp_path / "other.h5ad"
    adata = anndata.read_h5ad(data)
    adata[:, ::-1].copy().write_h5ad(other)
    fails("finetune", "-p", "mean-teacher", chain["s1"], other, needle="genes differ")
    vae = tmp_path / "vae.stk"
    assert run_cli(capsys, "pretrain", "-p", "vae", data, "--set", "training.epochs=1", "-q", "-o", vae)[0] == 0
    fails("finetune", "-p", "mean-teacher", vae, needle="finetune --preset mean-teacher continues")


@pytest.fixture(scope="module")
def vae(chain):
    """A `pretrain --preset vae` bundle of the same cells (3 epochs), for --init-from and --latent-from."""
    from stagekit.cli import main

    path = chain["folder"] / "vae.stk"
    with pytest.raises(SystemExit) as done:
        main(["pretrain", "-p", "vae", str(chain["data"]), "--set", "training.epochs=3", "-q", "-o", str(path)])
    assert done.value.code == 0
    return path


def test_init_from_a_vae_encoder_reports_what_it_loaded(capsys, chain, vae, tmp_path):
    out = tmp_path / "mt.stk"
    code, _, err = run_cli(capsys, "pretrain", "-p", "mean-teacher", chain["data"], "--label-key", "cluster_id",
                           "--labelled-fraction", "0.1", "--init-from", vae, "--set", "model.input=\"genes\"",
                           "--set", "training.epochs=1", "-o", out)
    assert code == 0, err
    report = read_bundle(out).records["load_report"]  # where every pipeline keeps it; `info` shows it
    assert "body.0.weight" in report["loaded"] and report["new"] == ["head.weight", "head.bias"]
    assert "head.weight" in run_cli(capsys, "info", out)[1]
    assert read_bundle(out).lineage[0]["model"] == "vae"
    code, _, err = run_cli(capsys, "pretrain", "-p", "mean-teacher", chain["data"], "--label-key", "cluster_id",
                           "--labelled-fraction", "0.1", "--init-from", vae, "-o", tmp_path / "y.stk")
    assert code == 2 and "model.input" in err


def test_latent_from_a_vae_reads_its_encoder_fixed(capsys, chain, vae, tmp_path):
    """The layers read the VAE encoder's posterior mean: its weights travel in the bundle unchanged by training (in
    student and teacher), the classifier learns, extract reads it back; the flag and model.input agree or fail."""
    out = tmp_path / "latent.stk"
    code, _, err = run_cli(capsys, "pretrain", "-p", "mean-teacher", chain["data"], "--label-key", "cluster_id",
                           "--labelled-fraction", "0.05", "--latent-from", vae, "--set", "training.epochs=6",
                           "--set", "mean_teacher.rampup_epochs=2", *FAST, "-o", out)
    assert code == 0, err
    bundle, encoder = read_bundle(out), read_bundle(vae).weights
    assert bundle.config()["model"]["input"] == "latent" and bundle.lineage[0]["model"] == "vae"
    for net in ("student", "teacher"):
        assert np.array_equal(bundle.weights[f"{net}.latent.body.0.weight"], encoder["encoder.0.weight"])
        assert np.array_equal(bundle.weights[f"{net}.latent.mean.weight"], encoder["z_mean.weight"])
    assert bundle.final_metrics["val_f1"] > 0.6  # 4 types: a constant guess scores under 0.2
    cells = tmp_path / "cells.h5ad"
    assert run_cli(capsys, "extract", out, "-q", "-o", cells)[0] == 0
    assert anndata.read_h5ad(cells).obsm["stagekit_class_probabilities"].shape[1] == 4
    for extra, says in ((["--latent-from", vae, "--set", 'model.input="genes"'], "drop one of them"),
                        (["--set", 'model.input="latent"'], "--latent-from VAE.stk"),
                        (["--latent-from", vae, "--init-from", vae], "not both"),
                        (["--latent-from", out], "takes a `pretrain --preset vae` bundle")):
        code, _, err = run_cli(capsys, "pretrain", "-p", "mean-teacher", chain["data"], "--label-key", "cluster_id",
                               *extra, "-o", tmp_path / "bad.stk")
        assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "bad.stk").exists()


def test_labels_missing_values_binary_and_nested_subsets(tmp_path):
    """NaN labels are unlabelled; a positive class makes a binary task, two labels without one do not; every
    class keeps at least one label at a small fraction; stage 2's set contains stage 1's even when cells were
    labelled in between."""
    import pandas as pd

    from stagekit.data.anndata_io import CountMatrix
    from stagekit.errors import UserError
    from stagekit.stages.mean_teacher.task import labelled_cells, read_labels, validation_cells

    values = ["a"] * 60 + ["b"] * 30 + [None] * 10
    counts = CountMatrix(Path("x.h5ad"), "X", pd.DataFrame({"t": values}), ["g"])
    labels = read_labels(counts, "t", "")
    assert (labels.codes[90:] == -1).all() and labels.classes == ["a", "b"] and not labels.binary
    assert read_labels(counts, "t", "b").binary
    validation = validation_cells(labels, 0.1, 0)
    assert not set(validation) & set(range(90, 100)) and len(validation) == 9
    few = labelled_cells(labels, validation, 0.01, 0, "x.h5ad")  # 0.54 and 0.27 cells: one label per class
    assert sorted(labels.codes[few]) == [0, 1]
    everything_validation = validation_cells(labels, 1.0, 0)
    with pytest.raises(UserError, match="no labelled cell outside the validation cells"):
        labelled_cells(labels, everything_validation, 0.5, 0, "x.h5ad")
    first = labelled_cells(labels, validation, 0.2, 0, "x.h5ad")
    relabelled = labels.codes.copy()
    relabelled[90:] = 0  # the expert labelled the rest
    labels.codes = relabelled
    second = labelled_cells(labels, validation, 0.5, 0, "x.h5ad", base=first)
    assert set(first) < set(second)


def test_ema_decay_switches_after_the_rampup():
    from stagekit.train import EMA

    ema = EMA(torch.nn.Linear(2, 1), decay=0.999, rampup_decay=0.99, rampup_steps=200)
    ema.updates = 150
    assert ema.current_decay() == pytest.approx(0.99)  # min(0.99, 1 - 1/151)
    ema.updates = 5
    assert ema.current_decay() == pytest.approx(1 - 1 / 6)
    ema.updates = 5000
    assert ema.current_decay() == pytest.approx(0.999)


def test_binary_scores_are_the_positive_class():
    from stagekit.stages.mean_teacher.task import classification_scores

    probability = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    target = np.array([0, 1, 1, 0])
    binary = classification_scores(probability, target, binary=True)
    assert binary["f1"] == pytest.approx(0.5) and binary["precision"] == 0.5 and binary["recall"] == 0.5
    assert classification_scores(probability, target, binary=False)["f1"] == pytest.approx(0.5)  # macro


def test_teacher_norm_statistics_change_only_through_the_ema():
    from stagekit.models.classifier import CellClassifier, MeanTeacher

    model = MeanTeacher(CellClassifier(5, 3, [4]))
    before = [b.clone() for b in model.teacher.buffers()]
    model.train()
    model(torch.randn(8, 5), torch.randn(8, 5) + 3)
    assert all(torch.equal(a, b) for a, b in zip(before, model.teacher.buffers(), strict=True))


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
    # pseudo labels: the student's cross-entropy on the teacher's class, only where the teacher is sure
    sure = torch.tensor([[9.0, 0.0, 0.0], [0.0, 0.2, 0.0]])  # first cell: p 0.9998; second: p 0.38
    student_ce = torch.nn.functional.cross_entropy(logits[:1], torch.tensor([0]), reduction="sum") / 2
    assert consistency_loss(logits, sure, "pseudo_label", 0.9) == pytest.approx(float(student_ce))
    assert consistency_loss(logits, sure, "pseudo_label", 0.3) > consistency_loss(logits, sure, "pseudo_label", 0.9)
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


def test_principal_component_input_is_fixed_and_travels_with_the_weights():
    """The layers read the scaled principal components; the projection is a buffer, untouched by training and
    EMA, saved and loaded with the weights."""
    from stagekit.models.classifier import CellClassifier, MeanTeacher

    net = CellClassifier(6, 3, [4], n_pcs=2, norm="layer")
    components = torch.tensor([[1.0, 0, 0, 0, 0, 0], [0, 1.0, 0, 0, 0, 0]])
    net.set_projection(torch.full((6,), 0.5), components, 2.0)
    h = torch.rand(5, 6)
    assert torch.allclose(net.project(h), (h[:, :2] - 0.5) / 2.0)
    assert net.body[0].in_features == 2 and not any(p.shape == (2, 6) for p in net.parameters())
    pair = MeanTeacher(net)
    assert torch.equal(pair.teacher.pca_components, components)  # the teacher reads the same components
    again = CellClassifier(6, 3, [4], n_pcs=2, norm="layer")
    again.load_state_dict(net.state_dict())
    assert torch.allclose(again.eval()(h), net.eval()(h))


def test_keys_set_by_hand_that_do_nothing_are_named():
    from stagekit.stages.mean_teacher.train import warn_unused
    from stagekit.stages.registry import read_config

    config = read_config("pretrain", "mean-teacher", [("mean_teacher.consistency", "mse", "test"),
                                                      ("mean_teacher.pseudo_label_threshold", 0.5, "test"),
                                                      ("model.input", "genes", "test"), ("model.n_pcs", 20, "test")])
    said = []
    warn_unused(config, False, said.append)
    assert len(said) == 1 and "pseudo_label_threshold" in said[0] and "model.n_pcs" in said[0]
    said.clear()
    warn_unused(read_config("pretrain", "mean-teacher", []), False, said.append)
    assert said == []  # the preset's own values are never reported


def test_backed_is_the_same_run_as_in_memory(capsys, chain, tmp_path):
    """Stage 1 and stage 2 read from disk give stage 1 and stage 2 of the memory run bit for bit (the principal
    components from the same blocks of cells); extract --backed gives the same probabilities without the counts."""
    common = ["--label-key", "cluster_id", "--labelled-fraction", "0.05", "--set", "training.epochs=8", "--set",
              "mean_teacher.rampup_epochs=3", *FAST]
    s1 = tmp_path / "s1.stk"
    code, _, err = run_cli(capsys, "pretrain", "-p", "mean-teacher", chain["data"], *common, "--backed", "-o", s1)
    assert code == 0, err
    memory, backed = read_bundle(chain["s1"]), read_bundle(s1)
    assert backed.config()["data"]["backed"] and sorted(memory.weights) == sorted(backed.weights)
    for key, value in memory.weights.items():
        assert np.array_equal(value, backed.weights[key]), key
    stage2 = {}
    for mode, extra in (("memory", []), ("backed", ["--backed"])):
        stage2[mode] = tmp_path / f"s2_{mode}.stk"
        code, _, err = run_cli(capsys, "finetune", "-p", "mean-teacher", s1, chain["data"], "--labelled-fraction",
                               "0.2", "--set", "training.epochs=2", *FAST, *extra, "-o", stage2[mode])
        assert code == 0, err
    a, b = read_bundle(stage2["memory"]), read_bundle(stage2["backed"])
    for key, value in a.weights.items():
        assert np.array_equal(value, b.weights[key]), key
    cells = {}
    for mode, extra in (("memory", []), ("backed", ["--backed"])):
        code, _, err = run_cli(capsys, "extract", stage2["backed"], *extra, "-o", tmp_path / f"{mode}.h5ad", "-q")
        assert code == 0, err
        cells[mode] = anndata.read_h5ad(tmp_path / f"{mode}.h5ad")
    assert cells["backed"].n_vars == 0 and cells["memory"].n_vars > 0
    assert np.array_equal(cells["memory"].obsm["stagekit_class_probabilities"],
                          cells["backed"].obsm["stagekit_class_probabilities"])
    assert (cells["memory"].obs["stagekit_prediction"] == cells["backed"].obs["stagekit_prediction"]).all()
