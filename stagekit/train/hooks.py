"""Hooks: objects with state the engine calls at fixed points of the loop. A hook may stop the run
(raise TrainingStopped: the engine keeps the last good state of model, task and hooks) or finish it as a
success (raise TrainingFinished: the epoch ends at that step and is validated and recorded; the hooks after
the one that raised still run for that step).

Hooks run in order, the task first, and each sees what earlier ones added to the `values` / `row` dicts,
so a guard can watch a number the task publishes."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class StepContext:
    """Where the loop is: `epoch` and `global_step` count from 0 over the whole run, across phases."""

    epoch: int
    global_step: int
    phase: str = "train"
    phase_index: int = 0
    train: bool = True


class Hook:
    def on_fit_start(self, model: nn.Module) -> None:
        """After the model is on its device (and after resume restored every state)."""

    def after_optimizer_step(self, model: nn.Module, ctx: StepContext, values: dict[str, float]) -> None:
        """`values`: this step's loss terms (batch means); a hook may add entries for the hooks after it."""

    def on_validation_batch(self, model: nn.Module, ctx: StepContext, batch: object,
                            outputs: dict[str, torch.Tensor]) -> None:
        pass

    def on_validation_end(self, model: nn.Module, ctx: StepContext, metrics: dict[str, float]) -> None:
        """`metrics`: the whole validation set's metrics (val_...); a hook may add entries."""

    def on_epoch_end(self, model: nn.Module, ctx: StepContext, row: dict[str, float]) -> None:
        """`row`: the epoch's history row; a hook may add entries, which are recorded."""

    def state_dict(self) -> dict:
        """State that resume must restore (tensors, numpy arrays, scalars)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class EMA(Hook):
    """An exponential moving average of a model's weights (the Mean Teacher's teacher), updated after every
    optimizer step with decay min(d, 1 - 1 / (t + 1)), so early averages are not dominated by the random
    initialisation; d is `rampup_decay` for the first `rampup_steps` updates and `decay` after.

    `teacher`: a module of the same shape to average into (e.g. one held by the trained model, so it is saved
    with it); by default a private copy, saved in this hook's state. Floating-point buffers (BatchNorm running
    statistics) are copied from the student (`buffers="copy"`) or averaged like the weights ("average");
    integer buffers (batch counters) are always copied."""

    def __init__(self, model: nn.Module, decay: float = 0.999, teacher: nn.Module | None = None,
                 rampup_decay: float | None = None, rampup_steps: int = 0, buffers: str = "copy") -> None:
        if buffers not in ("copy", "average"):
            raise ValueError(f"EMA(buffers={buffers!r}): copy or average")
        self.student, self.decay, self.updates = model, decay, 0
        self.rampup_decay, self.rampup_steps, self.buffers = rampup_decay, rampup_steps, buffers
        self.owns_teacher = teacher is None
        self.teacher = (copy.deepcopy(model) if teacher is None else teacher).requires_grad_(False)

    def on_fit_start(self, model: nn.Module) -> None:
        self.teacher.to(next(self.student.parameters()).device)

    def current_decay(self) -> float:
        target = self.rampup_decay if self.rampup_decay is not None and self.updates < self.rampup_steps \
            else self.decay
        return min(target, 1.0 - 1.0 / (self.updates + 1))

    @torch.no_grad()
    def after_optimizer_step(self, model: nn.Module, ctx: StepContext, values: dict[str, float]) -> None:
        decay = self.current_decay()
        for t, s in zip(self.teacher.parameters(), self.student.parameters(), strict=True):
            t.lerp_(s.detach().to(t.dtype), 1.0 - decay)
        for t, s in zip(self.teacher.buffers(), self.student.buffers(), strict=True):
            if self.buffers == "average" and t.is_floating_point():
                t.lerp_(s.to(t.dtype), 1.0 - decay)
            else:
                t.copy_(s)
        self.updates += 1
        values["ema_decay"] = decay

    def state_dict(self) -> dict:
        return {"updates": self.updates} | ({"teacher": self.teacher.state_dict()} if self.owns_teacher else {})

    def load_state_dict(self, state: dict) -> None:
        if state:
            if self.owns_teacher:
                self.teacher.load_state_dict(state["teacher"])
            self.updates = int(state["updates"])


class Guard(Hook):
    """Stops the run with a message when a watched number leaves its bounds: `at` "step" reads the step's
    values, "validation" the validation metrics, "epoch" the epoch row (one of them, or a tuple). An absent or
    NaN value is not checked, nor anything before `min_epochs`."""

    def __init__(self, metric: str, minimum: float | None = None, maximum: float | None = None,
                 at: str | tuple[str, ...] = "epoch", hint: str | Callable[[], str] = "", min_epochs: int = 0) -> None:
        points = (at,) if isinstance(at, str) else tuple(at)
        if not set(points) <= {"step", "validation", "epoch"}:
            raise ValueError(f"Guard(at={at!r}): step, validation and/or epoch")
        self.metric, self.minimum, self.maximum, self.at = metric, minimum, maximum, points
        self.hint, self.min_epochs = hint, min_epochs

    def check(self, ctx: StepContext, values: dict[str, float]) -> None:
        from stagekit.errors import TrainingStopped

        value = values.get(self.metric)
        if value is None or math.isnan(value) or ctx.epoch < self.min_epochs:
            return
        for bound, broken, word in ((self.minimum, lambda v, b: v < b, "below"),
                                    (self.maximum, lambda v, b: v > b, "above")):
            if bound is not None and broken(value, bound):
                hint = self.hint() if callable(self.hint) else self.hint
                raise TrainingStopped(f"{self.metric} = {value:.4g} went {word} {bound:.4g} at epoch {ctx.epoch + 1}, "
                                      f"step {ctx.global_step + 1}" + (f"; {hint}" if hint else ""))

    def after_optimizer_step(self, model: nn.Module, ctx: StepContext, values: dict[str, float]) -> None:
        if "step" in self.at:
            self.check(ctx, values)

    def on_validation_end(self, model: nn.Module, ctx: StepContext, metrics: dict[str, float]) -> None:
        if "validation" in self.at:
            self.check(ctx, metrics)

    def on_epoch_end(self, model: nn.Module, ctx: StepContext, row: dict[str, float]) -> None:
        if "epoch" in self.at:
            self.check(ctx, row)
