"""`stagekit align PRETRAIN.stk -o align.stk [--write-h5ad cells.h5ad]`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from stagekit.cli import options as opt
from stagekit.errors import UserError


@opt.phase_command("align")
def align(
    pretrain: Annotated[Path, typer.Argument(help="bundle from `stagekit pretrain --preset saturn`")],
    write_h5ad: Annotated[Path | None, typer.Option(help="also write the cells with obsm['X_align'] here")] = None,
    *,
    opts: opt.PhaseOptions,
    pipeline: dict[str, Any],
) -> None:
    """Metric learning across species on the pretrained encoder (SATURN's second stage)."""
    if write_h5ad is not None and write_h5ad.suffix != ".h5ad":  # checked before training, not after
        raise UserError(f"--write-h5ad {write_h5ad} should end in .h5ad")
    path = opt.run_training_phase("align", opts, pipeline, parent=pretrain)
    if path is not None and write_h5ad is not None:
        from stagekit.stages import extract

        extract.run(path, [], write_h5ad, log=lambda m: print(m, file=sys.stderr))
