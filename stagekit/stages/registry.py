"""Which code runs, extracts and evaluates each (stage, model) a bundle or preset names.

Entries name functions by "module:function" and are imported only when used, so `stagekit --help` and
`stagekit info` stay free of torch. Commands look phases up here instead of branching on model names.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stagekit.errors import UserError


@dataclass
class PhaseRequest:
    """What a command hands a training phase. `options` holds command-specific options that were given
    (e.g. saturn's protein embeddings); a phase that does not declare one refuses it."""

    config: Any  # stagekit.config.Config
    output: Path
    data: list[Path] = field(default_factory=list)
    parent: Path | None = None
    resume: Path | None = None
    quiet: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    log: Callable[[str], None] = print


@dataclass(frozen=True)
class Entry:
    run: str  # "module:function" taking a PhaseRequest, returning the written bundle (None on non-zero ranks)
    cells: str = ""  # "module:function"(bundle, data, species, log) -> (AnnData, extra uns) for extract/evaluate
    options: tuple[str, ...] = ()  # command-specific options the phase accepts
    pipeline: str = ""
    plan: str = ""  # "module:function"(PhaseRequest) printing what the phase would train (--print-config)
    writes: str = ""  # "module:function"(bundle, data, output, log) -> Path: extract writes its own outputs
    report: str = ""  # "module:function"(bundle, data, output, expansion_um, markers) -> dict: evaluate's own way


_CLUSTERING = "stagekit.stages.clustering"
_CROSS_SPECIES = "stagekit.stages.cross_species"
_SATURN_CELLS = f"{_CROSS_SPECIES}.saturn_cells:saturn_anndata"
_MEAN_TEACHER = "stagekit.stages.mean_teacher"
_MEAN_TEACHER_CELLS = f"{_MEAN_TEACHER}.cells:mean_teacher_cells"
_PERTURBATION = "stagekit.stages.perturbation"
_SEGMENTATION = "stagekit.stages.segmentation"

ENTRIES: dict[tuple[str, str], Entry] = {
    ("pretrain", "vae"): Entry(f"{_CLUSTERING}.pretrain_vae:run", f"{_CLUSTERING}.cells:vae_cells",
                               pipeline="phenotype clustering"),
    ("cluster-search", "kmeans"): Entry(f"{_CLUSTERING}.cluster_search:run", f"{_CLUSTERING}.cells:vae_cells",
                                        options=("k",), pipeline="phenotype clustering"),
    ("finetune", "dec"): Entry(f"{_CLUSTERING}.finetune_dec:run", f"{_CLUSTERING}.cells:vae_cells",
                               pipeline="phenotype clustering"),
    ("pretrain", "saturn"): Entry(f"{_CROSS_SPECIES}.pretrain_saturn:run", _SATURN_CELLS,
                                  options=("protein_emb", "species", "macrogenes_from"),
                                  pipeline="cross-species integration"),
    ("align", "saturn"): Entry(f"{_CROSS_SPECIES}.align_saturn:run", _SATURN_CELLS,
                               pipeline="cross-species integration"),
    ("pretrain", "mean-teacher"): Entry(f"{_MEAN_TEACHER}.stage:pretrain", _MEAN_TEACHER_CELLS,
                                        options=("init_from",), pipeline="semi-supervised annotation"),
    ("finetune", "mean-teacher"): Entry(f"{_MEAN_TEACHER}.stage:finetune", _MEAN_TEACHER_CELLS,
                                        pipeline="semi-supervised annotation"),
    ("pretrain", "transition"): Entry(f"{_PERTURBATION}.stage:run", f"{_PERTURBATION}.cells:transition_cells",
                                      options=("pert_features", "split_toml"), pipeline="perturbation transfer"),
    ("finetune", "transition"): Entry(f"{_PERTURBATION}.transfer:run", f"{_PERTURBATION}.cells:transition_cells",
                                      options=("allow_partial",), pipeline="perturbation transfer",
                                      plan=f"{_PERTURBATION}.transfer:print_plan"),
    ("unfreeze", "transition"): Entry(f"{_PERTURBATION}.transfer:run", f"{_PERTURBATION}.cells:transition_cells",
                                      options=("allow_partial",), pipeline="perturbation transfer",
                                      plan=f"{_PERTURBATION}.transfer:print_plan"),
    ("segment", "segger"): Entry(f"{_SEGMENTATION}.stage:run", options=("allow_new_genes",),
                                 pipeline="cell segmentation", writes=f"{_SEGMENTATION}.predict:write",
                                 report=f"{_SEGMENTATION}.report:from_bundle"),
}

# how a command spells each option, for messages
OPTION_FLAGS = {"protein_emb": "--protein-emb", "species": "--species", "macrogenes_from": "--macrogenes-from",
                "k": "--k", "species_key": "--species-key", "init_from": "--init-from",
                "pert_features": "--pert-features", "split_toml": "--split-toml", "allow_partial": "--allow-partial",
                "allow_new_genes": "--allow-new-genes"}


def resolve(target: str) -> Callable:
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def entry(stage: str, model: str, where: str = "") -> Entry:
    found = ENTRIES.get((stage, model))
    if found is None:
        known = sorted(m for s, m in ENTRIES if s == stage)
        raise UserError(f"{where + ': ' if where else ''}no '{stage}' phase for model '{model}' in this version"
                        + (f" (available: {', '.join(known)})" if known else ""))
    return found


def run_phase(request: PhaseRequest) -> Path | None:
    """Run the training phase of the request's (stage, model); refuse options it does not take."""
    config = request.config
    found = entry(config.stage, config.model, f"preset {config.preset}")
    given = [name for name, value in request.options.items() if value not in (None, [], (), False)]
    foreign = [name for name in given if name not in found.options]
    if foreign:
        owners = sorted({m for (s, m), e in ENTRIES.items() if s == config.stage and foreign[0] in e.options})
        hint = f" (it is for {', '.join(f'--preset {o}' for o in owners)})" if owners else ""
        raise UserError(f"{OPTION_FLAGS.get(foreign[0], foreign[0])} does not apply to `stagekit {config.stage}` "
                        f"with model '{config.model}'{hint}")
    return resolve(found.run)(request)


def print_plan(request: PhaseRequest) -> None:
    """--print-config: what the phase would train, where its entry can say (nothing otherwise)."""
    config = request.config
    found = entry(config.stage, config.model, f"preset {config.preset}")
    if found.plan:
        resolve(found.plan)(request)


def cells_of(bundle: Any, data: list[Path], species: list[str] | None, log: Callable[[str], None],
             pert: str | None = None, held_out_of: Path | None = None):
    """Per-cell outputs of any bundle as (AnnData, extra uns entries). `pert` (extract --pert) and `held_out_of`
    (another bundle's held-out cells) are for perturbation models only."""
    found = entry(bundle.stage, bundle.model, str(bundle.path))
    if not found.cells:
        raise UserError(f"{bundle.path}: a '{bundle.stage}' ({bundle.model}) bundle has no per-cell outputs")
    if pert is None and held_out_of is None:
        return resolve(found.cells)(bundle, data, species or [], log)
    if bundle.model != "transition":
        flag = "--pert predicts a perturbation" if pert else "--held-out-of scores a perturbation model"
        raise UserError(f"{flag}; {bundle.path} holds a '{bundle.model}' model")
    task = None
    if held_out_of is not None:
        from stagekit.bundle import read_bundle

        task = read_bundle(held_out_of, command="--held-out-of")
        if task.model != "transition":
            raise UserError(f"--held-out-of {held_out_of} holds a '{task.model}' model; give a transition bundle")
    return resolve(found.cells)(bundle, data, species or [], log, pert=pert, held_out_of=task)
