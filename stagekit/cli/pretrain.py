"""`stagekit pretrain`: the first phase of a pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stagekit.cli import options as opt
from stagekit.errors import UserError

DATA_FLAGS = {"backed": "data.backed", "layer": "data.layer", "batch_key": "data.batch_key",
              "label_key": "data.label_key", "species_key": "data.species_key",
              "labelled_fraction": "data.labelled_fraction", "positive_class": "data.positive_class",
              "pert_key": "data.pert_key", "control": "data.control", "context_key": "data.context_key",
              "exclude": "data.exclude", "test_fraction": "data.test_fraction",
              "holdout_contexts": "data.holdout_contexts", "holdout_perts": "data.holdout_perts"}


def _names(text: str | None) -> list[str] | None:
    """"A,B" -> ["A", "B"] (names may hold spaces: "B cells,T cells")."""
    return None if text is None else [name.strip() for name in text.split(",") if name.strip()]


@opt.phase_command()
def pretrain(
    data: Annotated[list[Path] | None, typer.Argument(help=".h5ad file(s) with raw counts")] = None,
    layer: Annotated[str | None, typer.Option(help="layer with raw counts (data.layer)")] = None,
    batch_key: Annotated[str | None, typer.Option(help="obs column of batches (data.batch_key)")] = None,
    label_key: Annotated[str | None, typer.Option(help="obs column of labels (data.label_key)")] = None,
    backed: Annotated[bool | None, typer.Option("--backed", help="train from disk (data.backed)")] = None,
    protein_emb: Annotated[list[str] | None, typer.Option(
        "--protein-emb", help="saturn: gene embedding file per species, SPECIES=PATH or PATH in data order "
                              "(.h5, .npz, .pt)")] = None,
    species: Annotated[list[str] | None, typer.Option(
        "--species", help="saturn: species name of each data file, in order (default: file names)")] = None,
    species_key: Annotated[str | None, typer.Option(
        help="saturn: obs column of species when one file holds several (data.species_key)")] = None,
    macrogenes_from: Annotated[Path | None, typer.Option(
        "--macrogenes-from", help="saturn: reuse the macrogene centroids of an earlier saturn pretrain bundle "
                                  "when computed from the same genes, embeddings, M, seed and seeding (else k-means "
                                  "runs)")
    ] = None,
    labelled_fraction: Annotated[float | None, typer.Option(
        help="mean-teacher: fraction of the labelled cells whose labels are used (data.labelled_fraction)")] = None,
    positive_class: Annotated[str | None, typer.Option(
        help="mean-teacher: a binary task, this label against the rest (data.positive_class)")] = None,
    init_from: Annotated[Path | None, typer.Option(
        "--init-from", help="mean-teacher: start the classifier from a `pretrain --preset vae` encoder")] = None,
    pert_key: Annotated[str | None, typer.Option(
        help="transition: obs column of the perturbation (data.pert_key)")] = None,
    control: Annotated[str | None, typer.Option(help="transition: the control label (data.control)")] = None,
    context_key: Annotated[str | None, typer.Option(
        help="transition: obs column of the cell type / cell line (data.context_key)")] = None,
    exclude: Annotated[list[str] | None, typer.Option(
        "--exclude", help="transition: leave out cells with this perturbation label, e.g. unassigned "
                          "(data.exclude; repeatable)")] = None,
    test_fraction: Annotated[float | None, typer.Option(
        help="transition: held-out cells of every perturbation (data.test_fraction)")] = None,
    holdout_contexts: Annotated[str | None, typer.Option(
        help="transition: hold out every perturbed cell of these contexts, A,B (zero-shot)")] = None,
    holdout_perts: Annotated[str | None, typer.Option(
        help="transition: hold out these perturbations, A,B (needs --pert-features)")] = None,
    pert_features: Annotated[Path | None, typer.Option(
        "--pert-features", help="transition: perturbation name -> feature vector (.h5, .npz, .pt)")] = None,
    split_toml: Annotated[Path | None, typer.Option(
        "--split-toml", help="transition: a cell-load data TOML ([zeroshot], [fewshot]) stating the split")] = None,
    *,
    opts: opt.PhaseOptions,
) -> None:
    """Pretrain a model from raw counts or features (presets: vae, autoencoder, saturn, mean-teacher,
    transition)."""
    if not data and not opts.print_config:
        raise UserError("give the .h5ad file to train on")
    flags = {"layer": layer, "batch_key": batch_key, "label_key": label_key, "backed": backed,
             "species_key": species_key, "labelled_fraction": labelled_fraction, "positive_class": positive_class,
             "pert_key": pert_key, "control": control, "context_key": context_key, "exclude": exclude,
             "test_fraction": test_fraction, "holdout_contexts": _names(holdout_contexts),
             "holdout_perts": _names(holdout_perts)}
    opt.run_training_phase("pretrain", opts, data=data, flags=flags, mapping=DATA_FLAGS,
                           options={"protein_emb": protein_emb, "species": species,
                                    "macrogenes_from": macrogenes_from, "init_from": init_from,
                                    "pert_features": pert_features, "split_toml": split_toml})
