"""Config sections of the cross-species integration pipeline's phases.

A key missing here is an error, never silently ignored.
"""

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
                               "components of the gene embeddings, Lloyd's iterations on all dimensions (faster "
                               "seeding at the same centroid quality); 0 seeds on every dimension, as the reference",
                               minimum=0),
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
    "negative_search": Key("bool", False, "look for a semi-hard negative among all candidates of each anchor; "
                           "false: draw one candidate at random and keep the triplet only if it is semi-hard (the "
                           "reference's miner: fewer triplets form as the species align)"),
    "unfreeze_macrogenes": Key("bool", False, "also train the gene -> macrogene weights"),
    "leiden_resolution": Key("float", 1.0, "resolution of the per-species Leiden clustering used when the data "
                             "has no labels", minimum=0),
}


PRETRAIN: Schema = {"data": SATURN_DATA, "model": SATURN_MODEL, "training": SATURN_PRETRAIN_TRAINING,
                    "runtime": RUNTIME}
# align trains on every cell (triplets are mined per batch): no validation split, so no val_fraction key
ALIGN_PHASE: Schema = {"align": ALIGN,
                       "training": {k: v for k, v in CROSS_SPECIES_TRAINING.items() if k != "val_fraction"},
                       "runtime": RUNTIME}
