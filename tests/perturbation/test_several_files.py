"""Several .h5ad files train as one screen: the genes matched by name, a cell-load dataset name picks a file, the
bundle records every file, and extract reads them again (in their order, or exits 2)."""

from __future__ import annotations

import anndata
import numpy as np
import pytest

from stagekit.bundle import read_bundle
from stagekit.stages.perturbation.screen import TEST, TRAIN
from tests.conftest import run_cli

TINY = ["--set", "data.n_genes=50", "--set", "data.n_components=5", "--set", "model.hidden=16",
        "--set", "model.n_heads=2", "--set", "model.n_layers=1", "--set", "sets.cell_set_len=8",
        "--set", "training.epochs=1", "-q"]
DESIGN = ["--pert-key", "group_id", "--control", "ctrl", "--context-key", "cluster_id"]


@pytest.fixture(scope="module")
def two_files(stim_h5ad, tmp_path_factory):
    """600 real cells in two files with the same names (barcodes repeat across samples); the second file holds
    the genes in another order."""
    adata = anndata.read_h5ad(stim_h5ad)
    adata = adata[np.random.default_rng(0).choice(adata.n_obs, 600, replace=False), :300].copy()
    adata.obs_names = [f"cell{i % 300}" for i in range(adata.n_obs)]
    folder = tmp_path_factory.mktemp("screens")
    first, second = adata[:300].copy(), adata[300:].copy()
    second = second[:, second.var_names[::-1]].copy()
    first.write_h5ad(folder / "plate1.h5ad")
    second.write_h5ad(folder / "plate2.h5ad")
    return folder / "plate1.h5ad", folder / "plate2.h5ad", adata


def test_two_files_train_as_one_screen_and_a_dataset_name_picks_a_file(two_files, tmp_path, capsys):
    first, second, adata = two_files
    toml = tmp_path / "split.toml"
    toml.write_text('[zeroshot]\n"plate2.CD14+ Monocytes" = "test"\n')
    out = tmp_path / "tx.stk"
    code, _, err = run_cli(capsys, "pretrain", "--preset", "transition", first, second, *DESIGN, "--split-toml",
                           toml, "--test-fraction", "0", "-o", out, *TINY)
    assert code == 0, err
    b = read_bundle(out)
    assert b.data["n_obs"] == 600 and b.data["files"].split("\n") == [str(first.resolve()), str(second.resolve())]
    assert b.data["files_n_obs"].split("\n") == ["300", "300"]
    split, pert, context = (np.asarray(b.results[k]) for k in ("split", "pert", "context"))
    mono_stim = (context == b.categories["contexts"].index("CD14+ Monocytes")) & (
        pert == b.categories["perts"].index("stim"))
    plate2 = np.arange(600) >= 300
    assert mono_stim[plate2].sum() > 5 and (split[mono_stim & plate2] == TEST).all()
    assert (split[mono_stim & ~plate2] == TRAIN).mean() > 0.8  # the same context in the other file trains
    assert (split[~(mono_stim & plate2)] != TEST).all()

    code, out_text, err = run_cli(capsys, "info", out)
    assert code == 0 and "plate1.h5ad + " in out_text and "plate2.h5ad" in out_text, err
    code, _, err = run_cli(capsys, "extract", out, "-o", tmp_path / "pred.h5ad")  # reads both files again
    assert code == 0, err
    pred = anndata.read_h5ad(tmp_path / "pred.h5ad")
    observed = pred.obs[pred.obs["stagekit_source"] == "observed"]
    assert len(observed) == (mono_stim & plate2).sum() and observed["stagekit_cell"].str.startswith("plate2:").all()
    # the same cells in the expression of the file they came from (genes matched by name, not position)
    row = int(observed["stagekit_row"].iloc[0])
    cell = adata[row]
    gene = pred.var_names[0]
    expected = np.log1p(1e4 * cell[:, gene].X.toarray().item() / cell.X.sum())
    assert np.isclose(pred[observed.index[0], gene].X.item(), expected, rtol=1e-4)

    code, _, err = run_cli(capsys, "extract", out, second, first, "-o", tmp_path / "swapped.h5ad")
    assert code == 2 and "is not the data" in err and "in their order" in err, err
    assert not (tmp_path / "swapped.h5ad").exists()


def test_several_files_streamed_are_the_same_run_as_in_memory(two_files, tmp_path, capsys):
    """--backed over two files (the second's genes in another order): the same split and weights as in memory,
    and extract --backed writes the same cells."""
    first, second, _ = two_files
    runs = {}
    for mode, extra in (("memory", []), ("backed", ["--backed"])):
        runs[mode] = tmp_path / f"{mode}.stk"
        code, _, err = run_cli(capsys, "pretrain", "--preset", "transition", first, second, *DESIGN, *extra,
                               "-o", runs[mode], *TINY)
        assert code == 0, err
    memory, backed = read_bundle(runs["memory"]), read_bundle(runs["backed"])
    assert backed.data["files"] == memory.data["files"]
    for key in ("split", "space_mean", "space_components"):
        assert np.array_equal(memory.results[key], backed.results[key]), key
    for key, value in memory.weights.items():
        assert np.array_equal(value, backed.weights[key]), key
    cells = {}
    for mode, extra in (("memory", []), ("backed", ["--backed"])):
        code, _, err = run_cli(capsys, "extract", runs["memory"], *extra, "-o", tmp_path / f"{mode}.h5ad", "-q")
        assert code == 0, err
        cells[mode] = anndata.read_h5ad(tmp_path / f"{mode}.h5ad")
    assert list(cells["memory"].obs_names) == list(cells["backed"].obs_names)
    assert np.allclose(cells["memory"].X, cells["backed"].X.toarray(), atol=1e-5)


def test_files_with_other_genes_or_an_unknown_dataset_exit_2(two_files, tmp_path, capsys):
    first, second, _ = two_files
    fewer = anndata.read_h5ad(second)[:, 1:].copy()
    fewer.write_h5ad(tmp_path / "fewer.h5ad")
    out = tmp_path / "tx.stk"
    code, _, err = run_cli(capsys, "pretrain", "--preset", "transition", first, tmp_path / "fewer.h5ad", *DESIGN,
                           "-o", out, *TINY)
    assert code == 2 and "fewer.h5ad: genes differ" in err and "1 missing" in err, err
    toml = tmp_path / "split.toml"
    toml.write_text('[zeroshot]\n"plate3.CD14+ Monocytes" = "test"\n')
    code, _, err = run_cli(capsys, "pretrain", "--preset", "transition", first, second, *DESIGN, "--split-toml",
                           toml, "-o", out, *TINY)
    assert code == 2 and "dataset 'plate3'" in err and "plate1, plate2" in err, err
    toml.write_text(f'[datasets]\nscreen = "{second.parent}"\n[zeroshot]\n"screen.CD14+ Monocytes" = "test"\n')
    code, _, err = run_cli(capsys, "pretrain", "--preset", "transition", first, second, *DESIGN, "--split-toml",
                           toml, "-o", out, *TINY)  # a [datasets] folder holds both files
    assert code == 0, err


def test_a_full_disk_during_extract_backed_is_one_line_and_leaves_the_output_as_it_was(two_files, tmp_path, capsys,
                                                                                         monkeypatch):
    import errno

    from stagekit.data.h5ad_stream import StreamedH5ad

    first, second, _ = two_files
    bundle = tmp_path / "tx.stk"
    code, _, err = run_cli(capsys, "pretrain", "--preset", "transition", first, second, *DESIGN, "-o", bundle, *TINY)
    assert code == 0, err
    output = tmp_path / "pred.h5ad"
    output.write_bytes(b"an earlier result")

    def full(self, block):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(StreamedH5ad, "append", full)
    code, _, err = run_cli(capsys, "extract", bundle, "--backed", "-o", output)
    assert code == 2 and "no space left on the device" in err and len(err.strip().splitlines()) == 1, err
    assert output.read_bytes() == b"an earlier result"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
