"""`stagekit cluster-search PRETRAIN.stk [DATA] -o clusters.stk`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from stagekit.cli import options as opt


@opt.phase_command("cluster-search")
def cluster_search(
    pretrain: Annotated[Path, typer.Argument(help="bundle from `stagekit pretrain --preset vae`")],
    data: Annotated[Path | None, typer.Argument(help=".h5ad to cluster; default: the pretrain data")] = None,
    *,
    opts: opt.PhaseOptions,
    pipeline: dict[str, Any],
) -> None:
    """Score k-means on the pretrain latent for a range of k, choose k, and store the centres."""
    from rich.console import Console

    console = Console(stderr=True, quiet=opts.quiet)
    opt.run_training_phase("cluster-search", opts, pipeline, data=[data] if data else [], parent=pretrain,
                           log=lambda m: console.print(m, highlight=False))  # per-k scores unless --quiet
