"""Config sections of the perturbation transfer pipeline's phases.

A key missing here is an error, never silently ignored.
"""

from __future__ import annotations

from stagekit.config.schema import RUNTIME, TRAINING, Key, Schema

TRANSITION_DATA = {
    "layer": Key("str", "", "layer holding raw counts; empty means X"),
    "pert_key": Key("str", "", "obs column of the perturbation (required)"),
    "control": Key("str", "", "the control label in pert_key (required)"),
    "context_key": Key("str", "", "obs column of the context (cell type, cell line); empty: one context"),
    "batch_key": Key("str", "", "obs column of batches; controls are paired within context and batch"),
    "exclude": Key("list[str]", [], "perturbation labels whose cells are left out (e.g. unassigned)"),
    "n_genes": Key("int", 2000, "highly variable genes (seurat_v3 on the training cells' counts): the gene space",
                   minimum=1),
    "n_components": Key("int", 50, "principal components of the log-normalised genes the model works in (fitted on "
                        "the training cells); 0: the log-normalised genes themselves", minimum=0),
    "test_fraction": Key("float", 0.2, "held-out cells of every perturbation and of the controls, per context",
                         minimum=0, maximum=0.9),
    "holdout_contexts": Key("list[str]", [], "contexts whose perturbed cells are all held out (zero-shot)"),
    "holdout_perts": Key("list[str]", [], "perturbations whose cells are all held out (needs perturbation "
                         "features)"),
    "embed_key": Key("str", "", "obsm key of an embedding the data already hold (STATE's X_state, an scVI "
                     "latent): the model works in it instead of the PCA, data.n_components is unused, and the gene "
                     "decoder (when the data hold counts) maps it to the highly variable genes; empty: the PCA"),
    "backed": Key("bool", False, "read counts from disk (one .h5ad or several) instead of loading them: genes and "
                  "principal "
                  "components from blocks of cells, each step's decoder targets read for its cells; only the "
                  "cells' labels and embedding stay in memory. The same run as in memory"),
}

TRANSITION_MODEL = {
    "hidden": Key("int", 128, "width of the encoders and the transformer", minimum=1),
    "n_layers": Key("int", 4, "transformer blocks over each cell set", minimum=1),
    "n_heads": Key("int", 4, "attention heads (must divide hidden)", minimum=1),
    "dropout": Key("float", 0.1, "dropout in the basal, perturbation and output MLPs", minimum=0, maximum=0.9),
    "block_dropout": Key("float", 0.0, "dropout inside the transformer blocks (0 as STATE's backbone; it adds "
                         "noticeably to the time of a CPU step)", minimum=0, maximum=0.9),
    "predict_residual": Key("bool", True, "predict the change from each control cell (add the basal input)"),
}

TRANSITION_LOSS = {
    "kind": Key("str", "energy", "distance between predicted and observed sets: energy or sinkhorn (geomloss), "
                "or mse (cell by cell)", choices=("energy", "sinkhorn", "mse")),
    "decoder_weight": Key("float", 0.1, "weight of the same distance in gene space through a gene decoder "
                          "(embedding -> genes); 0: no decoder. Needs data.n_components > 0", minimum=0),
    "blur": Key("float", 0.05, "sinkhorn: the entropic blur (length scale) of the divergence", minimum=1e-6),
}

CELL_SETS = {
    "cell_set_len": Key("int", 32, "cells per set (perturbed cells and as many paired controls)", minimum=2),
}

TRANSITION_TRAINING = TRAINING | {
    "batch_size": Key("int", 16, "cell sets per optimizer step (summed over all processes)", minimum=1),
}

# the target screen of a fine-tuning phase; empty keys take the parent's design, and a phase that continues
# another fine-tuning phase keeps its split (the keys must then be left as they are or equal the parent's)
TARGET_DATA = {k: TRANSITION_DATA[k] for k in ("layer", "pert_key", "control", "context_key", "batch_key",
                                               "exclude", "test_fraction", "backed", "embed_key")} | {
    "pert_key": Key("str", "", "obs column of the perturbation; empty: the pretrained model's"),
    "control": Key("str", "", "the control label; empty: the pretrained model's"),
    "context_key": Key("str", "", "obs column of the context; empty: the pretrained model's"),
    "batch_key": Key("str", "", "obs column of batches; empty: the pretrained model's"),
    "embed_key": Key("str", "", "obsm key of the target's embedding (the same kind and width as the pretrained "
                     "model's); empty: the pretrained model's key"),
    "test_fraction": Key("float", 0.2, "held-out cells of every target group (perturbation, context); the rest is "
                         "the few-shot training data", minimum=0, maximum=0.9),
}

FREEZE = {
    "frozen": Key("list[str]", ["blocks", "norm", "project_out"], "module prefixes kept frozen (the transformer "
                  "blocks, the final norm and project_out: the backbone); the rest (basal and perturbation "
                  "encoders, gene decoder) trains"),
}

UNFREEZE = {
    "phases": Key("list[str]", ["C", "D", "E"], "phases run in order: C unfreezes the top k_top blocks (with the "
                  "final norm and project_out), D also the k_middle blocks below them, E every block"),
    "k_top": Key("int", 2, "blocks unfrozen in phase C, from the top", minimum=1),
    "k_middle": Key("int", 1, "further blocks unfrozen in phase D", minimum=0),
    "layer_decay": Key("float", 0.5, "layer-wise lr decay (timm/BEiT rule): the encoders and decoder train at the "
                       "phase's lr, the top block (and norm, project_out) at lr x layer_decay, each block below at "
                       "layer_decay times the one above", minimum=0, maximum=1),
}


def unfreeze_phase(epochs: int, lr: float) -> dict[str, Key]:
    return {"epochs": Key("int", epochs, "epochs of the phase", minimum=1),
            "lr": Key("float", lr, "lr of the encoders and decoder; blocks get less (unfreeze.layer_decay)",
                      minimum=0),
            "warmup_ratio": Key("float", 0.05, "linear warm-up over this fraction of the phase's steps",
                                minimum=0, maximum=1),
            "min_lr_ratio": Key("float", 0.1, "cosine decay to this fraction of the lr by the phase's end",
                                minimum=0, maximum=1)}


# each phase of `unfreeze` has its own epochs, lr and schedule: the training section holds the rest
UNFREEZE_TRAINING = {k: v for k, v in TRANSITION_TRAINING.items()
                     if k not in ("epochs", "lr", "scheduler", "warmup_ratio", "min_lr_ratio")}


PRETRAIN: Schema = {"data": TRANSITION_DATA, "model": TRANSITION_MODEL, "loss": TRANSITION_LOSS, "sets": CELL_SETS,
                    "training": TRANSITION_TRAINING, "runtime": RUNTIME}
FINETUNE: Schema = {"data": TARGET_DATA, "loss": TRANSITION_LOSS, "sets": CELL_SETS, "freeze": FREEZE,
                    "training": TRANSITION_TRAINING, "runtime": RUNTIME}
UNFREEZE_PHASE: Schema = {"data": TARGET_DATA, "loss": TRANSITION_LOSS, "sets": CELL_SETS, "unfreeze": UNFREEZE,
                          "phase_c": unfreeze_phase(10, 2e-4), "phase_d": unfreeze_phase(10, 2e-4),
                          "phase_e": unfreeze_phase(10, 1e-4), "training": UNFREEZE_TRAINING, "runtime": RUNTIME}
