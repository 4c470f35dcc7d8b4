"""`stagekit unfreeze --preset progressive|full-unfreeze PARENT.stk [DATA...] -o out.stk`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stagekit.cli import options as opt
from stagekit.errors import UserError


@opt.phase_command(default_preset="progressive", target=True)
def unfreeze(
    parent: Annotated[Path, typer.Argument(help="a transition model, usually after `finetune --preset "
                                                "frozen-backbone[-polish]`")],
    data: Annotated[list[Path] | None, typer.Argument(
        help=".h5ad file(s); default: the data the parent was fine-tuned on")] = None,
    phase: Annotated[str | None, typer.Option(
        "--phase", help="run one phase alone: C (top blocks), D (middle too) or E (all)")] = None,
    *,
    target: opt.TargetOptions,
    opts: opt.PhaseOptions,
) -> None:
    """Unfreeze a fine-tuned transition model's backbone progressively, top blocks first, with layer-wise lr
    decay (presets: progressive, full-unfreeze)."""
    if phase is not None and phase not in ("C", "D", "E"):
        raise UserError(f"--phase {phase}: one of C, D, E")
    opt.run_training_phase("unfreeze", opts, data=data, parent=parent,
                           flags=target.flags() | {"phase": [phase] if phase else None},
                           mapping=opt.TARGET_FLAGS | {"phase": "unfreeze.phases"},
                           options={"allow_partial": target.allow_partial})
