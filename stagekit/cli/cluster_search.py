"""`stagekit cluster-search PRETRAIN.stk [DATA] -o clusters.stk`."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated

import typer

from stagekit.cli import options as opt


@opt.phase_command(default_preset="kmeans", training=False)
def cluster_search(
    pretrain: Annotated[Path, typer.Argument(help="bundle from `stagekit pretrain --preset vae`")],
    data: Annotated[Path | None, typer.Argument(help=".h5ad to cluster; default: the pretrain data")] = None,
    k: Annotated[int | None, typer.Option("--k", help="use this k and skip the search", min=2)] = None,
    *,
    opts: opt.PhaseOptions,
) -> None:
    """Score k-means on the pretrain latent for a range of k, choose k, and store the centres."""
    from rich.console import Console

    console = Console(stderr=True, quiet=opts.quiet)
    path = opt.run_training_phase("cluster-search", opts, data=[data] if data else [], parent=pretrain,
                                  options={"k": k}, seed_key="cluster.seed",
                                  log=lambda m: console.print(m, highlight=False))  # per-k scores unless --quiet
    if path is not None:
        console.print(score_table(path))


def score_table(path: Path):
    """The stored score per k, the chosen k marked."""
    from rich.table import Table

    from stagekit.bundle import read_bundle
    from stagekit.stages.clustering.cluster_search import mean_ranks

    bundle = read_bundle(path, weights=False)
    scores, chosen = bundle.results, int(bundle.final_metrics["k"])
    cluster_cfg = tomllib.loads(bundle.config_toml)["cluster"]
    selection = cluster_cfg["selection"]
    leiden = f"; Leiden communities: {int(scores['leiden'])}" if "leiden" in scores else ""
    columns = {c: scores[c] for c in ("silhouette", "calinski_harabasz", "davies_bouldin", "gap", "eigengap")
               if c in scores}
    if selection == "mean_rank" and len(scores["k"]) > 1:
        criteria = tuple(cluster_cfg["rank_criteria"])
        columns[f"mean rank ({' + '.join(criteria)})"] = mean_ranks(scores, criteria)
    table = Table(title=f"cluster-search (selection: {selection}{leiden})")
    for column in ("k", *columns):
        table.add_column(column, justify="right")
    for i, kk in enumerate(scores["k"]):
        mark = "bold green" if kk == chosen else None
        table.add_row(f"{kk}{' *' if kk == chosen else ''}", *(f"{v[i]:.4g}" for v in columns.values()), style=mark)
    return table
