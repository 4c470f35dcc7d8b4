"""`stagekit cluster-search PRETRAIN.stk [DATA] -o clusters.stk`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stagekit.cli import options as opt
from stagekit.errors import UserError


def cluster_search(
    pretrain: Annotated[Path, typer.Argument(help="bundle from `stagekit pretrain --preset vae`")],
    data: Annotated[Path | None, typer.Argument(help=".h5ad to cluster; default: the pretrain data")] = None,
    preset: Annotated[str, typer.Option("--preset", "-p", help="preset NAME or PATH")] = "kmeans",
    set_: opt.Set = None,
    output: opt.Output = None,
    k: Annotated[int | None, typer.Option("--k", help="use this k and skip the search", min=2)] = None,
    seed: Annotated[int | None, typer.Option(help="random seed (cluster.seed)")] = None,
    print_config: opt.PrintConfig = False,
    quiet: opt.Quiet = False,
    json_: opt.Json = False,
) -> None:
    """Score k-means on the pretrain latent for a range of k, choose k, and store the centres."""
    from stagekit.config import resolve_config

    overrides = opt.collect_overrides(set_, {"seed": seed}, {"seed": "cluster.seed"})
    config = resolve_config("cluster-search", preset, overrides)
    if print_config:
        print(config.to_toml(with_sources=True))
        return
    if output is None:
        raise UserError("name the bundle to write with -o/--output PATH.stk")
    from rich.console import Console
    from rich.table import Table

    from stagekit.stages import cluster_search as stage

    console = Console(stderr=True, quiet=quiet)
    path, scores, chosen = stage.run(config, pretrain, data, output, k,
                                     log=(lambda m: None) if quiet else lambda m: console.print(m, highlight=False))
    table = Table(title=f"cluster-search (selection: {config['cluster']['selection']})")
    columns = [c for c in ("silhouette", "calinski_harabasz", "davies_bouldin", "gap") if c in scores]
    for column in ("k", *columns):
        table.add_column(column, justify="right")
    for i, kk in enumerate(scores["k"]):
        mark = "bold green" if kk == chosen else None
        table.add_row(f"{kk}{' *' if kk == chosen else ''}", *(f"{scores[c][i]:.4g}" for c in columns), style=mark)
    console.print(table)
    opt.emit_result(path, json_)
