"""One bundle of every (command, model) kind, written by a fixed release from tiny inputs kept beside this file.

`make_bundles.py` writes the inputs and runs these commands once with the release they were made by; the tests
run the same commands again with the code under test (the same seed must give the same weights, up to the
rounding a different CPU brings) and read the stored bundles with `info`, `extract`, `evaluate`, `--from` and
`--resume` (older bundles must keep working).
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
BUNDLES = HERE / "bundles"

SAME = ["-q"]
# one thread (run in a process of its own): the same weights on any machine with the same torch build
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}

SATURN_FAST = ["--set", "data.hv_genes=200", "--set", "model.n_macrogenes=40", "--set", "model.n_hidden=32",
               "--set", "model.n_embed=16", "--set", "training.batch_size=64", "--set", "training.epochs=2"]
TRANSITION_FAST = ["--pert-key", "group_id", "--control", "ctrl", "--context-key", "cluster_id", "--batch-key",
                   "donor", "--set", "data.n_genes=100", "--set", "data.n_components=8", "--set", "model.hidden=16",
                   "--set", "model.n_layers=4", "--set", "training.epochs=2"]
SEGGER_FAST = ["--set", "model.hidden=16", "--set", "graph.max_tile_transcripts=800", "--set",
               "training.batch_size=2", "--set", "training.early_stopping_patience=0", "--set", "training.epochs=2"]


def commands(data: Path = DATA, bundles: Path = BUNDLES) -> dict[str, list[str]]:
    """name -> `stagekit` arguments (without -o); names are the bundle file stems, in the order to run."""
    counts, stim = data / "counts.h5ad", data / "stim.h5ad"
    saturn_inputs = [data / "human.h5ad", data / "mouse.h5ad", "--protein-emb", data / "human_embeddings.npz",
                     "--protein-emb", data / "mouse_embeddings.npz", "--label-key", "Group"]
    return {name: [str(a) for a in args] + SAME for name, args in {
        "vae": ["pretrain", "-p", "vae", counts, "--label-key", "cluster_id", "--batch-key", "sample_id",
                "--set", "training.epochs=3", "--set", "model.n_hidden=[32]", "--keep-resume"],
        "kmeans": ["cluster-search", bundles / "vae.stk", "--set", "cluster.k_max=5"],
        "dec": ["finetune", "-p", "dec", bundles / "kmeans.stk", "--set", "training.epochs=2"],
        "saturn": ["pretrain", "-p", "saturn", *saturn_inputs, *SATURN_FAST],
        "align": ["align", bundles / "saturn.stk", "--set", "training.epochs=2", "--set", "training.batch_size=64"],
        "mean-teacher": ["pretrain", "-p", "mean-teacher", counts, "--label-key", "cluster_id",
                         "--labelled-fraction", "0.2", "--set", "training.epochs=2", "--set", "model.n_hidden=[32,16]"],
        "mean-teacher-finetune": ["finetune", "-p", "mean-teacher", bundles / "mean-teacher.stk",
                                  "--labelled-fraction", "0.5", "--set", "training.epochs=2"],
        "transition": ["pretrain", "-p", "transition", stim, *TRANSITION_FAST, "--holdout-contexts", "B cells"],
        "frozen-backbone": ["finetune", "-p", "frozen-backbone", bundles / "transition.stk", stim, "--set",
                            "training.epochs=2"],
        "progressive": ["unfreeze", bundles / "frozen-backbone.stk", stim, "--set", "phase_c.epochs=1", "--set",
                        "phase_d.epochs=1", "--set", "phase_e.epochs=1"],
        "segger": ["segment", "-p", "segger", data / "xenium", *SEGGER_FAST],
    }.items()}
