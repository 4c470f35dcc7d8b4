"""Render the plain tables phases and reports return."""

from __future__ import annotations

from typing import Any

from stagekit.stages.spec import Table


def cell_text(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def print_tables(tables: list[Table], quiet: bool = False) -> None:
    """Each table on stderr (stdout carries only the result)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table as RichTable

    console = Console(stderr=True, quiet=quiet)
    for table in tables:
        shown = RichTable(title=escape(table.title), caption=escape("; ".join(table.notes)) or None)
        for i, column in enumerate(table.columns):
            shown.add_column(escape(column), justify="left" if i == 0 else "right")
        for row in table.rows:
            shown.add_row(*(escape(cell_text(v)) for v in row))
        console.print(shown)
