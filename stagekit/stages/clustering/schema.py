"""Config sections of the phenotype clustering pipeline's phases.

A key missing here is an error, never silently ignored.
"""

from __future__ import annotations

from stagekit.config.schema import RUNTIME, TRAINING, Key, Schema

COUNT_DATA = {
    "layer": Key("str", "", "layer holding raw counts; empty means X"),
    "batch_key": Key("str", "", "obs column of a batch covariate to condition on; empty for none"),
    "label_key": Key("str", "", "obs column of cell labels, kept for evaluation; empty for none"),
    "backed": Key("bool", False, "read cells from disk in contiguous blocks instead of loading X"),
    "n_top_genes": Key("int", 0, "train on the N most variable genes (seurat_v3 on the raw counts of every cell; "
                       "count likelihoods only); later phases take these genes from the file by name. 0 keeps all",
                       minimum=0),
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
    "positive_neighbours": Key("int", 0, "instead of positive_key, pair each cell with one of its k nearest "
                               "neighbours in input space (standardised features, or 50 principal "
                               "components of log-normalised counts)",
                               minimum=0),
    "temperature": Key("float", 0.5, "NT-Xent temperature", minimum=1e-4),
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
    "baselines": Key("bool", True, "also cluster 50 principal components of the log-normalised counts (k-means at "
                     "each k, scanpy's default Leiden) and report how far the latent's clustering agrees with them"),
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
    "positive_neighbours": Key("int", 0, "instead of positive_key, pair each cell with one of its k nearest "
                               "neighbours in the pretrain latent; 0 off", minimum=0),
    "contrastive_weight": Key("float", 0.0, "weight of NT-Xent on positive pairs", minimum=0),
    "temperature": Key("float", 0.5, "NT-Xent temperature", minimum=1e-4),
    "consistency_weight": Key("float", 0.0, "weight pulling a positive pair's soft assignments together", minimum=0),
    "collapse_fraction": Key("float", 0.9, "stop when one cluster holds more than this fraction of cells",
                             minimum=0),
    "reseed_empty": Key("bool", False, "re-seed an emptied cluster's centre at the least confident cell "
                        "instead of stopping"),
}

PRETRAIN: Schema = {"data": COUNT_DATA, "model": VAE_MODEL, "contrastive": CONTRASTIVE, "training": TRAINING,
                    "runtime": RUNTIME}
CLUSTER: Schema = {"cluster": CLUSTER_SEARCH}
# DEC clusters every cell: no validation split, so no val_fraction key that would be ignored
FINETUNE: Schema = {"dec": DEC, "training": {k: v for k, v in TRAINING.items() if k != "val_fraction"},
                    "runtime": RUNTIME}
