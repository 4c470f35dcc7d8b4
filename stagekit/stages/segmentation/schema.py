"""Config sections of the cell segmentation pipeline's phases.

A key missing here is an error, never silently ignored.
"""

from __future__ import annotations

from stagekit.config.schema import RUNTIME, TRAINING, Key, Schema

# segment: tiles are the mini-batches; val_fraction holds out transcripts inside nuclei (all their links)
SEGMENT_DATA = {
    "format": Key("str", "xenium", "export layout: which files and columns hold transcripts and the prior outlines "
                  "(nuclei for xenium; the vendor's cells for merscope and cosmx; for iss, pciSeq's spots.csv and "
                  "nucleus label image)", choices=("xenium", "merscope", "cosmx", "iss")),
    "micron_per_unit": Key("float", 0.0, "size of one coordinate unit in micron; 0 takes the format's own (micron for "
                           "xenium and merscope, 0.12028 for cosmx pixels); iss coordinates are the microscope's "
                           "pixels, so give it there", minimum=0),
    "min_qv": Key("float", 20.0, "drop transcripts of lower quality value (Xenium's Phred-scaled qv; formats "
                  "without one keep every transcript); 0 keeps all", minimum=0),
    "control_prefixes": Key("list[str]", ["NegControlProbe_", "NegControlCodeword", "BLANK_", "antisense_",
                                          "Unassigned", "Deprecated", "Blank-", "NegPrb", "SystemControl"],
                            "feature names starting with one of these are control probes and are dropped"),
    "region": Key("list[float]", [], "[x0, y0, x1, y1] in micron: only the transcripts in this box (e.g. a crop to "
                  "train on); empty for the whole sample"),
}

SEGMENT_GRAPH = {
    "k_tx": Key("int", 10, "transcript-transcript edges: each transcript links to its k nearest "
                 "transcripts within `dist_tx`", minimum=1),
    "dist_tx": Key("float", 5.0, "the largest distance of a transcript-transcript edge (micron)", minimum=1e-3),
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


SEGMENT: Schema = {"data": SEGMENT_DATA, "graph": SEGMENT_GRAPH, "model": SEGGER_MODEL, "labels": SEGMENT_LABELS,
                   "predict": SEGMENT_PREDICT, "training": SEGMENT_TRAINING, "runtime": RUNTIME}
