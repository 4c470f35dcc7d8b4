"""Semi-supervised annotation (two-stage Mean Teacher): `pretrain --preset mean-teacher` -> `finetune --preset
mean-teacher`."""

from __future__ import annotations

from pathlib import Path

from stagekit.stages.mean_teacher import schema
from stagekit.stages.spec import CellsRequest, Option, PhaseRequest, PhaseSpec, Report, ReportRequest

PIPELINE = "semi-supervised annotation"


def _pretrain(request: PhaseRequest) -> Path | None:
    from stagekit.stages.mean_teacher.train import pretrain

    return pretrain(request)


def _finetune(request: PhaseRequest) -> Path | None:
    from stagekit.stages.mean_teacher.train import finetune

    return finetune(request)


def _cells(request: CellsRequest):
    from stagekit.stages.mean_teacher.cells import mean_teacher_cells

    return mean_teacher_cells(request)


def _report(request: ReportRequest) -> Report:
    from stagekit.stages.cell_report import cell_report, classification_part

    return cell_report(request, _cells, [classification_part])


LABELLED_FRACTION = Option("labelled_fraction", "fraction of the labelled cells whose labels are used", float,
                           key="data.labelled_fraction")
BACKED = Option("backed", "read the cells from disk, never loading the matrix whole", bool, key="data.backed")
PRETRAIN_OPTIONS = (
    Option("layer", "layer with raw counts", key="data.layer"),
    Option("label_key", "obs column of labels; a missing value marks an unlabelled cell", key="data.label_key"),
    LABELLED_FRACTION,
    Option("positive_class", "a binary task: this label against the rest", key="data.positive_class"),
    Option("init_from", "start the classifier from a `pretrain --preset vae` encoder", Path),
    Option("latent_from", "the classifier reads this `pretrain --preset vae` bundle's latent (its encoder, kept "
           "fixed) instead of principal components", Path, implies=(("model.input", "latent"),)),
    BACKED,
)
COMMON = {"pipeline": PIPELINE, "cells": _cells, "report": _report,
          "extract_options": (Option("backed", "read the cells from disk a block at a time; the file written holds "
                                     "obs and obsm (predictions, probabilities, embedding), not the counts", bool),),
          "evaluate_options": (Option("label_key", "obs column of the true labels"),)}

PHASES = [
    PhaseSpec("pretrain", "mean-teacher", schema=schema.PRETRAIN, train=_pretrain, options=PRETRAIN_OPTIONS,
              **COMMON),
    PhaseSpec("finetune", "mean-teacher", schema=schema.FINETUNE, train=_finetune, options=(LABELLED_FRACTION, BACKED),
              **COMMON),
]
