"""`stagekit unfreeze --preset progressive|full-unfreeze PARENT.stk [DATA...] -o out.stk`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from stagekit.cli import options as opt


@opt.phase_command("unfreeze")
def unfreeze(
    parent: Annotated[Path, typer.Argument(help="a transition model, usually after `finetune --preset "
                                                "frozen-backbone[-polish]`")],
    data: Annotated[list[Path] | None, typer.Argument(
        help=".h5ad file(s); default: the data the parent was fine-tuned on")] = None,
    *,
    opts: opt.PhaseOptions,
    pipeline: dict[str, Any],
) -> None:
    """Unfreeze a fine-tuned transition model's backbone progressively, top blocks first, with layer-wise lr
    decay (presets: progressive, full-unfreeze)."""
    opt.run_training_phase("unfreeze", opts, pipeline, data=data, parent=parent)
