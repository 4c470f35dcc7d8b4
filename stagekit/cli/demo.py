"""`stagekit demo [-o DIR]`: a pipeline's short chain on data shipped with the package."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stagekit.cli import options as opt


def help_text() -> str:
    from stagekit.stages.registry import demos

    found = demos()
    return f"Run {found[0].help}." if found else "Run a pipeline's demo (none is installed)."


def demo(
    output: Annotated[Path, typer.Option("--output", "-o", help="folder for inputs, bundles and reports")] = Path(
        "stagekit-demo"),
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress output")] = False,
) -> None:
    from stagekit.cli.tables import print_tables
    from stagekit.errors import UserError
    from stagekit.stages.registry import demos

    found = demos()
    if not found:
        raise UserError("no pipeline of this installation ships a demo")
    result, tables = found[0].run(output, quiet, opt.stderr_log(quiet))
    print_tables(tables)
    print(result)
