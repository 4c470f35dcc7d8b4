"""One explicit training loop for every phase; Lightning Fabric handles devices, precision and DDP.

A phase describes itself as a `Task` (model, mini-batch plans, one step, optional phases and hooks); the engine
owns optimisation, phase boundaries, schedules, clipping, whole-set validation, the monitored metric (early
stopping, top-k states), the non-finite guard, checkpoints, signals and exact resume.
"""

from __future__ import annotations

import atexit
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from stagekit.bundle.records import format_group_table
from stagekit.errors import TrainingFinished, TrainingStopped, UserError
from stagekit.train.allocator import keep_freed_memory
from stagekit.train.held_state import HeldState
from stagekit.train.hooks import Hook, StepContext
from stagekit.train.live_logs import LiveLogs, fabric_loggers
from stagekit.train.metrics import gather_rows
from stagekit.train.optim import FreezePlan, build_optimizer, group_table, lr_lambda, param_groups
from stagekit.train.phases import Phase, first_epoch, phase_at
from stagekit.train.progress import ProgressReporter
from stagekit.train.signals import Signals
from stagekit.train.state import (
    LoopState,
    capture_rng,
    from_storable,
    restore_rng,
    tensor_checksums,
    to_storable,
)


@dataclass
class RunSettings:
    epochs: int = 10
    max_steps: int = 0  # > 0: stop after this many optimizer steps in all, once the epoch in progress validates
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adamw"
    grad_clip: float = 0.0
    scheduler: str = "constant"
    warmup_ratio: float = 0.0
    min_lr_ratio: float = 0.0
    early_stopping_patience: int = 0
    min_epochs: int = 0
    save_top_k: int = 0
    checkpoint_every: int = 0
    keep_resume: bool = False  # read by the phase that writes the bundle, not by the loop
    seed: int = 0
    accelerator: str = "cpu"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    threads: int = 0
    num_workers: int = 0
    micro_batch_size: int = 0  # > 0: each step's batch runs as parts (Task.micro_batches), gradients accumulated
    logger: str = ""  # live logs while training: csv, tensorboard or both (train/live_logs.py); "" for none
    log_dir: str = ""  # where the live logs go (required with a logger)

    @classmethod
    def from_config(cls, training: dict[str, Any], runtime: dict[str, Any],
                    stage_keys: tuple[str, ...] = ("val_fraction",)) -> RunSettings:
        """Every key of the two sections is a setting, or one the stage reads itself (`stage_keys`)."""
        names = {f.name for f in fields(cls)}
        unknown = [k for k in (*training, *runtime) if k not in names and k not in stage_keys]
        if unknown:
            raise ValueError(f"the engine has no setting {unknown[0]!r}; add it to RunSettings or to stage_keys")
        return cls(**{k: section[k] for section in (training, runtime) for k in section if k in names})

    @property
    def monitoring(self) -> bool:
        """Whether the monitored metric decides which state is kept (the best) rather than the last."""
        return bool(self.early_stopping_patience or self.save_top_k)


class Task(Hook):
    """What a phase hands the engine. Subclasses set `model` and implement the plans, `load` and `step`.

    A task is also the first hook: it may override any `Hook` method (and `state_dict` for resume)."""

    model: nn.Module
    monitor: str = "loss"  # validation (or, without validation, training) metric the kept state is chosen by
    monitor_mode: str = "min"  # or "max"
    loads_in_workers: bool = True  # False when `load` reads state that changes during an epoch
    batch_unit: str = "cells"  # what `batch_size_of` counts, as the progress line names it ("cells/s")

    def phases(self) -> list[Phase]:
        """The run's phases; by default one, training everything `freeze_plan` leaves trainable."""
        return [Phase(freeze=self.freeze_plan())]

    def freeze_plan(self) -> FreezePlan:
        return FreezePlan()

    def hooks(self) -> list[Hook]:
        """Further hooks (EMA teachers, guards), called after the task itself."""
        return []

    def train_plan(self, epoch: int, rank: int, world: int) -> list[Any]:
        """Cheap descriptors (e.g. row indices) of this process's steps in `epoch`, deterministic."""
        raise NotImplementedError

    def val_plan(self, rank: int, world: int) -> list[Any]:
        return []

    def load(self, item: Any) -> Any:
        """Materialise one descriptor into a batch (tensors on the CPU; the engine moves them)."""
        raise NotImplementedError

    def batch_size_of(self, batch: Any) -> int:
        if hasattr(batch, "num_graphs"):  # a PyG Batch of graphs (Data or HeteroData)
            return int(batch.num_graphs)
        if hasattr(batch, "node_types") or hasattr(batch, "edge_index"):  # one PyG graph
            return 1
        return len(next(iter(batch.values())))

    def step(self, model: nn.Module, batch: Any, ctx: StepContext) -> dict[str, torch.Tensor]:
        """Loss terms averaged over the batch ('loss' is the one optimised). Tensors with a batch dimension
        are per-sample validation outputs: gathered over the whole validation set and scored by `val_metrics`."""
        raise NotImplementedError

    def micro_batches(self, batch: Any, size: int) -> list[Any]:
        """The batch as parts of about `size` samples (for `micro_batch_size`): `step` on each part returns
        terms that add up, over the parts, to the whole batch's (each part weighted by its share)."""
        raise UserError("this phase cannot split a step into micro-batches; remove training.micro_batch_size")

    def val_metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        """Metrics of the whole validation set from its gathered per-sample outputs (e.g. AUROC)."""
        return {}

    def epoch_extras(self, epoch: int) -> dict[str, float]:
        """Extra per-epoch values for the history (e.g. a loss weight)."""
        return {}


@dataclass
class FitResult:
    status: str  # complete | interrupted | stopped | checkpoint
    message: str
    epochs_done: int
    history: dict[str, list[float]]
    read_resume_state: Callable[[], dict]  # read when asked: a large held state waits on disk (HeldState)
    device: str
    is_global_zero: bool
    final_metrics: dict[str, float] = field(default_factory=dict)  # the kept state's epoch row
    top_k: list[dict] = field(default_factory=list)  # {"name", "epoch", "metric", "value", "weights"}, best first
    phases: list[dict] = field(default_factory=list)  # the loop's phase log: group tables, frozen checksums

    @property
    def resume_state(self) -> dict:
        """Everything exact resume needs, as `to_storable` gives it."""
        return self.read_resume_state()


@dataclass
class _PhaseRun:
    """The optimisation objects of the current phase."""

    index: int
    phase: Phase
    model: nn.Module  # the Fabric-wrapped model
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    steps_per_epoch: int


class _PlanItems(torch.utils.data.Dataset):
    def __init__(self, task: Task, items: list[Any]) -> None:
        self.task, self.items = task, items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Any:
        return self.task.load(self.items[i])


def _as_is(batch: Any) -> Any:
    return batch


def close_process_group() -> None:
    """Destroy the default torch.distributed process group if one is open."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class Engine:
    def __init__(self, settings: RunSettings, reporter: ProgressReporter | None = None,
                 on_checkpoint: Callable[[FitResult], None] | None = None, spill_dir: Path | None = None,
                 hyperparameters: dict[str, Any] | None = None) -> None:
        """`spill_dir`: where a large last good state waits (HeldState); None keeps it in memory.
        `hyperparameters`: what the live logs record about the run (its config)."""
        from lightning.fabric import Fabric
        from lightning_utilities.core import rank_zero

        self.settings = settings
        self.reporter = reporter or ProgressReporter(quiet=True)
        self.on_checkpoint = on_checkpoint
        self.spill_dir = spill_dir
        if settings.threads:
            torch.set_num_threads(settings.threads)
        # Fabric announces mixed precision on stderr even under --quiet; the run's device line names it
        rank_zero.log.setLevel(logging.WARNING)  # the logger Lightning's rank_zero_info writes to
        if settings.logger and not settings.log_dir:
            raise ValueError("a logger needs RunSettings.log_dir")
        self.fabric = Fabric(accelerator=settings.accelerator, devices=settings.devices,
                             num_nodes=settings.num_nodes, strategy=settings.strategy,
                             precision=settings.precision, loggers=fabric_loggers(settings.logger, settings.log_dir))
        self.live = LiveLogs(self.fabric)
        self.hyperparameters = hyperparameters or {}

    def launch(self) -> None:
        """Start the other processes of a distributed run (each re-runs the command) and join them. The process
        group is closed at exit: left open, gloo's threads can abort the interpreter's shutdown after a run that
        succeeded ("terminate called without an active exception", exit code -6)."""
        self.fabric.launch()
        if self.fabric.world_size > 1:
            atexit.register(close_process_group)

    @property
    def is_global_zero(self) -> bool:
        return self.fabric.is_global_zero

    # --- the loop --------------------------------------------------------------------------------------------
    def fit(self, task: Task, resume: dict | None = None) -> FitResult:
        # from here on large step intermediates reuse freed pages instead of faulting in new ones; not earlier,
        # so that what loading the data freed went back to the system (2 x 20,000 cells x 8,000 genes: 0.65 GB)
        keep_freed_memory()
        fabric, raw = self.fabric, task.model
        phases = [p.resolved(self.settings) for p in task.phases()]
        total_epochs = sum(p.epochs for p in phases)
        hooks: list[Hook] = [task, *task.hooks()]
        stored = from_storable(resume) if resume is not None else None
        loop = self._restore(stored, raw, hooks) if stored is not None else LoopState()
        if resume is None and fabric.world_size > 1:  # same weights (DDP broadcasts them), own dropout noise
            torch.manual_seed(self.settings.seed * 1000 + fabric.global_rank)
        if not fabric.is_global_zero:
            self.reporter.quiet, self.reporter.rich = True, False
        run: _PhaseRun | None = None
        last_good = HeldState(self.spill_dir)  # what a stop returns to (a resumed run with nothing left: resume)
        last_good.hold_storable(resume or {})

        def result(status: str, message: str, held: HeldState) -> FitResult:
            history = held.loop["history"]
            final = self._kept_row(loop) if status == "complete" else {k: v[-1] for k, v in history.items()}
            return FitResult(status, message, int(held.loop["epoch"]), history, held.get, self._device_name(),
                             fabric.is_global_zero, final, self._top_k(loop), list(held.loop.get("phase_log", [])))

        status = "failed"
        try:
            with Signals() as signals:
                while loop.epoch < total_epochs and not loop.finished:
                    index = phase_at(phases, loop.epoch)
                    if run is None or run.index != index:
                        first = run is None
                        run = self._enter_phase(task, phases, index, stored if first else None, loop)
                        if first:
                            for hook in hooks:
                                hook.on_fit_start(raw)
                            self.reporter.start(total_epochs, run.steps_per_epoch, loop.epoch, unit=task.batch_unit)
                            if self.live.loggers:
                                self.live.start(self.hyperparameters)
                                self.reporter.log(f"live logs: {self.live.where}")
                            last_good.hold(self._state(task, hooks, run, loop))
                    loop.phase = index
                    try:
                        if not self._train_epoch(task, hooks, run, loop, signals):  # the state mid-epoch
                            last_good.hold(self._state(task, hooks, run, loop))
                            status = "interrupted"
                            return result("interrupted", f"{signals.received} at epoch {loop.epoch + 1}, step "
                                          f"{loop.step_in_epoch}", last_good)
                        interrupted = self._end_epoch(task, hooks, run, loop, signals)
                    except TrainingStopped as exc:
                        self._restore(last_good.get(), raw, hooks)
                        status = "stopped"
                        return result("stopped", str(exc), last_good)
                    if self._update_monitor(task, loop, raw):
                        self._stop_early(phases, index, loop)
                    if phase_at(phases, loop.epoch) != index or loop.epoch >= total_epochs or loop.finished:
                        loop.bad_epochs = 0  # each phase gets its own patience
                        self._close_phase(raw, loop, index)  # its end state, before any kept state is restored
                    last_good.hold(self._state(task, hooks, run, loop))  # the previous one is released first
                    if interrupted:  # a signal arrived during validation or between epochs
                        status = "interrupted"
                        return result("interrupted", f"{signals.received} after epoch {loop.epoch}", last_good)
                    if loop.finished:
                        self.reporter.log(f"finished early: {loop.finished}")
                    every = self.settings.checkpoint_every
                    if every and loop.epoch % every == 0 and loop.epoch < total_epochs and self.on_checkpoint:
                        self.on_checkpoint(result("checkpoint", "", last_good))
            status = "complete"
        finally:
            self.reporter.close()
            self.live.close(status)
        if loop.top_k:  # the kept state is the best by the monitored metric
            raw.load_state_dict(from_storable(loop.top_k[0]["weights"]))
        return result("complete", "", last_good)

    def _train_epoch(self, task: Task, hooks: list[Hook], run: _PhaseRun, loop: LoopState,
                     signals: Signals) -> bool:
        """One epoch of optimizer steps from `loop.step_in_epoch`; False when a signal interrupted it. Every
        decision to leave the epoch is agreed by all processes at the same step."""
        fabric, world = self.fabric, self.fabric.world_size
        epoch, t0, cpu0 = loop.epoch, time.monotonic(), time.process_time()
        run.model.train()
        plan = task.train_plan(epoch, fabric.global_rank, world)
        if not plan:
            raise UserError(f"epoch {epoch + 1} has no training batches: too few training cells for "
                            "training.batch_size (or the validation split took them)")
        for batch in self._batches(task, plan[loop.step_in_epoch:]):
            batch = fabric.to_device(batch)
            ctx = StepContext(epoch, loop.global_step, run.phase.name, run.index)
            run.optimizer.zero_grad(set_to_none=True)
            values = self._forward_backward(task, run, batch, ctx)
            if self._agree(not math.isfinite(values["loss"]))[0]:
                raise TrainingStopped(f"loss became non-finite at epoch {epoch + 1}, step {loop.step_in_epoch + 1}; "
                                      "lower training.lr or set training.grad_clip")
            if run.phase.grad_clip > 0:
                fabric.clip_gradients(run.model, run.optimizer, max_norm=run.phase.grad_clip, error_if_nonfinite=False)
            run.optimizer.step()
            run.scheduler.step()
            n = task.batch_size_of(batch)
            for k, v in values.items():
                loop.sums[k] = loop.sums.get(k, 0.0) + v * n
            loop.count += n
            loop.step_in_epoch += 1
            loop.global_step += 1
            stop, finish = self._run_hooks(hooks, "after_optimizer_step", task.model, ctx, values)
            if self.settings.max_steps and loop.global_step >= self.settings.max_steps and not finish:
                finish = f"training.max_steps = {self.settings.max_steps} reached"
            interrupted = self._settle(stop, finish, loop, signals)
            lrs = {g["name"]: g["lr"] for g in run.optimizer.param_groups}
            self.reporter.step(epoch, loop.global_step, values["loss"], (min(lrs.values()), max(lrs.values())),
                               loop.count * world / max(time.monotonic() - t0, 1e-9))
            self.live.step(values, lrs, run.index, loop.global_step)
            del batch  # before the next one is loaded: two steps' batches are never held at once
            if loop.finished:  # complete and validate this epoch first (a signal is answered after it)
                break
            if interrupted:
                return False
        # time of the training steps, loading included (all threads of this process for the CPU time)
        loop.sums["_time_s"] = loop.sums.get("_time_s", 0.0) + time.monotonic() - t0
        loop.sums["_cpu_s"] = loop.sums.get("_cpu_s", 0.0) + time.process_time() - cpu0
        return True

    def _forward_backward(self, task: Task, run: _PhaseRun, batch: Any, ctx: StepContext) -> dict[str, float]:
        """Gradients of one step into the parameters, and its scalar terms. With `micro_batch_size` the batch
        runs as parts whose gradients accumulate (DDP synchronises on the last part only): the same step with
        the activations of one part in memory."""
        size = self.settings.micro_batch_size
        parts = task.micro_batches(batch, size) if size else [batch]
        values: dict[str, float] = {}
        for i, part in enumerate(parts):
            with self.fabric.no_backward_sync(run.model, enabled=i < len(parts) - 1):
                out = task.step(run.model, part, ctx)
                self.fabric.backward(out["loss"])
            for k, v in out.items():
                if v.ndim == 0:
                    values[k] = values.get(k, 0.0) + float(v.detach())
        return values

    def _end_epoch(self, task: Task, hooks: list[Hook], run: _PhaseRun, loop: LoopState,
                   signals: Signals) -> bool:
        """Training means, whole-set validation, lr per group and timing into the history; reset the sums.
        Returns whether a signal (on any process) asks to stop."""
        epoch, model = loop.epoch, run.model
        elapsed, cpu = loop.sums.pop("_time_s", 0.0), loop.sums.pop("_cpu_s", 0.0)
        totals = self._sum(loop.sums | {"_count": float(loop.count)})
        count = max(totals.pop("_count"), 1.0)
        row = {"epoch": float(epoch + 1), "phase": float(run.index)}
        row |= {f"train_{k}": v / count for k, v in totals.items()}
        ctx = StepContext(epoch, loop.global_step, run.phase.name, run.index, train=False)
        metrics = self._validate(task, hooks, model, ctx)
        stop, finish = None, None
        if metrics:
            stop, finish = self._run_hooks(hooks, "on_validation_end", task.model, ctx, metrics)
        row |= metrics
        lrs = {g["name"]: g["lr"] for g in run.optimizer.param_groups}
        row["lr"] = max(lrs.values())
        if len(set(lrs.values())) > 1:
            row |= {f"lr_{name}": value for name, value in lrs.items()}
        row |= {"epoch_time_s": elapsed, "epoch_cpu_s": cpu, "cells_per_s": count / max(elapsed, 1e-9)}
        row |= task.epoch_extras(epoch)
        if stop is None:
            stop, also = self._run_hooks(hooks, "on_epoch_end", task.model, ctx, row)
            finish = finish or also
        loop.record(row)
        self.reporter.epoch_end(epoch, row)
        self.live.epoch(row, loop.global_step)
        loop.epoch, loop.step_in_epoch, loop.sums, loop.count = epoch + 1, 0, {}, 0
        return self._settle(stop, finish, loop, signals)

    def _validate(self, task: Task, hooks: list[Hook], model: nn.Module, ctx: StepContext) -> dict[str, float]:
        plan = task.val_plan(self.fabric.global_rank, self.fabric.world_size)
        some, empty = self._agree(bool(plan), not plan)
        if not some:
            return {}
        if empty:  # every process must take part in the reductions below
            raise UserError("a process has no validation cells: use fewer devices or a larger "
                            "training.val_fraction")
        model.eval()
        sums: dict[str, float] = {}
        samples: dict[str, list[torch.Tensor]] = {}
        n_val = 0
        with torch.no_grad():
            for item in plan:
                batch = self.fabric.to_device(task.load(item))
                n = task.batch_size_of(batch)
                out = task.step(model, batch, ctx)
                for k, v in out.items():
                    if v.ndim == 0:
                        sums[k] = sums.get(k, 0.0) + float(v) * n
                    else:
                        samples.setdefault(k, []).append(v.detach())
                n_val += n
                for hook in hooks:
                    hook.on_validation_batch(task.model, ctx, batch, out)
        totals = self._sum(sums | {"_count": float(n_val)})
        count = max(totals.pop("_count"), 1.0)
        metrics = {f"val_{k}": v / count for k, v in totals.items()}
        if samples:
            gathered = {k: gather_rows(self.fabric, torch.cat(v)).float().cpu().numpy() for k, v in samples.items()}
            metrics |= {f"val_{k}": float(v) for k, v in task.val_metrics(gathered).items()}
        return metrics

    # --- phases, monitor, state ------------------------------------------------------------------------------
    def _enter_phase(self, task: Task, phases: list[Phase], index: int, stored: dict | None,
                     loop: LoopState) -> _PhaseRun:
        """Parameter groups, optimizer and scheduler of phase `index`. The freeze plans of the phases before it
        are applied first (they compose), so a resumed run trains exactly the parameters the original did;
        the model is set up again because DDP must know which parameters now have gradients. The phase's
        parameter-group table and the checksums of its frozen tensors go into the loop's phase log (once: a
        resumed run keeps the record of its first entry)."""
        fabric, raw, phase = self.fabric, task.model, phases[index]
        for earlier in phases[:index]:
            earlier.freeze.apply(raw)
        groups = param_groups(raw, phase.lr, phase.weight_decay, phase.freeze)
        table = group_table(raw, groups)
        model = fabric.setup_module(raw)
        if not any(record["index"] == index for record in loop.phase_log):  # after set-up: in the run's dtype
            frozen = [n for n, p in raw.named_parameters() if not p.requires_grad]
            loop.phase_log.append({"index": index, "name": phase.name, "epochs": phase.epochs, "groups": table,
                                   "frozen_before": tensor_checksums(raw, frozen), "frozen_after": {}})
        optimizer = fabric.setup_optimizers(build_optimizer(groups, phase.lr, self.settings.optimizer))
        steps = len(task.train_plan(first_epoch(phases, index), fabric.global_rank, fabric.world_size))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda(phase.scheduler, phase.epochs * steps, phase.warmup_ratio, phase.min_lr_ratio))
        if stored is not None and stored.get("optimizer_phase", 0) == index:
            optimizer.load_state_dict(stored["optimizer"])
            scheduler.load_state_dict(stored["scheduler"])
        if len(phases) > 1 or len(table) > 1:  # more than one plain group of every parameter
            trainable = sum(p.numel() for p in raw.parameters() if p.requires_grad)
            self.reporter.log(f"phase {index + 1}/{len(phases)} '{phase.name}': {phase.epochs} epochs, "
                              f"{trainable:,} of {sum(p.numel() for p in raw.parameters()):,} parameters trained")
            for line in format_group_table(table):
                self.reporter.log(f"  {line}")
        return _PhaseRun(index, phase, model, optimizer, scheduler, steps)

    @staticmethod
    def _close_phase(raw: nn.Module, loop: LoopState, index: int) -> None:
        """Checksums of the phase's frozen tensors as it ends (equal to those at its start, or training leaked)."""
        for record in loop.phase_log:
            if record["index"] == index:
                record["frozen_after"] = tensor_checksums(raw, list(record["frozen_before"]))

    def _update_monitor(self, task: Task, loop: LoopState, raw: nn.Module) -> bool:
        """Keep the top-k states by the monitored metric; True when early stopping should end the run."""
        s = self.settings
        if not s.monitoring:
            return False
        row = {k: v[-1] for k, v in loop.history.items()}
        key = f"val_{task.monitor}" if f"val_{task.monitor}" in row else f"train_{task.monitor}"
        if key not in row:
            raise UserError(f"the monitored metric '{task.monitor}' is not among this phase's metrics "
                            f"({', '.join(k for k in row if k.startswith(('val_', 'train_')))}); turn off "
                            "training.early_stopping_patience and training.save_top_k, or give it validation cells")
        loop.monitor_key, value = key, row[key]
        if math.isfinite(value):
            sign = 1.0 if task.monitor_mode == "min" else -1.0
            entry = {"epoch": loop.epoch, "value": value, "weights": to_storable(raw.state_dict()), "row": row}
            # stable sort: a tie keeps the earlier state, so only a strict improvement counts
            loop.top_k = sorted([*loop.top_k, entry], key=lambda e: sign * e["value"])[: max(1, s.save_top_k)]
        improved = bool(loop.top_k) and loop.top_k[0]["epoch"] == loop.epoch
        loop.bad_epochs = 0 if improved else loop.bad_epochs + 1
        patience = s.early_stopping_patience
        return bool(patience) and loop.epoch >= s.min_epochs and loop.bad_epochs >= patience

    def _kept_row(self, loop: LoopState) -> dict[str, float]:
        if loop.top_k:
            return dict(loop.top_k[0]["row"])
        return {k: v[-1] for k, v in loop.history.items()}

    def _top_k(self, loop: LoopState) -> list[dict]:
        if self.settings.save_top_k == 0:
            return []
        return [{"name": f"top{i + 1}", "epoch": e["epoch"], "metric": loop.monitor_key, "value": e["value"],
                 "weights": e["weights"]} for i, e in enumerate(loop.top_k)]

    def _state(self, task: Task, hooks: list[Hook], run: _PhaseRun, loop: LoopState) -> dict:
        """Everything exact resume needs, referencing the live tensors (every rank must call it: RNG states are
        gathered)."""
        return {"model": task.model.state_dict(), "optimizer": run.optimizer.state_dict(),
                "scheduler": run.scheduler.state_dict(), "optimizer_phase": run.index,
                "rng": capture_rng(self.fabric), "task": task.state_dict(),
                "hooks": [h.state_dict() for h in hooks[1:]], "loop": loop.to_dict()}

    def _restore(self, state: dict, raw: nn.Module, hooks: list[Hook]) -> LoopState:
        """Model, task and hook states (and, on resume, this rank's RNG stream) from a snapshot."""
        state = from_storable(state)
        raw.load_state_dict(state["model"])
        hooks[0].load_state_dict(state.get("task", {}))
        for hook, hook_state in zip(hooks[1:], state.get("hooks", []), strict=False):
            hook.load_state_dict(hook_state)
        restore_rng(state["rng"], self.fabric.global_rank, self.fabric.world_size)
        return LoopState.from_dict(state["loop"])

    # --- helpers ---------------------------------------------------------------------------------------------
    def _batches(self, task: Task, items: list[Any]) -> Iterator[Any]:
        """Batches of the remaining steps, loaded ahead by worker processes when runtime.num_workers > 0. Plans
        are deterministic and `load` depends only on the item, so workers keep exact resume."""
        workers = self.settings.num_workers
        if not workers or not task.loads_in_workers or len(items) < 2:
            yield from (task.load(item) for item in items)
            return
        # its own generator: a DataLoader otherwise draws worker seeds from the global RNG, shifting dropout noise
        yield from torch.utils.data.DataLoader(_PlanItems(task, items), batch_size=None, shuffle=False,
                                               num_workers=min(workers, len(items)), collate_fn=_as_is,
                                               generator=torch.Generator().manual_seed(0))

    def _stop_early(self, phases: list[Phase], index: int, loop: LoopState) -> None:
        """Early stopping ends the current phase: the run goes on with the next one, or ends after the last."""
        following = first_epoch(phases, index + 1)
        where = f"phase '{phases[index].name}'" if len(phases) > 1 else "training"
        self.reporter.log(f"early stopping of {where}: no improvement of {loop.monitor_key} in "
                          f"{self.settings.early_stopping_patience} epochs")
        if index + 1 < len(phases):
            loop.epoch = following
        else:
            loop.finished = f"early stopping after {loop.epoch} epochs"

    @staticmethod
    def _run_hooks(hooks: list[Hook], method: str, *args: Any) -> tuple[str | None, str | None]:
        """Call every hook in order: a stop ends the round at once; a finish is remembered while the rest run
        (an EMA teacher still takes the last step, a guard still checks it). Returns (stop, finish) messages."""
        finish = None
        for hook in hooks:
            try:
                getattr(hook, method)(*args)
            except TrainingStopped as exc:
                return str(exc), finish
            except TrainingFinished as exc:
                finish = finish or str(exc)
        return None, finish

    def _settle(self, stop: str | None, finish: str | None, loop: LoopState, signals: Signals) -> bool:
        """Apply, on every process alike, a stop or finish raised on any of them; returns whether a signal
        reached any of them."""
        stopped, finished, interrupted = self._agree(stop is not None, finish is not None, bool(signals.received))
        if stopped:
            raise TrainingStopped(self._shared_message(stop))
        if finished:
            loop.finished = self._shared_message(finish)
        if interrupted and not signals.received:
            signals.received = "SIGINT (another process)"
        return interrupted

    def _agree(self, *flags: bool) -> list[bool]:
        """Whether any process set each flag (one all_reduce), so all processes take the same branch."""
        if self.fabric.world_size == 1:
            return [bool(f) for f in flags]
        reduced = self.fabric.all_reduce(torch.tensor([float(f) for f in flags], device=self.fabric.device),
                                         reduce_op="max")
        return [bool(v > 0) for v in reduced.tolist()]

    def _shared_message(self, local: str | None) -> str:
        """The message of the process that raised (the first one, by rank), on every process."""
        if self.fabric.world_size == 1:
            return local or ""
        import torch.distributed as dist

        messages: list[str | None] = [None] * self.fabric.world_size
        dist.all_gather_object(messages, local)
        return next(m for m in messages if m)

    def _sum(self, values: dict[str, float]) -> dict[str, float]:
        if self.fabric.world_size == 1 or not values:
            return values
        keys = sorted(values)
        total = self.fabric.all_reduce(torch.tensor([values[k] for k in keys], dtype=torch.float64),
                                       reduce_op="sum")
        return dict(zip(keys, total.tolist(), strict=True))

    def _device_name(self) -> str:
        fabric = self.fabric
        return f"{fabric.device} x{fabric.world_size} ({fabric.strategy.__class__.__name__}, " \
               f"{self.settings.precision})"
