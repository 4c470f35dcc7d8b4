"""`stagekit segment --preset segger SAMPLE_DIR -o seg.stk [--from seg.stk]`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from stagekit.cli import options as opt
from stagekit.errors import UserError


@opt.phase_command("segment")
def segment(
    sample: Annotated[Path | None, typer.Argument(
        help="the sample's output folder (Xenium: transcripts.parquet and nucleus_boundaries.parquet)")] = None,
    from_: Annotated[Path | None, typer.Option(
        "--from", help="fine-tune the model of an earlier `segment` bundle on this sample (transfer)")] = None,
    *,
    opts: opt.PhaseOptions,
    pipeline: dict[str, Any],
) -> None:
    """Train a Segger-style GNN that assigns transcripts to cells (preset: segger); `extract` writes the
    assignments, `evaluate` scores them against nucleus expansion."""
    if sample is None and not opts.print_config:
        raise UserError("give the sample folder to segment")
    opt.run_training_phase("segment", opts, pipeline, data=[sample] if sample else [], parent=from_)
