"""`stagekit extract BUNDLE [DATA] -o cells.h5ad`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from stagekit.cli import options as opt
from stagekit.errors import UserError


@opt.pipeline_command("extract_options")
def extract(
    bundle: Annotated[Path, typer.Argument(
        help="a bundle of any phase (pretrain, cluster-search, finetune, unfreeze, align, segment)")],
    data: Annotated[list[Path] | None, typer.Argument(
        help=".h5ad file(s); default: the data the bundle was trained on")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help=".h5ad to write (segment bundles: a folder)")
                      ] = None,
    quiet: opt.Quiet = False,
    *,
    pipeline: dict[str, Any],
) -> None:
    """Write per-cell outputs: vae/dec: obsm['X_stagekit'], obs['stagekit_cluster'], soft assignments;
    saturn: obsm['X_macrogenes'] and obsm['X_pretrain'] for every species; transition: predicted and observed cells
    of every held-out (perturbation, context) group (obs['stagekit_source']), or --pert for new control cells;
    segger: a folder with transcripts.parquet (each transcript's cell), cells.h5ad and region.png."""
    if output is None:
        raise UserError("name the output with -o/--output PATH.h5ad (a folder for segment bundles)")
    from stagekit.stages import extract as stage

    print(stage.run(bundle, data or [], output, pipeline, log=opt.stderr_log(quiet)))
