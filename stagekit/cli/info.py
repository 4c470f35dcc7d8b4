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
    verify: Annotated[bool, typer.Option("--verify", help="recompute checksums; exit 1 on a mismatch")] = False,
) -> None:
    """Summarise a bundle: stage, lineage, data, config, metrics and loss curve."""
    from rich.console import Console

    from stagekit.bundle import read_bundle, verify_bundle
    from stagekit.bundle.render import render, summary

    problems = verify_bundle(bundle) if verify else []
    loaded = read_bundle(bundle, weights=False)
    if json_:
        print(json.dumps(summary(loaded) | ({"verified": not problems} if verify else {}), default=str))
    else:
        render(loaded, Console())
        if verify and not problems:
            Console(stderr=True).print("[green]checksums verified[/]")
    if problems:
        raise UserError(f"{bundle}: " + "; ".join(problems))
