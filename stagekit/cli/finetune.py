"""`stagekit finetune --preset NAME PARENT.stk [DATA...] -o out.stk`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stagekit.cli import options as opt


@opt.phase_command(target=True)
def finetune(
    parent: Annotated[Path, typer.Argument(help="bundle to fine-tune (dec: from `stagekit cluster-search`; "
                                                "frozen-backbone: a transition model)")],
    data: Annotated[list[Path] | None, typer.Argument(
        help=".h5ad file(s); default: the data the parent was trained on")] = None,
    labelled_fraction: Annotated[float | None, typer.Option(
        help="mean-teacher: fraction of the labelled cells whose labels are used (data.labelled_fraction)")] = None,
    *,
    target: opt.TargetOptions,
    opts: opt.PhaseOptions,
) -> None:
    """Fine-tune a pretrained model with a preset-driven objective (presets: dec, mean-teacher, frozen-backbone,
    frozen-backbone-polish)."""
    opt.run_training_phase("finetune", opts, data=data, parent=parent,
                           flags={"labelled_fraction": labelled_fraction} | target.flags(),
                           mapping={"labelled_fraction": "data.labelled_fraction"} | opt.TARGET_FLAGS,
                           options={"allow_partial": target.allow_partial})
