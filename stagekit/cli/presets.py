"""`stagekit presets list|show NAME`."""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(help="List and show the shipped TOML presets.", no_args_is_help=True)


@app.command("list")
def list_() -> None:
    """List shipped presets with their stage and model."""
    from rich.console import Console
    from rich.table import Table

    from stagekit.config import list_presets

    table = Table("preset", "command", "model", "description")
    for row in list_presets():
        table.add_row(row["name"], f"stagekit {row['stage']}", row["model"], row["description"])
    Console().print(table)


@app.command("show")
def show(name: Annotated[str, typer.Argument(help="preset name or path")]) -> None:
    """Print a preset file as it ships."""
    from stagekit.config.loader import preset_path

    print(preset_path(name).read_text(), end="")
