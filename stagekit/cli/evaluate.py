"""`stagekit evaluate BUNDLE_OR_H5AD -o report/`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from stagekit.cli import options as opt
from stagekit.errors import UserError


@opt.pipeline_command("evaluate_options")
def evaluate(
    source: Annotated[Path, typer.Argument(help="a bundle, or what `stagekit extract` wrote (.h5ad or folder)")],
    data: Annotated[Path | None, typer.Argument(help="the data for a bundle; default: its training data")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="report folder")] = None,
    umap: Annotated[bool, typer.Option("--umap/--no-umap", help="draw a UMAP of the latent")] = True,
    seed: Annotated[int, typer.Option(help="seed of the silhouette subsample and UMAP")] = 0,
    json_: Annotated[bool, typer.Option("--json", help="print metrics.json on stdout")] = False,
    quiet: opt.Quiet = False,
    *,
    pipeline: dict[str, Any],
) -> None:
    """Score a bundle or its extracted outputs with its pipeline's report: clusters, classes or the integration
    across species against labels; perturbation models against baselines; segmentations against nucleus
    expansion; with plots."""
    if output is None:
        raise UserError("name the report folder with -o/--output DIR")
    from stagekit.cli.tables import print_tables
    from stagekit.stages import evaluate as stage

    report = stage.run(source, output, data, pipeline, umap, seed)
    print_tables(report.tables, quiet)  # --quiet: no tables; stdout still names metrics.json
    if not quiet:
        from rich.console import Console

        for plot in report.metrics.get("plots", []):
            Console(stderr=True).print(f"wrote {plot}", highlight=False)
    print(json.dumps(report.metrics) if json_ else output / "metrics.json")
