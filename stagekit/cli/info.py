"""`stagekit info BUNDLE`: what a bundle is, where it came from, how good it is. No torch import."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from stagekit.errors import UserError


def info(
    bundle: Annotated[Path, typer.Argument(help="a .stk bundle")],
    json_: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
    verify: Annotated[bool, typer.Option("--verify", help="recompute checksums; exit 2 on a mismatch")] = False,
) -> None:
    """Summarise a bundle: stage, lineage, data, config, metrics and loss curve."""
    from rich.console import Console
    from rich.markup import escape

    from stagekit.bundle import read_bundle, verify_bundle
    from stagekit.bundle.render import render, summary

    unchecked: list[str] = []
    problems = verify_bundle(bundle, unchecked) if verify else []
    if problems:  # nothing in a corrupted bundle can be trusted, its summary included
        raise UserError(f"{bundle}: " + "; ".join(problems))
    loaded = read_bundle(bundle, weights=False, results=False)  # the summary shows neither
    if json_:
        checks = {"verified": True} | ({"unchecked": unchecked} if unchecked else {})
        print(json.dumps(summary(loaded) | (checks if verify else {}), default=str))
    else:
        render(loaded, Console())
        if verify:
            older = f" ({', '.join(unchecked)}: no checksum, written by an older stagekit)" if unchecked else ""
            Console(stderr=True).print(f"[green]checksums verified[/]{escape(older)}", soft_wrap=True)
