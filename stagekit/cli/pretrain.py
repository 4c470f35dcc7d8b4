"""`stagekit pretrain`: the first phase of a pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stagekit.cli import options as opt
from stagekit.errors import UserError

DATA_FLAGS = {"backed": "data.backed", "layer": "data.layer", "batch_key": "data.batch_key",
              "label_key": "data.label_key", "species_key": "data.species_key"}


def pretrain(
    data: Annotated[list[Path] | None, typer.Argument(help=".h5ad file(s) with raw counts")] = None,
    preset: opt.Preset = None,
    set_: opt.Set = None,
    output: opt.Output = None,
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
                                  "when computed from the same genes, embeddings, M and seed (else k-means runs)")
    ] = None,
    seed: opt.Seed = None,
    accelerator: opt.Accelerator = None,
    devices: opt.Devices = None,
    strategy: opt.Strategy = None,
    precision: opt.Precision = None,
    resume: opt.Resume = None,
    print_config: opt.PrintConfig = False,
    quiet: opt.Quiet = False,
    json_: opt.Json = False,
) -> None:
    """Pretrain a model from raw counts or features (presets: vae, autoencoder, saturn)."""
    config = opt.training_config("pretrain", locals(), DATA_FLAGS)
    if config is None:
        return
    if not data:
        raise UserError("give the .h5ad file to train on")
    if config.model == "vae":
        from stagekit.stages import pretrain_vae

        if len(data) != 1:
            raise UserError(f"the vae preset trains on one .h5ad file; got {len(data)}")
        if protein_emb or species or config["data"].get("species_key") or macrogenes_from:
            raise UserError("--protein-emb, --species, --species-key and --macrogenes-from are for --preset saturn")
        path = pretrain_vae.run(config, data[0], output, resume, quiet)
    elif config.model == "saturn":
        from stagekit.stages import pretrain_saturn

        if not protein_emb:
            raise UserError("saturn needs protein embeddings of each species' genes: --protein-emb SPECIES=PATH")
        path = pretrain_saturn.run(config, data, output, species or [], protein_emb, resume, quiet,
                                   macrogenes_from)
    else:  # a schema exists for every shipped model; this guards a preset naming one not built yet
        raise UserError(f"pretrain model '{config.model}' is not available in this version")
    if path is not None:  # None on the secondary processes of a distributed run
        opt.emit_result(path, json_)
