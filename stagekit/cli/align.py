"""`stagekit align PRETRAIN.stk -o align.stk [--write-h5ad cells.h5ad]`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from stagekit.cli import options as opt


def align(
    pretrain: Annotated[Path, typer.Argument(help="bundle from `stagekit pretrain --preset saturn`")],
    preset: Annotated[str, typer.Option("--preset", "-p", help="preset NAME or PATH")] = "align",
    set_: opt.Set = None,
    output: opt.Output = None,
    write_h5ad: Annotated[Path | None, typer.Option(help="also write the cells with obsm['X_align'] here")] = None,
    unfreeze_macrogenes: Annotated[bool | None, typer.Option(
        "--unfreeze-macrogenes", help="also train the gene -> macrogene weights (align.unfreeze_macrogenes)")] = None,
    seed: opt.Seed = None,
    accelerator: opt.Accelerator = None,
    devices: opt.Devices = None,
    strategy: opt.Strategy = None,
    precision: opt.Precision = None,
    resume: opt.Resume = None,
    print_config: opt.PrintConfig = False,
    quiet: opt.Quiet = False,
    json_: opt.Json = False,
) -> None:
    """Metric learning across species on the pretrained encoder (SATURN's second stage)."""
    flags = locals() | ({"preset": None} if resume else {})
    config = opt.training_config("align", flags, {"unfreeze_macrogenes": "align.unfreeze_macrogenes"})
    if config is None:
        return
    from stagekit.stages import align_saturn, extract

    path = align_saturn.run(config, pretrain, output, resume, quiet, log=opt.stderr_log(quiet))
    if path is None:  # a secondary process of a distributed run
        return
    if write_h5ad is not None:
        extract.run(path, [], write_h5ad, log=lambda m: print(m, file=sys.stderr))
    opt.emit_result(path, json_)
