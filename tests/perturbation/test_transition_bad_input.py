"""Bad input to the perturbation pipeline: one line naming the column, value or file, exit 2, nothing written
(an existing output is left as it was)."""

from __future__ import annotations

from pathlib import Path

import anndata
import numpy as np
import pytest

from tests.conftest import run_cli


@pytest.fixture(scope="module")
def screen_h5ad(stim_h5ad, tmp_path_factory) -> Path:
    """300 real cells x 200 genes of the IFN-beta data; one cell relabelled as a perturbation of its own."""
    adata = anndata.read_h5ad(stim_h5ad)
    adata = adata[np.random.default_rng(0).choice(adata.n_obs, 300, replace=False), :200].copy()
    adata.obs["group_id"] = adata.obs["group_id"].astype(str)
    adata.obs["lonely"] = adata.obs["group_id"].to_numpy()
    adata.obs.iloc[0, adata.obs.columns.get_loc("lonely")] = "drugX"
    path = tmp_path_factory.mktemp("screen") / "screen.h5ad"
    adata.write_h5ad(path)
    return path


def _pretrain(capsys, data, out, *extra):
    return run_cli(capsys, "pretrain", "--preset", "transition", data, "-o", out, "--set", "training.epochs=1",
                   *extra)


BASE = ("--pert-key", "group_id", "--control", "ctrl", "--context-key", "cluster_id")


@pytest.mark.parametrize(("extra", "needles"), [
    (("--pert-key", "condition", "--control", "ctrl"), ["obs column 'condition'", "--pert-key"]),
    (("--pert-key", "group_id", "--control", "ctrl", "--context-key", "celltype"), ["obs column 'celltype'"]),
    (("--pert-key", "group_id", "--control", "control"), ["control label 'control'", "values: ctrl, stim"]),
    ((*BASE, "--holdout-contexts", "NK cells"), ["--holdout-contexts 'NK cells'", "contexts: B cells"]),
    ((*BASE, "--holdout-perts", "IL2", "--pert-features", "x.npz"), ["--holdout-perts 'IL2'"]),
    ((*BASE, "--holdout-perts", "stim"), ["--holdout-perts needs --pert-features", "finetune"]),
    ((*BASE, "--holdout-contexts", "B cells,CD14+ Monocytes,CD4 T cells,CD8 T cells,FCGR3A+ Monocytes"),
     ["every context is held out"]),
    (("--pert-key", "lonely", "--control", "ctrl", "--context-key", "cluster_id"),
     ["'drugX'", "1 cell", "--exclude"]),
    ((*BASE, "--exclude", "unassigned"), ["--exclude 'unassigned'"]),
    ((*BASE, "--exclude", "ctrl"), ["--exclude 'ctrl' is the control label"]),
    ((*BASE, "--set", "data.n_components=0"), ["loss.decoder_weight", "n_components"]),
])
def test_bad_screen_exits_2_and_writes_nothing(capsys, screen_h5ad, existing_output, extra, needles):
    code, out, err = _pretrain(capsys, screen_h5ad, existing_output, *extra)
    assert code == 2, err
    assert out == "" and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    assert existing_output.read_bytes() == b"precious"
    assert not existing_output.with_name(existing_output.name + ".partial").exists()


def test_non_count_data_and_missing_features(capsys, screen_h5ad, existing_output, tmp_path):
    adata = anndata.read_h5ad(screen_h5ad)
    adata.X = adata.X.astype(np.float32) * 0.5
    adata.write_h5ad(tmp_path / "normalised.h5ad")
    code, out, err = _pretrain(capsys, tmp_path / "normalised.h5ad", existing_output, *BASE)
    assert code == 2 and "non-integer values" in err and "raw counts" in err, err
    np.savez(tmp_path / "features.npz", genes=np.array(["IL2"]), embeddings=np.ones((1, 4), np.float32))
    code, out, err = _pretrain(capsys, screen_h5ad, existing_output, *BASE, "--pert-features",
                               tmp_path / "features.npz")
    assert code == 2 and "no features for perturbation 'stim'" in err and "features.npz" in err, err
    assert existing_output.read_bytes() == b"precious"


def test_cell_load_split_toml(capsys, screen_h5ad, tmp_path):
    """A STATE user's cell-load TOML: a zero-shot context and a few-shot held-out perturbation per context."""
    from stagekit.bundle import read_bundle
    from stagekit.stages.perturbation.screen import TEST

    toml = tmp_path / "split.toml"
    toml.write_text('[datasets]\nkang = "stim.h5ad"\n[training]\nkang = "train"\n'
                    '[zeroshot]\n"kang.CD14+ Monocytes" = "test"\n')
    out = tmp_path / "tx.stk"
    code, _, err = _pretrain(capsys, screen_h5ad, out, *BASE, "--split-toml", toml, "--set", "data.n_genes=50",
                             "--set", "data.n_components=5", "--set", "model.hidden=16", "--set", "model.n_heads=2",
                             "--set", "model.n_layers=1", "--set", "sets.cell_set_len=8", "-q")
    assert code == 0, err
    b = read_bundle(out)
    mono = b.categories["contexts"].index("CD14+ Monocytes")
    stim = b.categories["perts"].index("stim")
    split, pert, context = (np.asarray(b.results[k]) for k in ("split", "pert", "context"))
    assert (split[(context == mono) & (pert == stim)] == TEST).all()
    toml.write_text('[zeroshot]\n"kang.NK cells" = "test"\n')
    code, _, err = _pretrain(capsys, screen_h5ad, tmp_path / "y.stk", *BASE, "--split-toml", toml)
    assert code == 2 and "context 'NK cells'" in err and "split.toml" in err, err
    toml.write_text('[fewshot."kang.B cells"]\ntest = ["IL2"]\n')
    code, _, err = _pretrain(capsys, screen_h5ad, tmp_path / "y.stk", *BASE, "--split-toml", toml)
    assert code == 2 and "'IL2' is not in the data" in err, err
    for malformed, needle in (('zeroshot = "x"\n', "must be tables"),
                              ('[fewshot]\n"kang.B cells" = "stim"\n', "must be a table with val"),
                              ('[fewshot."kang.B cells"]\ntest = "stim"\n', "must be a list")):
        toml.write_text(malformed)
        code, out, err = _pretrain(capsys, screen_h5ad, tmp_path / "y.stk", *BASE, "--split-toml", toml)
        assert code == 2 and needle in err and "Traceback" not in err, err
    assert not (tmp_path / "y.stk").exists()
