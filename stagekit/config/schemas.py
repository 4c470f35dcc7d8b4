"""The keys each (stage, model) accepts. A key missing here is an error, never silently ignored."""

from __future__ import annotations

from stagekit.config.schema import RUNTIME, TRAINING, Key, Schema

# SATURN pretrain and align take one batch of every species per step, so their batch size is per species
CROSS_SPECIES_TRAINING = TRAINING | {
    "batch_size": Key("int", 256, "cells of each species per optimizer step (each step takes one batch of every "
                      "species; summed over all processes)", minimum=1),
}
# pretrain only: align mines triplets across the whole batch, which a part of it cannot stand for
SATURN_PRETRAIN_TRAINING = CROSS_SPECIES_TRAINING | {
    "micro_batch_size": Key("int", 0, "cells per forward/backward pass within a step, in each process (SATURN "
                            "pretrain: of one species per pass; 0: the whole batch); the gradients of the parts add "
                            "up to the batch's: the same step (up to dropout masks and rounding) with less memory",
                            minimum=0),
}

COUNT_DATA = {
    "layer": Key("str", "", "layer holding raw counts; empty means X"),
    "batch_key": Key("str", "", "obs column of a batch covariate to condition on; empty for none"),
    "label_key": Key("str", "", "obs column of cell labels, kept for evaluation; empty for none"),
    "backed": Key("bool", False, "read cells from disk in contiguous blocks instead of loading X"),
}

VAE_MODEL = {
    "n_hidden": Key("list[int]", [128], "width of each hidden layer of encoder and decoder"),
    "n_latent": Key("int", 10, "size of the latent space", minimum=1),
    "dropout": Key("float", 0.1, "dropout rate in the encoder", minimum=0),
    "input_dropout": Key("float", 0.0, "masking noise on the encoder input during training (denoising)", minimum=0),
    "likelihood": Key("str", "nb", "nb/zinb on raw counts (scvi-tools), gaussian on standardised features",
                      choices=("nb", "zinb", "gaussian")),
    "standardize": Key("bool", True, "gaussian only: centre and scale each feature by its training mean and "
                       "standard deviation; false uses the features as given"),
    "variational": Key("bool", True, "false: a plain autoencoder (z is the encoder mean, no KL term)"),
    "beta": Key("float", 1.0, "weight of the KL term", minimum=0),
    "kl_warmup_epochs": Key("int", 0, "epochs over which the KL weight rises linearly from 0 to beta",
                            minimum=0),
}

CONTRASTIVE = {
    "weight": Key("float", 0.0, "weight of NT-Xent on positive pairs (a contrastive autoencoder); it is scaled by "
                  "the number of features so that it weighs the same against the per-feature reconstruction on "
                  "narrow and wide data; 0 off", minimum=0),
    "positive_key": Key("str", "", "obs column whose groups give positive pairs"),
    "positive_neighbours": Key("int", 0, "or: pair each cell with one of its k nearest neighbours in input space "
                               "(standardised features, or 50 principal components of log-normalised counts)",
                               minimum=0),
    "temperature": Key("float", 0.5, "NT-Xent temperature", minimum=1e-4),
}

SATURN_DATA = {
    "layer": Key("str", "", "layer holding raw counts; empty means X"),
    "species_key": Key("str", "", "obs column naming each cell's species when one file holds several species"),
    "backed": Key("bool", False, "read cells from disk in contiguous blocks (one file per species): highly "
                  "variable genes in two passes, training batches block by block"),
    "label_key": Key("str", "", "obs column of cell labels, kept for align and evaluate; empty for none"),
    "hv_genes": Key("int", 8000, "highly variable genes kept per species (seurat_v3 on counts)", minimum=1),
    "min_matched_genes": Key("int", 50, "fewest genes of a species that must have a protein embedding", minimum=1),
}

SATURN_MODEL = {
    "n_macrogenes": Key("int", 2000, "number of macrogenes (k-means centroids of protein embeddings)", minimum=1),
    "kmeans_seeding_dims": Key("int", 128, "the macrogenes' k-means++ seeding runs on this many principal "
                               "components of the gene embeddings, Lloyd's iterations on all dimensions (seeding "
                               "on all 1,280 took 30 s at 16,000 genes, M 2,000); 0 seeds on every dimension, as "
                               "the reference", minimum=0),
    "n_hidden": Key("int", 256, "width of the encoder and decoder hidden layer", minimum=1),
    "n_embed": Key("int", 256, "size of the cell embedding", minimum=1),
    "dropout": Key("float", 0.1, "dropout on macrogenes and in the encoder (training only)", minimum=0),
    "scoring": Key("str", "default", "gene -> macrogene weight from the centroid's distance rank r: "
                   "default 2 ln(1 + 1/r)^2, one_hot 1[r = 1], smoothed 1/r",
                   choices=("default", "one_hot", "smoothed")),
    "condition_on_species": Key("bool", True, "give the decoder the cell's species one-hot"),
    "lambda_l1": Key("float", 0.0, "weight of sum |W|", minimum=0),
    "lambda_pe": Key("float", 0.2, "weight of the protein-embedding similarity loss", minimum=0),
}

ALIGN = {
    "margin": Key("float", 0.2, "triplet margin (cosine distance)", minimum=0),
    "mnn": Key("bool", True, "a cell's nearest cell of another species joins its label's positives only if "
               "that cell's own nearest cross-species cell has the same label (mutual nearest neighbours)"),
    "mnn_k": Key("int", 5, "the link is confirmed when the majority label of that cell's mnn_k nearest "
                 "cross-species cells is the anchor's label (1: its single nearest, as the reference)", minimum=1),
    "neighbour_space": Key("str", "macrogenes", "where nearest cross-species cells are found: macrogenes (the "
                           "expression both species share through the protein embeddings, centred per species; "
                           "independent of what pretraining made of each species) or embedding (the cell "
                           "embedding being trained, as the reference does)", choices=("macrogenes", "embedding")),
    "balance_species": Key("bool", False, "keep the same number of triplets per anchor species each step (a "
                           "random subset), so a species that forms more triplets does not dominate the loss"),
    "unfreeze_macrogenes": Key("bool", False, "also train the gene -> macrogene weights"),
    "leiden_resolution": Key("float", 1.0, "resolution of the per-species Leiden clustering used when the data "
                             "has no labels", minimum=0),
}

CLUSTER_SEARCH = {
    "k_min": Key("int", 2, "smallest number of clusters tried", minimum=2),
    "k_max": Key("int", 20, "largest number of clusters tried", minimum=2),
    "n_init": Key("int", 10, "k-means restarts per k (the best inertia is kept)", minimum=1),
    "max_iter": Key("int", 300, "k-means iterations per restart", minimum=1),
    "selection": Key("str", "eigengap", "rule that chooses k",
                     choices=("silhouette_plateau", "silhouette", "calinski_harabasz", "davies_bouldin", "gap",
                              "eigengap", "leiden", "consensus", "mean_rank")),
    "tolerance": Key("float", 0.05, "silhouette_plateau: relative shortfall from the best silhouette still "
                     "accepted", minimum=0),
    "silhouette_sample_size": Key("int", 2000, "cells in the seeded subsample the silhouette is scored on",
                                  minimum=10),
    "gap": Key("bool", False, "also compute the gap statistic (slower)"),
    "rank_criteria": Key("list[str]", ["silhouette", "eigengap"], "mean_rank: the criteria whose ranks are "
                         "averaged (silhouette, calinski_harabasz, davies_bouldin, gap (ranked by value), "
                         "eigengap)"),
    "neighbours": Key("int", 20, "k of the nearest-neighbour graph the eigengap and Leiden rules read",
                      minimum=2),
    "leiden_resolution": Key("float", 0.8, "resolution of the Leiden rule (scDeepCluster's Louvain estimate of k "
                             "uses 0.8; larger gives more communities)", minimum=0),
    "gap_references": Key("int", 5, "uniform reference data sets for the gap statistic", minimum=1),
    "seed": Key("int", 0, "seed of k-means, the silhouette subsample and the gap references", minimum=0),
}

DEC = {
    "alpha": Key("float", 1.0, "degrees of freedom of the Student-t soft assignment", minimum=0.01),
    "gamma": Key("float", 1.0, "weight of KL(P || Q), the clustering term", minimum=0),
    "reconstruction_weight": Key("float", 1.0, "weight of the pretraining objective (reconstruction + the "
                                 "pretrain's beta * KL, per gene), which keeps the embedding from drifting",
                                 minimum=0),
    "balance": Key("float", 1.0, "target p ~ q^2 / f^balance: 1 is DEC's cluster-frequency normalisation, "
                   "0 sharpens without favouring small clusters", minimum=0),
    "update_interval": Key("int", 50, "optimizer steps between target-distribution updates", minimum=1),
    "tol": Key("float", 0.001, "stop when fewer than this fraction of cells change cluster between updates",
               minimum=0),
    "min_updates": Key("int", 3, "target updates before the stop rule may fire", minimum=1),
    "warmup_epochs": Key("int", 2, "epochs over which the clustering, contrastive and consistency weights rise "
                         "linearly", minimum=0),
    "positive_key": Key("str", "", "obs column whose groups give positive pairs (contrastive, consistency)"),
    "positive_neighbours": Key("int", 0, "or: pair each cell with one of its k nearest neighbours in the pretrain "
                               "latent; 0 off", minimum=0),
    "contrastive_weight": Key("float", 0.0, "weight of NT-Xent on positive pairs", minimum=0),
    "temperature": Key("float", 0.5, "NT-Xent temperature", minimum=1e-4),
    "consistency_weight": Key("float", 0.0, "weight pulling a positive pair's soft assignments together", minimum=0),
    "collapse_fraction": Key("float", 0.9, "stop when one cluster holds more than this fraction of cells",
                             minimum=0),
    "reseed_empty": Key("bool", False, "re-seed an emptied cluster's centre at the least confident cell "
                        "instead of stopping"),
}

LABELLED_FRACTION = Key("float", 0.01, "fraction of the labelled cells (those with a label, validation cells "
                        "set aside) whose labels training uses, drawn per class, seeded; the rest count as unlabelled",
                        minimum=1e-9)

MEAN_TEACHER_DATA = {
    "layer": Key("str", "", "layer holding raw counts; empty means X"),
    "label_key": Key("str", "", "obs column of cell labels; a missing value marks an unlabelled cell (required)"),
    "positive_class": Key("str", "", "a binary task: this label against all others; empty for one class per label"),
    "labelled_fraction": LABELLED_FRACTION,
}

CLASSIFIER_MODEL = {
    "n_hidden": Key("list[int]", [256, 64], "width of each hidden layer"),
    "dropout": Key("float", 0.2, "dropout after each hidden layer", minimum=0),
    "norm": Key("str", "batch", "batch (BatchNorm) or layer (LayerNorm, as the VAE encoder: needed with "
                "--init-from)", choices=("batch", "layer")),
}

MEAN_TEACHER = {
    "input_noise": Key("float", 0.5, "std of Gaussian noise added to the log-normalised input of student and "
                       "teacher (each its own draw): the augmentation that makes consistency informative", minimum=0),
    "input_dropout": Key("float", 0.5, "fraction of input genes zeroed at random for student and teacher "
                         "(each its own mask)", minimum=0),
    "ema_decay": Key("float", 0.999, "teacher = EMA of the student with this decay after the ramp-up", minimum=0),
    "ema_decay_rampup": Key("float", 0.99, "EMA decay during the consistency ramp-up", minimum=0),
    "ema_buffers": Key("str", "copy", "BatchNorm running statistics of the teacher: copied from the student, or "
                       "averaged like the weights", choices=("copy", "average")),
    "consistency": Key("str", "mse", "mse of class probabilities, or kl (teacher || student)", choices=("mse", "kl")),
    "consistency_weight": Key("float", 10.0, "w_max: consistency weight after the ramp-up", minimum=0),
    "rampup_epochs": Key("int", 10, "epochs of the sigmoid ramp-up w(t) = w_max exp(-5 (1 - t/T)^2)", minimum=0),
    "supervised": Key("str", "focal_dice", "supervised loss on labelled cells: focal_dice or cross_entropy",
                      choices=("focal_dice", "cross_entropy")),
    "focal_gamma": Key("float", 2.0, "focal loss gamma", minimum=0),
    "focal_alpha": Key("float", 0.0, "binary: weight of the positive class in the focal loss (negatives get "
                       "1 - alpha); 0 weighs classes by inverse frequency among the labelled cells, as multi-class "
                       "tasks always do", minimum=0, maximum=1),
    "focal_weight": Key("float", 0.7, "weight of the focal loss in focal_dice", minimum=0),
    "dice_weight": Key("float", 0.3, "weight of the soft Dice loss in focal_dice", minimum=0),
    "labelled_batch_size": Key("int", 64, "labelled cells in each step (drawn again when there are fewer), beside "
                               "training.batch_size cells of the whole training set", minimum=1),
}

COLLAPSE = {
    "min_fraction": Key("float", 0.25, "binary: stop when the predicted positive fraction falls below this times "
                        "the positive share of the labelled cells", minimum=0),
    "max_drift": Key("float", 0.25, "binary: stop when the mean predicted probability moves more than this in one "
                     "epoch", minimum=0),
    "max_share": Key("float", 0.95, "multi-class: stop when one class takes more than this share of predictions",
                     minimum=0),
    "every_steps": Key("int", 0, "also check every N optimizer steps; 0: at epoch ends only", minimum=0),
    "sample_size": Key("int", 10000, "validation and unlabelled cells the checks predict (a seeded sample)",
                       minimum=1),
}

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
}

TRANSITION_MODEL = {
    "hidden": Key("int", 128, "width of the encoders and the transformer", minimum=1),
    "n_layers": Key("int", 4, "transformer blocks over each cell set", minimum=1),
    "n_heads": Key("int", 4, "attention heads (must divide hidden)", minimum=1),
    "dropout": Key("float", 0.1, "dropout in the basal, perturbation and output MLPs", minimum=0, maximum=0.9),
    "block_dropout": Key("float", 0.0, "dropout inside the transformer blocks (0 as STATE's backbone; on CPU "
                         "dropout costs about a third of a step)", minimum=0, maximum=0.9),
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
                                               "exclude", "test_fraction")} | {
    "pert_key": Key("str", "", "obs column of the perturbation; empty: the pretrained model's"),
    "control": Key("str", "", "the control label; empty: the pretrained model's"),
    "context_key": Key("str", "", "obs column of the context; empty: the pretrained model's"),
    "batch_key": Key("str", "", "obs column of batches; empty: the pretrained model's"),
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

# segment: tiles are the mini-batches; val_fraction holds out transcripts inside nuclei (all their links)
SEGMENT_DATA = {
    "format": Key("str", "xenium", "export layout: which files and columns hold transcripts and nucleus polygons",
                  choices=("xenium", "merscope", "cosmx")),
    "min_qv": Key("float", 20.0, "drop transcripts of lower quality value (Xenium's Phred-scaled qv; formats "
                  "without one keep every transcript); 0 keeps all", minimum=0),
    "control_prefixes": Key("list[str]", ["NegControlProbe_", "NegControlCodeword", "BLANK_", "antisense_",
                                          "Unassigned", "Deprecated"],
                            "feature names starting with one of these are control probes and are dropped"),
    "region": Key("list[float]", [], "[x0, y0, x1, y1] in micron: only the transcripts in this box (e.g. a crop to "
                  "train on); empty for the whole sample"),
}

SEGMENT_GRAPH = {
    "k_tx": Key("int", 10, "transcript-transcript edges: each transcript's k nearest transcripts ...", minimum=1),
    "dist_tx": Key("float", 5.0, "... within this distance (micron)", minimum=1e-3),
    "dist_bd": Key("float", 10.0, "candidate nuclei of a transcript: those whose outline is within this distance "
                   "(micron); only they can receive it", minimum=1e-3),
    "max_tile_transcripts": Key("int", 1000, "tiles (the mini-batches) hold at most this many transcripts besides "
                                "their margin", minimum=10),
    "tile_margin": Key("float", 15.0, "each tile also holds the transcripts within this distance of its box "
                       "(micron), so cells on a tile edge see their neighbours", minimum=0),
}

SEGGER_MODEL = {
    "hidden": Key("int", 64, "width of transcript and nucleus embeddings", minimum=1),
    "layers": Key("int", 2, "GATv2 message-passing layers", minimum=1),
    "heads": Key("int", 4, "attention heads per layer (hidden must be a multiple)", minimum=1),
    "dropout": Key("float", 0.0, "attention dropout", minimum=0, maximum=1),
}

SEGMENT_LABELS = {
    "message_fraction": Key("float", 0.5, "share of the inside transcripts that carry messages into their nucleus "
                            "at each training step; the others are its labels (never both)", minimum=0.05,
                            maximum=0.95),
    "neg_ratio": Key("int", 5, "negative candidate nuclei kept per labelled transcript; 0 keeps every one",
                     minimum=0),
    "swap_geometry": Key("float", 0.2, "share of labelled transcripts whose candidate links swap their geometry "
                         "features, so the score must also learn whether the neighbourhood expresses what the "
                         "nucleus expresses; 0 off", minimum=0, maximum=1),
    "hide_nuclei": Key("float", 0.2, "share of nuclei left out of each training step, as if the stain had missed "
                       "them: their inside transcripts then have only wrong candidates, which teaches the score to "
                       "refuse a nearby nucleus whose expression does not match; 0 off", minimum=0, maximum=0.9),
    "context_noise": Key("float", 0.0, "share of the unlabelled transcripts whose gene is replaced, at each training "
                         "step, by the gene of a transcript a few kNN steps away, as where two cells touch: the "
                         "score learns to trust a transcript's own gene over a mixed neighbourhood; 0 off",
                         minimum=0, maximum=0.9),
    "vendor_weight": Key("float", 0.0, "transcripts outside every nucleus that the vendor assigned to a nucleus-"
                         "bearing cell (column cell_id) become labels too, weighted this much in the loss (weaker "
                         "evidence: 10x's ids are themselves an expansion); 0 off", minimum=0, maximum=1),
}

SEGMENT_PREDICT = {
    "score_cut": Key("float", 0.1, "a transcript joins its best candidate nucleus when the link probability is at "
                     "least this", minimum=0, maximum=1),
    "min_transcripts": Key("int", 10, "transcripts left over form new cells (connected components of the "
                           "transcript graph) of at least this many; 0 leaves them unassigned", minimum=0),
    "max_distance": Key("float", 9.0, "a transcript joins no nucleus whose outline is farther than this (micron; "
                        "candidates reach graph.dist_bd)", minimum=0),
    "farther_penalty": Key("float", 0.25, "link logits lose this much per micron a candidate's outline is farther "
                           "than the transcript's nearest candidate's", minimum=0),
    "profile_rounds": Key("int", 2, "rounds of re-scoring every link with the expression group of the cell its "
                          "nucleus has become (the sample as segmented so far); 0 off", minimum=0),
    "profile_groups": Key("int", 10, "expression groups (k-means) the cells fall into for the re-scoring: a "
                          "transcript is scored by its candidate cell's group, not by the cell's own ~100 "
                          "transcripts; more groups than cell types is harmless", minimum=1),
    "profile_weight": Key("float", 3.0, "weight in the link logit of how well a transcript's gene fits that group "
                          "(log ratio to the sample's gene frequencies, one pseudo-count)", minimum=0),
    "profile_context_weight": Key("float", 1.0, "weight of the same, averaged over the transcript's kNN "
                                  "neighbours", minimum=0),
}

SEGMENT_TRAINING = TRAINING | {
    "batch_size": Key("int", 2, "tiles per optimizer step (summed over all processes)", minimum=1),
    "val_fraction": Key("float", 0.1, "share of the transcripts inside nuclei held out: their links are the "
                        "validation set and carry no messages", minimum=0.01, maximum=0.5),
}

SCHEMAS: dict[tuple[str, str], Schema] = {
    ("pretrain", "vae"): {"data": COUNT_DATA, "model": VAE_MODEL, "contrastive": CONTRASTIVE, "training": TRAINING,
                          "runtime": RUNTIME},
    ("pretrain", "saturn"): {"data": SATURN_DATA, "model": SATURN_MODEL, "training": SATURN_PRETRAIN_TRAINING,
                             "runtime": RUNTIME},
    # align trains on every cell (triplets are mined per batch): no validation split, so no val_fraction key
    ("align", "saturn"): {"align": ALIGN,
                          "training": {k: v for k, v in CROSS_SPECIES_TRAINING.items() if k != "val_fraction"},
                          "runtime": RUNTIME},
    ("cluster-search", "kmeans"): {"cluster": CLUSTER_SEARCH},
    ("pretrain", "mean-teacher"): {"data": MEAN_TEACHER_DATA, "model": CLASSIFIER_MODEL,
                                   "mean_teacher": MEAN_TEACHER, "collapse": COLLAPSE, "training": TRAINING,
                                   "runtime": RUNTIME},
    # stage 2 continues stage 1's model, data and validation cells: the labelled fraction and the training change
    ("finetune", "mean-teacher"): {"data": {"labelled_fraction": LABELLED_FRACTION}, "mean_teacher": MEAN_TEACHER,
                                   "collapse": COLLAPSE,
                                   "training": {k: v for k, v in TRAINING.items() if k != "val_fraction"},
                                   "runtime": RUNTIME},
    ("pretrain", "transition"): {"data": TRANSITION_DATA, "model": TRANSITION_MODEL, "loss": TRANSITION_LOSS,
                                 "sets": CELL_SETS, "training": TRANSITION_TRAINING, "runtime": RUNTIME},
    ("finetune", "transition"): {"data": TARGET_DATA, "loss": TRANSITION_LOSS, "sets": CELL_SETS, "freeze": FREEZE,
                                 "training": TRANSITION_TRAINING, "runtime": RUNTIME},
    ("unfreeze", "transition"): {"data": TARGET_DATA, "loss": TRANSITION_LOSS, "sets": CELL_SETS,
                                 "unfreeze": UNFREEZE, "phase_c": unfreeze_phase(10, 2e-4),
                                 "phase_d": unfreeze_phase(10, 2e-4), "phase_e": unfreeze_phase(10, 1e-4),
                                 "training": UNFREEZE_TRAINING, "runtime": RUNTIME},
    ("segment", "segger"): {"data": SEGMENT_DATA, "graph": SEGMENT_GRAPH, "model": SEGGER_MODEL,
                            "labels": SEGMENT_LABELS, "predict": SEGMENT_PREDICT, "training": SEGMENT_TRAINING,
                            "runtime": RUNTIME},
    # DEC clusters every cell: no validation split, so no val_fraction key that would be ignored
    ("finetune", "dec"): {"dec": DEC, "training": {k: v for k, v in TRAINING.items() if k != "val_fraction"},
                          "runtime": RUNTIME},
}
