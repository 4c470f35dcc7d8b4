"""Training phases: a run is a list of phases, each with its epochs, freeze plan, learning rate and schedule.
At a phase boundary the engine rebuilds parameter groups, optimizer and scheduler for the new plan."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from stagekit.train.optim import FreezePlan


@dataclass(frozen=True)
class Phase:
    """Unset values (None, epochs 0) come from the run's settings."""

    name: str = "train"
    epochs: int = 0
    freeze: FreezePlan = field(default_factory=FreezePlan)
    lr: float | None = None
    weight_decay: float | None = None
    scheduler: str | None = None
    warmup_ratio: float | None = None
    min_lr_ratio: float | None = None
    grad_clip: float | None = None

    def resolved(self, settings: Any) -> Phase:
        keys = ("lr", "weight_decay", "scheduler", "warmup_ratio", "min_lr_ratio", "grad_clip")
        filled = {k: getattr(settings, k) for k in keys if getattr(self, k) is None}
        return replace(self, epochs=self.epochs or settings.epochs, **filled)


def phase_at(phases: list[Phase], epoch: int) -> int:
    """Index of the phase that epoch `epoch` (from 0, counted over the whole run) belongs to."""
    end = 0
    for index, phase in enumerate(phases):
        end += phase.epochs
        if epoch < end:
            return index
    return len(phases) - 1


def first_epoch(phases: list[Phase], index: int) -> int:
    return sum(p.epochs for p in phases[:index])
