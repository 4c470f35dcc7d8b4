"""`stagekit finetune --preset NAME PARENT.stk [DATA...] -o out.stk`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from stagekit.cli import options as opt


@opt.phase_command("finetune")
def finetune(
    parent: Annotated[Path, typer.Argument(help="bundle to fine-tune (dec: from `stagekit cluster-search`; "
                                                "frozen-backbone: a transition model)")],
    data: Annotated[list[Path] | None, typer.Argument(
        help=".h5ad file(s); default: the data the parent was trained on")] = None,
    *,
    opts: opt.PhaseOptions,
    pipeline: dict[str, Any],
) -> None:
    """Fine-tune a pretrained model with a preset-driven objective (presets: dec, mean-teacher, frozen-backbone,
    frozen-backbone-polish)."""
    opt.run_training_phase("finetune", opts, pipeline, data=data, parent=parent)
