"""`stagekit demo [-o DIR]`: cross-species integration on the embedded two-species pancreas cells."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stagekit.cli import options as opt


def demo(
    output: Annotated[Path, typer.Option("--output", "-o", help="folder for inputs, bundles and reports")] = Path(
        "stagekit-demo"),
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress output")] = False,
) -> None:
    """Run pretrain (saturn) -> align -> evaluate on embedded human + mouse pancreas cells (a few minutes)."""
    from rich.console import Console
    from rich.table import Table

    from stagekit.stages.cross_species import demo as stage

    before, after = stage.run(output, quiet, log=opt.stderr_log(quiet))
    table = Table(title="cross-species integration of the pancreas demo (labels: cell type)")
    for column in ("metric", "after pretrain", "after align"):
        table.add_column(column, justify="right" if column != "metric" else "left")
    for pair in after["label_transfer"]:
        for score in ("accuracy", "balanced_accuracy"):
            table.add_row(f"label transfer {pair} {score.replace('_', ' ')}",
                          f"{before['label_transfer'][pair][score]:.3f}", f"{after['label_transfer'][pair][score]:.3f}")
    for k in ("1", "15"):
        table.add_row(f"{k}-NN cross-species label agreement", f"{before['integration']['knn_agreement'][k]:.3f}",
                      f"{after['integration']['knn_agreement'][k]:.3f}")
    table.add_row("species mixing (1 = mixed)", f"{before['integration']['species_mixing']:.3f}",
                  f"{after['integration']['species_mixing']:.3f}")
    Console(stderr=True).print(table)
    print(output / "report_align" / "metrics.json")
