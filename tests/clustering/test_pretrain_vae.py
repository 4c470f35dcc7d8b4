"""`stagekit pretrain --preset vae` end to end on real PBMC counts."""

import json
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from stagekit.bundle import read_bundle
from stagekit.stages import phase as runner
from tests.conftest import run_cli, run_subprocess


def test_pretrain_learns_on_kang_pbmc(capsys, tmp_path, kang):
    out = tmp_path / "vae.stk"
    code, stdout, err = run_cli(capsys, "pretrain", "--preset", "vae", kang, "-o", out, "--label-key", "cluster_id",
                                "--set", "training.epochs=3", "--json")
    assert code == 0, err
    summary = json.loads(stdout)  # stdout is only the JSON result
    m = summary["final_metrics"]
    bundle = read_bundle(out)
    history = bundle.history
    assert history["train_loss"][-1] < 0.8 * history["train_loss"][0]
    assert history["val_reconstruction"][-1] < history["val_reconstruction"][0]
    # held-out reconstruction beats predicting each gene's mean expression
    assert m["recon_nll"] < m["baseline_nll"]
    assert m["recon_mse_ratio"] < 1.0
    assert bundle.categories["labels"] == ["B cells", "CD14+ Monocytes", "CD4 T cells", "NK cells"]
    assert bundle.data["n_obs"] == 8684 and len(bundle.var_names) == 2511
    assert not (tmp_path / "vae.stk.partial").exists()


def test_stdout_is_only_the_path(capsys, tmp_path, small_h5ad):
    out = tmp_path / "a.stk"
    code, stdout, err = run_cli(capsys, "pretrain", "-p", "vae", small_h5ad, "-o", out, "--set", "training.epochs=1")
    assert code == 0 and stdout == f"{out}\n"
    assert "epoch 1/1" in err  # progress goes to stderr


def test_same_seed_same_weights_and_backed_mode(capsys, tmp_path, small_h5ad):
    paths = []
    for name, extra in (("a", []), ("b", []), ("c", ["--backed"])):
        out = tmp_path / f"{name}.stk"
        code, _, err = run_cli(capsys, "pretrain", "-p", "vae", small_h5ad, "-o", out, "--seed", "3",
                               "--set", "training.epochs=3", "-q", *extra)
        assert code == 0, err
        paths.append(out)
    a, b, c = (read_bundle(p) for p in paths)
    assert all(np.array_equal(a.weights[k], b.weights[k]) for k in a.weights)
    assert c.history["train_loss"][-1] < c.history["train_loss"][0]  # backed: contiguous blocks from disk


def test_checkpoints_go_to_partial_file(capsys, tmp_path, small_h5ad, monkeypatch):
    written = []
    real = runner.write_bundle
    monkeypatch.setattr(runner, "write_bundle", lambda b, p: written.append((p.name, b.status)) or real(b, p))
    out = tmp_path / "a.stk"
    code, _, err = run_cli(capsys, "pretrain", "-p", "vae", small_h5ad, "-o", out, "-q",
                           "--set", "training.epochs=4", "--set", "training.checkpoint_every=2")
    assert code == 0, err
    assert written == [("a.stk.partial", "checkpoint"), ("a.stk", "complete")]
    assert not (tmp_path / "a.stk.partial").exists()


@pytest.mark.slow
def test_sigint_saves_resumable_bundle_and_resume_matches_uninterrupted(tmp_path, kang):
    args = ["pretrain", "-p", "vae", kang, "--set", "training.epochs=4", "--set", "training.early_stopping_patience=0",
            "--set", "training.val_fraction=0.05"]
    straight = run_subprocess(*args, "-o", tmp_path / "straight.stk", "-q")
    assert straight.returncode == 0, straight.stderr

    out = tmp_path / "run.stk"
    proc = subprocess.Popen([sys.executable, "-m", "stagekit", *map(str, args), "-o", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    for line in proc.stderr:  # plain progress lines, as stderr is not a terminal
        if line.startswith("epoch 1/4 ") or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGINT)
    stderr = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, stderr
    assert "--resume" in stderr and not out.exists()
    partial = tmp_path / "run.stk.partial"
    with h5py.File(partial) as f:
        assert f.attrs["status"] == "interrupted"

    resumed = run_subprocess("pretrain", kang, "--resume", partial, "-o", out, "-q")
    assert resumed.returncode == 0, resumed.stderr
    a, b = read_bundle(tmp_path / "straight.stk"), read_bundle(out)
    assert b.status == "complete" and b.epochs_done == 4
    for name in a.weights:
        np.testing.assert_array_equal(a.weights[name], b.weights[name], err_msg=name)
    assert a.history["val_loss"] == b.history["val_loss"]
    assert not partial.exists()


@pytest.mark.slow
def test_two_process_ddp_on_cpu_matches_one_process(tmp_path, small_h5ad):
    common = ["pretrain", "-p", "vae", small_h5ad, "--set", "training.epochs=6", "--set", "training.batch_size=64",
              "-q", "--json"]
    one = run_subprocess(*common, "-o", tmp_path / "one.stk")
    two = run_subprocess(*common, "-o", tmp_path / "two.stk", "--devices", "2", "--strategy", "ddp")
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("two.stk") == 1  # only the main process reports
    a, b = read_bundle(tmp_path / "one.stk"), read_bundle(tmp_path / "two.stk")
    assert "x2" in b.device and "DDP" in b.device
    assert b.history["val_loss"][-1] < 0.9 * b.history["val_loss"][0]
    assert b.history["val_loss"][-1] == pytest.approx(a.history["val_loss"][-1], rel=0.02)


def test_sigint_after_the_last_epoch_keeps_the_run(tmp_path, small_h5ad):
    """The signal lands while the final bundle is built and written: the write is finished (or the partial kept),
    and stderr says which; the run is never lost."""
    out = tmp_path / "run.stk"
    proc = subprocess.Popen([sys.executable, "-m", "stagekit", "pretrain", "-p", "vae", str(small_h5ad), "--set",
                             "training.epochs=6", "--keep-resume", "-o", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    for line in proc.stderr:
        if line.startswith("epoch 6/6 ") or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    partial = tmp_path / "run.stk.partial"
    if proc.returncode == 0:
        assert stdout.strip() == str(out)
    else:
        assert proc.returncode == 130, stderr
        assert ("is complete" in stderr and out.is_file()) or ("--resume" in stderr and partial.is_file()), stderr
    assert out.is_file() or partial.is_file()
    if out.is_file():
        assert read_bundle(out).status == "complete" and not partial.exists()


def test_gene_selection_is_stored_and_read_back_by_name(capsys, tmp_path, small_h5ad):
    """`data.n_top_genes` trains on the most variable genes; the later phases take them from the whole file."""
    import anndata

    from stagekit.data.hvg import highly_variable_genes

    out = tmp_path / "vae.stk"
    code, _, err = run_cli(capsys, "pretrain", "-p", "vae", small_h5ad, "-o", out, "--set", "data.n_top_genes=100",
                           "--set", "training.epochs=2")
    assert code == 0, err
    assert "100 of 400 genes kept" in err
    adata = anndata.read_h5ad(small_h5ad)
    expected = [adata.var_names[i] for i in highly_variable_genes(adata.X.tocsr(), 100)]
    bundle = read_bundle(out)
    assert bundle.var_names == expected and bundle.weights["encoder.0.weight"].shape[1] == 100
    code, _, err = run_cli(capsys, "cluster-search", out, "--k", "3", "-o", tmp_path / "k.stk", "-q")
    assert code == 0, err
    code, _, err = run_cli(capsys, "extract", tmp_path / "k.stk", "-o", tmp_path / "cells.h5ad")
    assert code == 0, err
    assert anndata.read_h5ad(tmp_path / "cells.h5ad").n_vars == 400  # the user's file, with the embedding added
    code, _, err = run_cli(capsys, "pretrain", "-p", "autoencoder", small_h5ad, "-o", tmp_path / "ae.stk",
                           "--set", "data.n_top_genes=100")
    assert code == 2 and "data.n_top_genes" in err and "Traceback" not in err
