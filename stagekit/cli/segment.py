"""`stagekit segment --preset segger SAMPLE_DIR -o seg.stk [--from seg.stk]`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stagekit.cli import options as opt
from stagekit.errors import UserError

DATA_FLAGS = {"format": "data.format", "min_qv": "data.min_qv", "region": "data.region"}


def _region(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4 or values[0] >= values[2] or values[1] >= values[3]:
        raise UserError(f"--region {text!r}: give x0,y0,x1,y1 in micron with x0 < x1 and y0 < y1")
    return values


@opt.phase_command(default_preset="segger")
def segment(
    sample: Annotated[Path | None, typer.Argument(
        help="the sample's output folder (Xenium: transcripts.parquet and nucleus_boundaries.parquet)")] = None,
    from_: Annotated[Path | None, typer.Option(
        "--from", help="fine-tune the model of an earlier `segment` bundle on this sample (transfer)")] = None,
    allow_new_genes: Annotated[bool, typer.Option(
        "--allow-new-genes", help="with --from: genes the model never saw get new, untrained embeddings")] = False,
    format_: Annotated[str | None, typer.Option(
        "--format", help="xenium, merscope or cosmx: which files and columns to read (data.format)")] = None,
    min_qv: Annotated[float | None, typer.Option(help="drop transcripts below this quality value (data.min_qv)")
                      ] = None,
    region: Annotated[str | None, typer.Option(
        help="x0,y0,x1,y1 in micron: segment only this box of the sample (data.region)")] = None,
    *,
    opts: opt.PhaseOptions,
) -> None:
    """Train a Segger-style GNN that assigns transcripts to cells (preset: segger); `extract` writes the
    assignments, `evaluate` scores them against nucleus expansion."""
    if sample is None and not opts.print_config:
        raise UserError("give the sample folder to segment")
    opt.run_training_phase("segment", opts, data=[sample] if sample else [], parent=from_,
                           flags={"format": format_, "min_qv": min_qv, "region": _region(region)}, mapping=DATA_FLAGS,
                           options={"allow_new_genes": allow_new_genes})
