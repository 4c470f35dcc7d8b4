"""Bundles written by an earlier release (tests/release_bundles) keep working, and the same commands with the same
seed still train the same weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stagekit.bundle import read_bundle
from tests.conftest import run_cli
from tests.release_bundles.commands import BUNDLES, DATA, ENV, commands

COMMANDS = commands()
# the data a bundle's cells are computed from (the stored bundles name paths on the machine that wrote them)
CELL_DATA = {"vae": [DATA / "counts.h5ad"], "kmeans": [DATA / "counts.h5ad"], "dec": [DATA / "counts.h5ad"],
             "saturn": [DATA / "human.h5ad", DATA / "mouse.h5ad"], "align": [DATA / "human.h5ad", DATA / "mouse.h5ad"],
             "mean-teacher": [DATA / "counts.h5ad"], "mean-teacher-finetune": [DATA / "counts.h5ad"],
             "transition": [DATA / "stim.h5ad"], "frozen-backbone": [DATA / "stim.h5ad"],
             "progressive": [DATA / "stim.h5ad"], "segger": [DATA / "xenium"]}
LABELS = {"vae": "cluster_id", "kmeans": "cluster_id", "dec": "cluster_id", "saturn": "Group", "align": "Group",
          "mean-teacher": "cluster_id", "mean-teacher-finetune": "cluster_id"}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_the_same_command_trains_the_same_weights(name, tmp_path):
    out = tmp_path / f"{name}.stk"
    run = subprocess.run([sys.executable, "-m", "stagekit", *COMMANDS[name], "-o", str(out)], capture_output=True,
                         text=True, env=os.environ | ENV, timeout=300)
    assert run.returncode == 0, run.stderr
    stored, again = read_bundle(BUNDLES / f"{name}.stk"), read_bundle(out)
    assert (again.stage, again.model) == (stored.stage, stored.model)
    assert sorted(again.weights) == sorted(stored.weights)
    # equal up to rounding: the CPU's vector width (AVX2 or AVX-512) changes the summation order inside torch's and
    # BLAS's kernels, so bits differ between machines (measured: at most 4e-5 of the largest weight and 2e-5 of a
    # figure); a changed split, cell order or setting moves them by far more
    scale = max(float(np.abs(v).max()) for v in stored.weights.values() if v.size and v.dtype.kind == "f")
    for key, value in stored.weights.items():
        assert again.weights[key].shape == value.shape, f"{name}: {key} changed shape"
        if value.dtype.kind == "f":
            assert np.abs(again.weights[key] - value).max(initial=0.0) <= 1e-3 * scale, f"{name}: {key} differs"
        else:
            assert np.array_equal(again.weights[key], value), f"{name}: {key} differs"
    # every figure the stored bundle has is reproduced; a newer release may add figures
    assert set(stored.final_metrics) <= set(again.final_metrics)
    for key, value in stored.final_metrics.items():
        assert again.final_metrics[key] == pytest.approx(value, rel=1e-4, abs=1e-9), f"{name}: {key} differs"


@pytest.mark.parametrize("name", list(COMMANDS))
def test_a_stored_bundle_is_shown_verified_extracted_and_evaluated(name, tmp_path, capsys):
    bundle = BUNDLES / f"{name}.stk"
    code, out, err = run_cli(capsys, "info", bundle, "--verify")
    assert code == 0 and "weights" in out, err
    cells = tmp_path / ("cells" if name == "segger" else "cells.h5ad")
    species = ["--species", "human", "--species", "mouse"] if name in ("saturn", "align") else []
    code, out, err = run_cli(capsys, "extract", bundle, *CELL_DATA[name], *species, "-o", cells, "-q")
    assert code == 0, err
    labels = ["--label-key", LABELS[name]] if name in LABELS else []
    labels += ["--no-scib"] if name in ("saturn", "align") else []  # scored in tests/cross_species
    code, out, err = run_cli(capsys, "evaluate", cells, *labels, "--no-umap", "-o", tmp_path / "report")
    assert code == 0, err
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())


def test_a_stored_bundle_seeds_transfer_and_resume(tmp_path, capsys):
    # the stored model's settings stand where the run did not choose others (the preset has hidden = 64)
    code, _, err = run_cli(capsys, "segment", DATA / "xenium", "--from", BUNDLES / "segger.stk", "-o",
                           tmp_path / "seg.stk", "--set", "training.epochs=1", "--set", "training.batch_size=2")
    assert code == 0, err
    assert "model.hidden = 16 as the --from model has it" in err
    tuned = read_bundle(tmp_path / "seg.stk")
    assert tuned.lineage[0]["stage"] == "segment" and "hidden = 16" in tuned.model_config
    code, _, err = run_cli(capsys, "segment", DATA / "xenium", "--from", BUNDLES / "segger.stk", "-o",
                           tmp_path / "other.stk", "--set", "model.hidden=32", "-q")
    assert code == 2 and "model.hidden" in err and not (tmp_path / "other.stk").exists()
    code, _, err = run_cli(capsys, "pretrain", DATA / "counts.h5ad", "--resume", BUNDLES / "vae.stk", "--set",
                           "training.epochs=4", "-o", tmp_path / "more.stk", "-q")
    assert code == 0, err
    more = read_bundle(tmp_path / "more.stk")
    assert more.epochs_done == 4 and len(more.history["train_loss"]) == 4


def test_a_parent_bundle_of_the_release_is_fine_tuned(tmp_path, capsys):
    code, _, err = run_cli(capsys, "finetune", "-p", "dec", BUNDLES / "kmeans.stk", DATA / "counts.h5ad",
                           "--set", "training.epochs=1", "-o", tmp_path / "dec.stk", "-q")
    assert code == 0, err
    assert Path(tmp_path / "dec.stk").is_file()


def test_the_cells_file_of_a_segmentation_folder_is_refused_by_name(tmp_path, capsys):
    code, _, err = run_cli(capsys, "extract", BUNDLES / "segger.stk", DATA / "xenium", "-o", tmp_path / "seg", "-q")
    assert code == 0, err
    code, _, err = run_cli(capsys, "evaluate", tmp_path / "seg" / "cells.h5ad", "-o", tmp_path / "r")
    assert code == 2 and "evaluate the folder" in err and "Traceback" not in err, err


def test_a_mean_teacher_bundle_on_genes_from_an_earlier_release_still_extracts(tmp_path, capsys):
    """Written before the classifier read principal components: its layers read the genes, and still do."""
    bundle = BUNDLES / "mean-teacher-genes-input.stk"
    assert "input" not in read_bundle(bundle).model_config
    code, _, err = run_cli(capsys, "extract", bundle, DATA / "counts.h5ad", "-o", tmp_path / "cells.h5ad", "-q")
    assert code == 0, err
    code, _, err = run_cli(capsys, "evaluate", tmp_path / "cells.h5ad", "--label-key", "cluster_id", "--no-umap",
                           "-o", tmp_path / "report", "-q")
    assert code == 0, err
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["classification"]["macro_f1"] > 0
