"""`stagekit pretrain --preset NAME DATA... -o out.stk`: the first phase of a pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from stagekit.cli import options as opt
from stagekit.errors import UserError


@opt.phase_command("pretrain")
def pretrain(
    data: Annotated[list[Path] | None, typer.Argument(help=".h5ad file(s) with raw counts")] = None,
    *,
    opts: opt.PhaseOptions,
    pipeline: dict[str, Any],
) -> None:
    """Pretrain a model from raw counts or features (presets: vae, autoencoder, saturn, mean-teacher,
    transition)."""
    if not data and not opts.print_config:
        raise UserError("give the .h5ad file to train on")
    opt.run_training_phase("pretrain", opts, pipeline, data=data)
