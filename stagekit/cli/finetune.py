"""`stagekit finetune --preset dec CLUSTERS.stk [DATA] -o dec.stk`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stagekit.cli import options as opt
from stagekit.errors import UserError


def finetune(
    parent: Annotated[Path, typer.Argument(help="bundle to fine-tune (dec: from `stagekit cluster-search`)")],
    data: Annotated[Path | None, typer.Argument(help=".h5ad; default: the data the parent was trained on")] = None,
    preset: opt.Preset = None,
    set_: opt.Set = None,
    output: opt.Output = None,
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
    """Fine-tune a pretrained model with a preset-driven objective (presets: dec)."""
    config = opt.training_config("finetune", locals(), {})
    if config is None:
        return
    if config.model == "dec":
        from stagekit.stages import finetune_dec

        path = finetune_dec.run(config, parent, data, output, resume, quiet)
    else:  # guards a preset naming an objective not built yet
        raise UserError(f"finetune objective '{config.model}' is not available in this version")
    if path is not None:  # None on the secondary processes of a distributed run
        opt.emit_result(path, json_)
