"""`stagekit extract BUNDLE [DATA] -o cells.h5ad`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stagekit.errors import UserError


def extract(
    bundle: Annotated[Path, typer.Argument(help="a pretrain (vae), cluster-search or finetune (dec) bundle")],
    data: Annotated[Path | None, typer.Argument(help=".h5ad; default: the data the bundle was trained on")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help=".h5ad to write")] = None,
) -> None:
    """Write per-cell outputs: obsm['X_stagekit'] (latent), obs['stagekit_cluster'], soft assignments."""
    if output is None:
        raise UserError("name the .h5ad to write with -o/--output PATH.h5ad")
    from stagekit.stages import extract as stage

    print(stage.run(bundle, data, output))
