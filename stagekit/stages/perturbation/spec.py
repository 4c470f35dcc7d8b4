"""Perturbation transfer (a STATE-style transition model): `pretrain --preset transition` -> `finetune --preset
frozen-backbone[-polish]` -> `unfreeze --preset progressive|full-unfreeze`."""

from __future__ import annotations

from pathlib import Path

from stagekit.errors import UserError
from stagekit.stages.perturbation import schema
from stagekit.stages.spec import CellsRequest, Option, PhaseRequest, PhaseSpec, Report, ReportRequest

PIPELINE = "perturbation transfer"


def _pretrain(request: PhaseRequest) -> Path | None:
    from stagekit.stages.perturbation.pretrain import run

    return run(request)


def _transfer(request: PhaseRequest) -> Path | None:
    from stagekit.stages.perturbation.transfer import run

    return run(request)


def _plan(request: PhaseRequest) -> None:
    from stagekit.stages.perturbation.transfer import print_plan

    print_plan(request)


def _cells(request: CellsRequest):
    from stagekit.stages.perturbation.cells import transition_cells

    return transition_cells(request)


def _stream(request: CellsRequest, path: Path, provenance: dict) -> bool:
    from stagekit.stages.perturbation.cells import stream_held_out

    return stream_held_out(request, path, provenance)


def _companions(request: CellsRequest, adata, output: Path) -> list[Path]:
    from stagekit.stages.perturbation.report import write_cell_eval_pairs

    return write_cell_eval_pairs(adata, output.with_suffix(".cell-eval"))


def _report(request: ReportRequest) -> Report:
    from stagekit.stages.perturbation.report import report

    return report(request, _cells)


def _names(text: str) -> list[str]:
    """"A,B" -> ["A", "B"] (names may hold spaces: "B cells,T cells")."""
    return [name.strip() for name in text.split(",") if name.strip()]


def _phases(phase: str) -> list[str]:
    if phase not in ("C", "D", "E"):
        raise UserError(f"--phase {phase}: one of C, D, E")
    return [phase]


DESIGN = (
    Option("pert_key", "obs column of the perturbation", key="data.pert_key"),
    Option("control", "the control label", key="data.control"),
    Option("context_key", "obs column of the cell type / cell line", key="data.context_key"),
    Option("batch_key", "obs column of batches", key="data.batch_key"),
    Option("layer", "layer with raw counts", key="data.layer"),
    Option("embed_key", "work in this obsm embedding (e.g. X_state) instead of the PCA", key="data.embed_key"),
    Option("exclude", "leave out cells with this perturbation label, e.g. unassigned (repeatable)", list[str],
           key="data.exclude"),
)
PRETRAIN_OPTIONS = DESIGN + (
    Option("test_fraction", "held-out cells of every perturbation", float, key="data.test_fraction"),
    Option("holdout_contexts", "hold out every perturbed cell of these contexts, A,B (zero-shot)",
           key="data.holdout_contexts", convert=_names),
    Option("holdout_perts", "hold out these perturbations, A,B (needs --pert-features)", key="data.holdout_perts",
           convert=_names),
    Option("pert_features", "perturbation name -> feature vector (.h5, .npz, .pt)", Path),
    Option("split_toml", "a cell-load data TOML (its zeroshot and fewshot tables) stating the split", Path),
    Option("backed", "train from disk: counts are read in blocks, never loaded whole", bool, key="data.backed"),
)
TARGET_OPTIONS = (
    Option("pert_key", "obs column of the perturbation in the target data; default: the pretrained model's",
           key="data.pert_key"),
    Option("control", "the control label; default: the pretrained model's", key="data.control"),
    Option("context_key", "obs column of the context; default: the pretrained model's", key="data.context_key"),
    Option("batch_key", "obs column of batches; default: the pretrained model's", key="data.batch_key"),
    *DESIGN[4:],
    Option("test_fraction", "held-out cells of every target group; the rest is the few-shot training data", float,
           key="data.test_fraction"),
    Option("allow_partial", "train even when weights of the parent are mismatched, missing or unexpected", bool),
    Option("backed", "train from disk: counts are read in blocks, never loaded whole", bool, key="data.backed"),
)
GROUP = Option("group", "only this held-out group, PERTURBATION/CONTEXT (e.g. \"stim/CD14+ Monocytes\")")
BACKED = Option("backed", "read the screen from disk a context at a time (.h5ad files larger than memory); "
                "extract writes its file as it goes", bool)
COMMON = {"pipeline": PIPELINE, "cells": _cells, "stream_cells": _stream, "companions": _companions,
          "report": _report,
          "extract_options": (
              Option("pert", "predict this perturbation for every cell of DATA (control cells)"),
              Option("held_out_of", "predict the held-out cells of this ancestor bundle instead (e.g. the "
                     "pretraining task after fine-tuning: forgetting)", Path), GROUP, BACKED),
          "evaluate_options": (
              Option("held_out_of", "score the model on the held-out cells of this ancestor bundle (e.g. the "
                     "pretraining task after fine-tuning: forgetting)", Path), GROUP,
              BACKED, Option("no_cell_eval", "skip cell-eval's scores (its differential-expression tests take "
                             "minutes on screens of many groups)", bool))}

PHASES = [
    PhaseSpec("pretrain", "transition", schema=schema.PRETRAIN, train=_pretrain, options=PRETRAIN_OPTIONS, **COMMON),
    PhaseSpec("finetune", "transition", schema=schema.FINETUNE, train=_transfer, plan=_plan, options=TARGET_OPTIONS,
              **COMMON),
    PhaseSpec("unfreeze", "transition", schema=schema.UNFREEZE_PHASE, train=_transfer, plan=_plan,
              default_preset="progressive",
              options=(*TARGET_OPTIONS, Option("phase", "run one step alone: C (top blocks), D (middle too) or E "
                                               "(all)", key="unfreeze.phases", convert=_phases)), **COMMON),
]
