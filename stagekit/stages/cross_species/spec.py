"""Cross-species integration (SATURN): `pretrain --preset saturn` -> `align`."""

from __future__ import annotations

from pathlib import Path

from stagekit.stages.cross_species import schema
from stagekit.stages.spec import CellsRequest, Demo, Option, PhaseRequest, PhaseSpec, Report, ReportRequest, Table

PIPELINE = "cross-species integration"


def _pretrain(request: PhaseRequest) -> Path | None:
    from stagekit.stages.cross_species.pretrain import run

    return run(request)


def _align(request: PhaseRequest) -> Path | None:
    from stagekit.stages.cross_species.align import run

    return run(request)


def _cells(request: CellsRequest):
    from stagekit.stages.cross_species.cells import saturn_anndata

    return saturn_anndata(request)


def _demo(output: Path, quiet: bool, log) -> tuple[Path, list[Table]]:
    from stagekit.stages.cross_species.demo import run

    return run(output, quiet, log)


def _report(request: ReportRequest) -> Report:
    from stagekit.stages.cell_report import cell_report, integration_part
    from stagekit.stages.cross_species.report import scib_part

    return cell_report(request, _cells, [integration_part, scib_part(bool(request.options.get("no_scib")))])


SPECIES = Option("species", "the species name of each data file, in order (default: the file names)", list[str])
PRETRAIN_OPTIONS = (
    Option("layer", "layer with raw counts", key="data.layer"),
    Option("label_key", "obs column of labels, kept for evaluation", key="data.label_key"),
    Option("backed", "train from disk", bool, key="data.backed"),
    Option("protein_emb", "gene embedding file per species, SPECIES=PATH or PATH in data order (.h5, .npz, .pt)",
           list[str]),
    SPECIES,
    Option("species_key", "obs column of species when one file holds several", key="data.species_key"),
    Option("macrogenes_from", "reuse the macrogene centroids of an earlier saturn pretrain bundle when computed "
           "from the same genes, embeddings, M, seed and seeding (else k-means runs)", Path),
)
COMMON = {"pipeline": PIPELINE, "cells": _cells, "report": _report, "extract_options": (SPECIES,),
          "evaluate_options": (Option("label_key", "obs column of the true labels"),
                               Option("no_scib", "skip scib-metrics' scores (its JAX metrics take a minute or more "
                                      "to compile)", bool))}

PHASES = [
    PhaseSpec("pretrain", "saturn", schema=schema.PRETRAIN, train=_pretrain, options=PRETRAIN_OPTIONS, **COMMON),
    PhaseSpec("align", "saturn", schema=schema.ALIGN_PHASE, train=_align, default_preset="align",
              options=(Option("unfreeze_macrogenes", "also train the gene -> macrogene weights", bool,
                              key="align.unfreeze_macrogenes"),), **COMMON),
]

DEMO = Demo(PIPELINE, "pretrain (saturn) -> align -> extract -> evaluate on embedded human + mouse pancreas cells "
            "(a few minutes)", _demo)
