"""A toy pipeline declared outside the package (through STAGEKIT_PIPELINES): a linear autoencoder of log counts."""

from __future__ import annotations

from pathlib import Path

from stagekit.config.schema import RUNTIME, TRAINING, Key
from stagekit.stages.spec import CellsRequest, Option, PhaseRequest, PhaseSpec, Report, ReportRequest

SCHEMA = {"toy": {"n_latent": Key("int", 4, "size of the code", minimum=1),
                  "layer": Key("str", "", "layer holding raw counts; empty means X")},
          "training": TRAINING, "runtime": RUNTIME}


def _train(request: PhaseRequest) -> Path | None:
    from tests.toy_pipeline.run import train

    return train(request)


def _cells(request: CellsRequest):
    from tests.toy_pipeline.run import cells

    return cells(request)


def _report(request: ReportRequest) -> Report:
    from tests.toy_pipeline.run import report

    return report(request)


PHASES = [PhaseSpec("pretrain", "toy-linear", "toy autoencoding", SCHEMA, train=_train, cells=_cells,
                    report=_report, options=(Option("code_size", "size of the code", int, key="toy.n_latent"),))]
