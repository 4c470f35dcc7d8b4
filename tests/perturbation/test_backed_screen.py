"""`pretrain --preset transition --backed` reads the screen from disk and is the same run as in memory."""

import numpy as np

from stagekit.bundle import read_bundle
from tests.conftest import run_cli, shared_file

SMALL = ["--pert-key", "perturbation", "--control", "control", "--exclude", "unassigned", "--set", "data.n_genes=200",
         "--set", "data.n_components=20", "--set", "model.hidden=32", "--set", "model.n_layers=1",
         "--set", "training.epochs=1", "-q"]


def test_backed_is_the_same_run_as_in_memory(tmp_path, capsys):
    """Papalexi's 20,729 cells (several blocks of the highly variable gene and PCA passes), one epoch with the
    gene decoder: the split, the space and every weight are bit for bit those of the in-memory run; so are a
    fine-tune's."""
    papalexi = shared_file("papalexi2021_sceptre_lowmoi.h5ad")
    bundles = {}
    for mode, extra in (("memory", []), ("backed", ["--backed"])):
        bundles[mode] = tmp_path / f"{mode}.stk"
        code, _, err = run_cli(capsys, "pretrain", "--preset", "transition", papalexi, *SMALL, *extra,
                               "-o", bundles[mode])
        assert code == 0, err
    memory, backed = read_bundle(bundles["memory"]), read_bundle(bundles["backed"])
    assert backed.config()["data"]["backed"] and not memory.config()["data"]["backed"]
    assert memory.categories["space_genes"] == backed.categories["space_genes"]
    assert len(backed.categories["space_genes"]) == 200
    for key in ("split", "space_mean", "space_components"):
        assert np.array_equal(memory.results[key], backed.results[key]), key
    assert sorted(memory.weights) == sorted(backed.weights) and any("decoder" in k for k in backed.weights)
    for key, value in memory.weights.items():
        assert np.array_equal(value, backed.weights[key]), key
    assert memory.history["train_loss"] == backed.history["train_loss"]
    # a frozen-backbone fine-tune of that model on the same screen, in memory and from disk: the same weights
    tuned = {}
    for mode, extra in (("memory", []), ("backed", ["--backed"])):
        tuned[mode] = tmp_path / f"A_{mode}.stk"
        code, _, err = run_cli(capsys, "finetune", "--preset", "frozen-backbone", bundles["memory"], papalexi,
                               "--exclude", "unassigned", "--set", "training.epochs=1", "-q", *extra,
                               "-o", tuned[mode])
        assert code == 0, err
    a, b = read_bundle(tuned["memory"]), read_bundle(tuned["backed"])
    assert b.config()["data"]["backed"] and np.array_equal(a.results["split"], b.results["split"])
    for key, value in a.weights.items():
        assert np.array_equal(value, b.weights[key]), key

