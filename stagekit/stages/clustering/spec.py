"""Phenotype clustering: `pretrain --preset vae|autoencoder` -> `cluster-search` -> `finetune --preset dec`."""

from __future__ import annotations

from pathlib import Path

from stagekit.stages.clustering import schema
from stagekit.stages.spec import CellsRequest, Option, PhaseRequest, PhaseSpec, Report, ReportRequest, Table

PIPELINE = "phenotype clustering"


def _pretrain(request: PhaseRequest) -> Path | None:
    from stagekit.stages.clustering.pretrain import run

    return run(request)


def _cluster_search(request: PhaseRequest) -> Path | None:
    from stagekit.stages.clustering.cluster_search import run

    return run(request)


def _finetune(request: PhaseRequest) -> Path | None:
    from stagekit.stages.clustering.finetune import run

    return run(request)


def _cells(request: CellsRequest):
    from stagekit.stages.clustering.cells import vae_cells

    return vae_cells(request)


def _report(request: ReportRequest) -> Report:
    from stagekit.stages.cell_report import cell_report, clustering_part
    from stagekit.stages.clustering.report import baseline_part

    return cell_report(request, _cells, [clustering_part, baseline_part])


def _score_table(bundle_path: Path) -> list[Table]:
    from stagekit.stages.clustering.cluster_search import score_table

    return [score_table(bundle_path)]


def _k(value: int) -> int:
    from stagekit.errors import UserError

    if value < 2:
        raise UserError(f"--k {value}: give at least 2 clusters")
    return value


COUNT_OPTIONS = (
    Option("layer", "layer with raw counts", key="data.layer"),
    Option("batch_key", "obs column of batches", key="data.batch_key"),
    Option("label_key", "obs column of labels, kept for evaluation", key="data.label_key"),
    Option("backed", "train from disk", bool, key="data.backed"),
)
LABELS = (Option("label_key", "obs column of the true labels"),)
COMMON = {"pipeline": PIPELINE, "cells": _cells, "report": _report, "evaluate_options": LABELS}

PHASES = [
    PhaseSpec("pretrain", "vae", schema=schema.PRETRAIN, train=_pretrain, options=COUNT_OPTIONS, **COMMON),
    PhaseSpec("cluster-search", "kmeans", schema=schema.CLUSTER, train=_cluster_search, default_preset="kmeans",
              options=(Option("k", "use this k and skip the search", int, flag="--k", convert=_k),),
              seed_key="cluster.seed", trains=False, summary=_score_table, **COMMON),
    PhaseSpec("finetune", "dec", schema=schema.FINETUNE, train=_finetune, **COMMON),
]
