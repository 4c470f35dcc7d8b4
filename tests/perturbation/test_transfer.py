"""Perturbation transfer II from the command line, on real CRISPR knockouts (Papalexi, THP-1): a transition model
pretrained without three targets moves to them as a few-shot target task through phases A (frozen backbone),
B (polish) and C -> D -> E (progressive unfreezing with layer-wise lr decay). Frozen weights stay bit-identical,
trainable ones change, new perturbations get new encoder inputs, and every phase learns."""

from __future__ import annotations

import json
from pathlib import Path

import anndata
import numpy as np
import pytest

from stagekit.bundle import read_bundle
from tests.conftest import run_cli, shared_file

PRETRAIN = ["--set", "data.n_genes=100", "--set", "data.n_components=10", "--set", "model.hidden=32",
            "--set", "model.n_heads=2", "--set", "model.n_layers=4", "--set", "sets.cell_set_len=16",
            "--set", "training.epochs=4", "-q"]
BACKBONE = ("blocks.", "norm.", "project_out.")


@pytest.fixture(scope="module")
def screen(tmp_path_factory):
    """4,000 real cells of all 299 genes; the three largest targets are the target task, the rest pretrains."""
    adata = anndata.read_h5ad(shared_file("papalexi2021_sceptre_lowmoi.h5ad"))
    adata = adata[np.sort(np.random.default_rng(0).choice(adata.n_obs, 4000, replace=False))].copy()
    counts = adata.obs["perturbation"].astype(str).value_counts()
    targets = [t for t in counts.index if t not in ("control", "unassigned")]
    path = tmp_path_factory.mktemp("papalexi") / "papalexi.h5ad"
    adata.write_h5ad(path)
    return path, targets[:3], targets[3:]


def _excluding(names):
    return [a for name in ["unassigned", *names] for a in ("--exclude", name)]


@pytest.fixture(scope="module")
def chain(screen, tmp_path_factory):
    """pretrain -> A -> B -> C/D/E, each through the command line."""
    path, new, seen = screen
    folder = tmp_path_factory.mktemp("transfer")
    runs = [["pretrain", "--preset", "transition", path, "--pert-key", "perturbation", "--control", "control",
             *_excluding(new), *PRETRAIN, "-o", folder / "tx.stk"],
            ["finetune", "--preset", "frozen-backbone", folder / "tx.stk", path, *_excluding(seen),
             "--test-fraction", "0.7", "--set", "training.epochs=30", "--set", "training.lr=3e-3",
             "--set", "training.batch_size=4", "-o", folder / "A.stk"],
            ["finetune", "--preset", "frozen-backbone-polish", folder / "A.stk", "--set", "training.epochs=2",
             "-o", folder / "B.stk"],
            ["unfreeze", "--preset", "progressive", folder / "B.stk", "--set", "phase_c.epochs=1",
             "--set", "phase_d.epochs=1", "--set", "phase_e.epochs=1", "-o", folder / "E.stk"]]
    from stagekit.cli import main

    logs = []
    for argv in runs:
        import contextlib
        import io

        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            try:
                main([str(a) for a in argv])
            except SystemExit as exc:
                assert not exc.code, err.getvalue()
        logs.append(err.getvalue())
    return folder, logs


def test_phase_a_freezes_the_backbone_and_adds_the_new_perturbations(screen, chain):
    path, new, seen = screen
    folder, logs = chain
    tx, a = read_bundle(folder / "tx.stk"), read_bundle(folder / "A.stk")
    for name, value in tx.weights.items():
        if name.startswith(BACKBONE):
            assert np.array_equal(a.weights[name], value), name  # bit-identical
    assert not np.array_equal(a.weights["basal_encoder.0.weight"], tx.weights["basal_encoder.0.weight"])
    known = len(tx.categories["perts"])
    vocabulary = a.categories["pert_vocabulary"]
    assert vocabulary[:known] == tx.categories["perts"] and sorted(vocabulary[known:]) == sorted(new)
    assert a.weights["pert_encoder.0.weight"].shape[1] == known + 3
    report = a.records["load_report"]
    assert sorted(report["new"]) == sorted(f"pert_encoder.0.weight[{n}]" for n in new)
    assert not (report["mismatched"] or report["missing"] or report["unexpected"])
    assert "weights from" in logs[1] and "3 new (pert_encoder.0.weight[" in logs[1]
    (phase,) = a.records["phases"]
    assert phase["name"] == "frozen-backbone" and phase["frozen_before"] == phase["frozen_after"]
    assert {r["group"] for r in phase["groups"]} == {"base", "frozen"}
    frozen = next(r for r in phase["groups"] if r["group"] == "frozen")
    assert frozen["modules"] == "blocks.0, blocks.1, blocks.2, blocks.3, norm, project_out"
    loss = a.history["train_loss"]  # the head and tail learn the new perturbations (on few cells: per-epoch
    assert np.mean(loss[-5:]) < 0.9 * np.mean(loss[:5])  # losses are noisy, so means of five epochs)
    assert a.config_toml and 'decoder_weight = 0.5' in a.config_toml
    split, pert = np.asarray(a.results["split"]), np.asarray(a.results["pert"])
    held = np.isin(np.asarray(a.categories["perts"])[pert.clip(0)], new) & (pert >= 0)
    assert 0.6 < (split[held] == 2).mean() < 0.8  # few-shot: 70 % of each new target's cells held out
    # the same file as pretraining: the cells pretraining held out stay out (they measure forgetting)
    assert (split[np.asarray(tx.results["split"]) == 2] == -1).all()


def test_phase_b_continues_the_split_and_the_backbone_stays_frozen(chain):
    folder, _ = chain
    a, b = read_bundle(folder / "A.stk"), read_bundle(folder / "B.stk")
    assert np.array_equal(a.results["split"], b.results["split"]) and b.data["sha256"] == a.data["sha256"]
    assert [e["stage"] for e in b.lineage] == ["finetune", "pretrain"]
    assert all(np.array_equal(b.weights[n], v) for n, v in a.weights.items() if n.startswith(BACKBONE))
    assert b.records["load_report"]["new"] == [] and "lr = 5e-05" in b.config_toml


def test_a_continuing_phase_accepts_the_task_design_again(screen, chain, tmp_path, capsys):
    path, new, seen = screen
    folder, _ = chain
    code, _, err = run_cli(capsys, "unfreeze", folder / "B.stk", *_excluding(seen), "--test-fraction", "0.7",
                           "--set", "phase_c.epochs=1", "--set", "phase_d.epochs=1", "--set", "phase_e.epochs=1",
                           "-q", "-o", tmp_path / "E.stk")
    assert code == 0, err
    code, _, err = run_cli(capsys, "unfreeze", folder / "B.stk", "--test-fraction", "0.5", "-o", tmp_path / "x.stk")
    assert code == 2 and "drop data.test_fraction" in err, err


def test_progressive_unfreezing_tables_llrd_and_checksums(chain, capsys):
    folder, logs = chain
    e = read_bundle(folder / "E.stk")
    c, d, full = e.records["phases"]
    assert [p["name"] for p in (c, d, full)] == ["C", "D", "E"] and e.history["phase"] == [0, 1, 2]
    frozen = [next((r["modules"] for r in p["groups"] if r["group"] == "frozen"), "") for p in (c, d, full)]
    assert frozen == ["blocks.0, blocks.1", "blocks.0", ""]
    assert all(p["frozen_before"] == p["frozen_after"] for p in (c, d))
    lrs = {r["group"]: r["lr"] for r in c["groups"]}
    assert lrs["basal_encoder"] == pytest.approx(2e-4) and lrs["gene_decoder"] == pytest.approx(2e-4)
    assert lrs["blocks.3"] == pytest.approx(1e-4) and lrs["project_out"] == pytest.approx(1e-4)
    assert lrs["blocks.2"] == pytest.approx(5e-5) and "blocks.1" not in lrs
    lrs = {r["group"]: r["lr"] for r in full["groups"]}
    assert lrs["blocks.0"] == pytest.approx(1e-4 * 0.5 ** 4)
    assert "phase 1/3 'C'" in logs[3] and "blocks.3" in logs[3]  # the table before each phase, on stderr

    code, out, err = run_cli(capsys, "info", folder / "E.stk")
    assert code == 0, err
    assert "bit-identical" in out and "phase 1 'C'" in out and "weights from the parent" in out
    assert out.count("finetune") >= 2 and "pretrain" in out  # lineage E <- B <- A <- pretrain

    code, out, err = run_cli(capsys, "evaluate", folder / "E.stk", "-o", folder / "report", "--no-umap")
    assert code == 0, err
    report = json.loads(Path(out.strip()).read_text())["perturbation"]
    assert len(report["groups"]) == 3

    # forgetting: the fine-tuned model on the pretraining task's held-out cells (the seen targets)
    code, out, err = run_cli(capsys, "evaluate", folder / "E.stk", "--held-out-of", folder / "tx.stk", "-o",
                             folder / "forgetting", "--no-umap")
    assert code == 0, err
    report = json.loads(Path(out.strip()).read_text())["perturbation"]
    tx = read_bundle(folder / "tx.stk")
    assert {g["perturbation"] for g in report["groups"]} == set(tx.categories["perts"]) - {"control"}
    code, _, err = run_cli(capsys, "evaluate", folder / "tx.stk", "--held-out-of", folder / "E.stk", "-o",
                           folder / "backwards", "--no-umap")
    assert code == 2 and "does not descend from" in err, err


def test_one_phase_alone_trains_only_its_blocks(chain, tmp_path, capsys):
    folder, _ = chain
    code, _, err = run_cli(capsys, "unfreeze", "--preset", "progressive", folder / "B.stk", "--phase", "C",
                           "--set", "phase_c.epochs=1", "-q", "-o", tmp_path / "C.stk")
    assert code == 0, err
    b, c = read_bundle(folder / "B.stk"), read_bundle(tmp_path / "C.stk")
    for name, value in b.weights.items():
        same = np.array_equal(c.weights[name], value)
        if name.startswith(("blocks.0.", "blocks.1.")):
            assert same, name
        elif name.startswith(("blocks.3.", "blocks.2.")) and name.endswith("weight"):
            assert not same, name


@pytest.mark.parametrize(("args", "needle"), [
    (["unfreeze", "--set", "unfreeze.k_top=5"], "unfreeze.k_top = 5 is larger than the model's 4"),
    (["unfreeze", "--set", "unfreeze.k_middle=0"], "phase D unfreezes nothing"),
    (["unfreeze", "--preset", "full-unfreeze", "--set", "phase_c.epochs=3"],
     "phase_c.epochs is set (--set) but phase C does not run"),
    (["finetune", "--preset", "frozen-backbone-polish", "--pert-key", "guide"], "drop data.pert_key"),
    (["unfreeze", "--set", "unfreeze.phases=[\"E\", \"C\"]"], "phases C, D, E in order"),
    (["finetune", "--preset", "frozen-backbone-polish", "--set", "training.val_fraction=0.3"],
     "drop training.val_fraction"),
    (["finetune", "--preset", "frozen-backbone", "--set",
      'freeze.frozen=["blocks", "norm", "project_out", "basal_encoder", "pert_encoder", "gene_decoder"]'],
     "freezes every parameter"),
])
def test_bad_phase_settings_exit_2_and_write_nothing(chain, existing_output, capsys, args, needle):
    folder, _ = chain
    code, _, err = run_cli(capsys, *args[:1], folder / "A.stk", *args[1:], "-o", existing_output)
    assert code == 2 and needle in err and "Traceback" not in err, err
    assert existing_output.read_bytes() == b"precious"


def test_bad_parents_and_data_exit_2(screen, chain, existing_output, tmp_path, capsys):
    path, new, seen = screen
    folder, _ = chain
    code, _, err = run_cli(capsys, "unfreeze", folder / "tx.stk", path, "--phase", "E", "-o", existing_output)
    assert code == 2 and "--phase E continues a model fine-tuned with a frozen backbone" in err, err
    fewer = anndata.read_h5ad(path)[:, 40:].copy()
    fewer.write_h5ad(tmp_path / "fewer.h5ad")
    code, _, err = run_cli(capsys, "finetune", "--preset", "frozen-backbone", folder / "tx.stk",
                           tmp_path / "fewer.h5ad", "-o", existing_output)
    assert code == 2 and "fewer.h5ad" in err and "genes are missing" in err, err
    code, _, err = run_cli(capsys, "finetune", "--preset", "frozen-backbone-polish", folder / "A.stk",
                           tmp_path / "fewer.h5ad", "-o", existing_output)
    assert code == 2 and "is not the target data" in err, err
    code, _, err = run_cli(capsys, "pretrain", "--preset", "vae", path, "--set", "training.epochs=1", "-q", "-o",
                           tmp_path / "vae.stk")
    assert code == 0, err
    code, _, err = run_cli(capsys, "finetune", "--preset", "frozen-backbone", tmp_path / "vae.stk", path, "-o",
                           existing_output)
    assert code == 2 and "holds a 'vae' model" in err, err
    assert existing_output.read_bytes() == b"precious"


def test_unfreeze_resumes_mid_phase_exactly(chain, tmp_path, capsys, monkeypatch):
    """Interrupted in phase D, resumed from its .partial: the same weights and phase records as a straight run."""
    import os
    import signal

    from stagekit.stages.perturbation.task import TransitionTask

    folder, _ = chain
    args = ["unfreeze", folder / "B.stk", "--set", "phase_c.epochs=2", "--set", "phase_d.epochs=2",
            "--set", "phase_e.epochs=2", "-q"]
    assert run_cli(capsys, *args, "--keep-resume", "-o", tmp_path / "straight.stk")[0] == 0
    fired = []

    def interrupt_in_phase_d(self, model, ctx, values):
        if ctx.phase_index == 1 and ctx.epoch == 3 and not fired:  # D's second epoch
            fired.append(ctx.global_step)
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(TransitionTask, "after_optimizer_step", interrupt_in_phase_d, raising=False)
    code, _, err = run_cli(capsys, *args, "-o", tmp_path / "run.stk")
    assert code == 130 and "--resume" in err and fired, err
    monkeypatch.undo()
    code, _, err = run_cli(capsys, "unfreeze", folder / "B.stk", "--resume", tmp_path / "run.stk.partial", "-q",
                           "-o", tmp_path / "run.stk")
    assert code == 0, err
    a, b = read_bundle(tmp_path / "straight.stk"), read_bundle(tmp_path / "run.stk")
    assert all(np.array_equal(a.weights[k], b.weights[k]) for k in a.weights)
    assert [p["frozen_after"] for p in a.records["phases"]] == [p["frozen_after"] for p in b.records["phases"]]
    code, _, err = run_cli(capsys, "unfreeze", folder / "A.stk", "--resume", tmp_path / "straight.stk", "-q",
                           "-o", tmp_path / "other.stk")
    assert code == 2 and "another parent" in err, err
