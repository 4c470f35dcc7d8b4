"""One explicit training loop for every phase; Lightning Fabric handles devices, precision and DDP.

A phase describes itself as a `Task` (model, mini-batch plans, one step, optional phases and hooks); the engine
owns optimisation, phase boundaries, schedules, clipping, whole-set validation, the monitored metric (early
stopping, top-k states), the non-finite guard, checkpoints, signals and exact resume.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch
from torch import nn

from stagekit.errors import TrainingFinished, TrainingStopped, UserError
from stagekit.train.hooks import Hook, StepContext
from stagekit.train.metrics import gather_rows
from stagekit.train.optim import FreezePlan, build_optimizer, lr_lambda, param_groups
from stagekit.train.phases import Phase, first_epoch, phase_at
from stagekit.train.progress import ProgressReporter
from stagekit.train.state import LoopState, capture_rng, from_storable, restore_rng, to_storable


@dataclass
class RunSettings:
    epochs: int = 10
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float = 0.0
    scheduler: str = "constant"
    warmup_ratio: float = 0.0
    min_lr_ratio: float = 0.0
    early_stopping_patience: int = 0
    min_epochs: int = 0
    save_top_k: int = 0
    checkpoint_every: int = 0
    seed: int = 0
    accelerator: str = "cpu"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    threads: int = 0
    num_workers: int = 0

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
    resume_state: dict
    device: str
    is_global_zero: bool
    final_metrics: dict[str, float] = field(default_factory=dict)  # the kept state's epoch row
    top_k: list[dict] = field(default_factory=list)  # {"name", "epoch", "metric", "value", "weights"}, best first


@dataclass
class _PhaseRun:
    """The optimisation objects of the current phase."""

    index: int
    phase: Phase
    model: nn.Module  # the Fabric-wrapped model
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    steps_per_epoch: int


class _Signals:
    """SIGINT/SIGTERM set a flag the loop checks after each step; a second SIGINT aborts at once."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


class _PlanItems(torch.utils.data.Dataset):
    def __init__(self, task: Task, items: list[Any]) -> None:
        self.task, self.items = task, items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Any:
        return self.task.load(self.items[i])


def _as_is(batch: Any) -> Any:
    return batch


class Engine:
    def __init__(self, settings: RunSettings, reporter: ProgressReporter | None = None,
                 on_checkpoint: Callable[[FitResult], None] | None = None) -> None:
        from lightning.fabric import Fabric

        self.settings = settings
        self.reporter = reporter or ProgressReporter(quiet=True)
        self.on_checkpoint = on_checkpoint
        if settings.threads:
            torch.set_num_threads(settings.threads)
        self.fabric = Fabric(accelerator=settings.accelerator, devices=settings.devices,
                             num_nodes=settings.num_nodes, strategy=settings.strategy,
                             precision=settings.precision)

    def launch(self) -> None:
        """Start the other processes of a distributed run (each re-runs the command) and join them."""
        self.fabric.launch()

    @property
    def is_global_zero(self) -> bool:
        return self.fabric.is_global_zero

    # --- the loop --------------------------------------------------------------------------------------------
    def fit(self, task: Task, resume: dict | None = None) -> FitResult:
        fabric, raw = self.fabric, task.model
        phases = [p.resolved(self.settings) for p in task.phases()]
        total_epochs = sum(p.epochs for p in phases)
        hooks: list[Hook] = [task, *task.hooks()]
        stored = from_storable(resume) if resume is not None else None
        loop = self._restore(stored, raw, hooks) if stored is not None else LoopState()
        if stored is None and fabric.world_size > 1:  # same weights (DDP broadcasts them), own dropout noise
            torch.manual_seed(self.settings.seed * 1000 + fabric.global_rank)
        if not fabric.is_global_zero:
            self.reporter.quiet, self.reporter.rich = True, False
        run: _PhaseRun | None = None
        last_good: dict = {}

        def result(status: str, message: str, state: dict) -> FitResult:
            return FitResult(status, message, loop.epoch, state["loop"]["history"], state, self._device_name(),
                             fabric.is_global_zero, self._kept_row(loop), self._top_k(loop))

        try:
            with _Signals() as signals:
                while loop.epoch < total_epochs and not loop.finished:
                    index = phase_at(phases, loop.epoch)
                    if run is None or run.index != index:
                        run = self._enter_phase(task, phases, index, stored if run is None else None)
                        if not last_good:
                            for hook in hooks:
                                hook.on_fit_start(raw)
                            self.reporter.start(total_epochs, run.steps_per_epoch, loop.epoch)
                            last_good = self._snapshot(task, hooks, run, loop)
                    loop.phase = index
                    try:
                        if not self._train_epoch(task, hooks, run, loop, signals):
                            return result("interrupted", f"{signals.received} at epoch {loop.epoch + 1}, step "
                                          f"{loop.step_in_epoch}", self._snapshot(task, hooks, run, loop))
                        self._end_epoch(task, hooks, run, loop)
                    except TrainingStopped as exc:
                        self._restore(last_good, raw, hooks)
                        return result("stopped", str(exc), last_good)
                    early_stop = self._update_monitor(task, loop, raw)
                    last_good = self._snapshot(task, hooks, run, loop)
                    if signals.received:  # arrived during validation or between epochs
                        return result("interrupted", f"{signals.received} after epoch {loop.epoch}", last_good)
                    if early_stop:
                        self.reporter.log(f"early stopping: no improvement of {loop.monitor_key} in "
                                          f"{self.settings.early_stopping_patience} epochs")
                        break
                    if loop.finished:
                        self.reporter.log(f"finished early: {loop.finished}")
                    every = self.settings.checkpoint_every
                    if every and loop.epoch % every == 0 and loop.epoch < total_epochs and self.on_checkpoint:
                        self.on_checkpoint(result("checkpoint", "", last_good))
        finally:
            self.reporter.close()
        if loop.top_k:  # the kept state is the best by the monitored metric
            raw.load_state_dict(from_storable(loop.top_k[0]["weights"]))
        return result("complete", "", last_good)

    def _train_epoch(self, task: Task, hooks: list[Hook], run: _PhaseRun, loop: LoopState,
                     signals: _Signals) -> bool:
        """One epoch of optimizer steps from `loop.step_in_epoch`; False when a signal interrupted it."""
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
            out = task.step(run.model, batch, ctx)
            loss = out["loss"]
            if self._any_rank(not bool(torch.isfinite(loss.detach())), signals):
                raise TrainingStopped(f"loss became non-finite at epoch {epoch + 1}, step {loop.step_in_epoch + 1}; "
                                      "lower training.lr or set training.grad_clip")
            run.optimizer.zero_grad(set_to_none=True)
            fabric.backward(loss)
            if run.phase.grad_clip > 0:
                fabric.clip_gradients(run.model, run.optimizer, max_norm=run.phase.grad_clip, error_if_nonfinite=False)
            run.optimizer.step()
            run.scheduler.step()
            n = task.batch_size_of(batch)
            values = {k: float(v.detach()) for k, v in out.items() if v.ndim == 0}
            for k, v in values.items():
                loop.sums[k] = loop.sums.get(k, 0.0) + v * n
            loop.count += n
            loop.step_in_epoch += 1
            loop.global_step += 1
            try:
                for hook in hooks:
                    hook.after_optimizer_step(task.model, ctx, values)
            except TrainingFinished as exc:
                loop.finished = str(exc)
            lrs = [g["lr"] for g in run.optimizer.param_groups]
            self.reporter.step(epoch, loop.global_step, values["loss"], (min(lrs), max(lrs)),
                               loop.count * world / max(time.monotonic() - t0, 1e-9))
            if self._any_rank(False, signals) or signals.received:
                return False
            if loop.finished:
                break
        # time of the training steps, loading included (all threads of this process for the CPU time)
        loop.sums["_time_s"] = loop.sums.get("_time_s", 0.0) + time.monotonic() - t0
        loop.sums["_cpu_s"] = loop.sums.get("_cpu_s", 0.0) + time.process_time() - cpu0
        return True

    def _end_epoch(self, task: Task, hooks: list[Hook], run: _PhaseRun, loop: LoopState) -> None:
        """Training means, whole-set validation, lr per group and timing into the history; reset the sums."""
        epoch, model = loop.epoch, run.model
        elapsed, cpu = loop.sums.pop("_time_s", 0.0), loop.sums.pop("_cpu_s", 0.0)
        totals = self._sum(loop.sums | {"_count": float(loop.count)})
        count = max(totals.pop("_count"), 1.0)
        row = {"epoch": float(epoch + 1), "phase": float(run.index)}
        row |= {f"train_{k}": v / count for k, v in totals.items()}
        ctx = StepContext(epoch, loop.global_step, run.phase.name, run.index, train=False)
        row |= self._validate(task, hooks, model, ctx)
        lrs = {g["name"]: g["lr"] for g in run.optimizer.param_groups}
        row["lr"] = max(lrs.values())
        if len(set(lrs.values())) > 1:
            row |= {f"lr_{name}": value for name, value in lrs.items()}
        row |= {"epoch_time_s": elapsed, "epoch_cpu_s": cpu, "cells_per_s": count / max(elapsed, 1e-9)}
        row |= task.epoch_extras(epoch)
        for hook in hooks:
            hook.on_epoch_end(task.model, ctx, row)
        loop.record(row)
        self.reporter.epoch_end(epoch, row)
        loop.epoch, loop.step_in_epoch, loop.sums, loop.count = epoch + 1, 0, {}, 0

    def _validate(self, task: Task, hooks: list[Hook], model: nn.Module, ctx: StepContext) -> dict[str, float]:
        plan = task.val_plan(self.fabric.global_rank, self.fabric.world_size)
        if not plan:
            return {}
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
        for hook in hooks:
            hook.on_validation_end(task.model, ctx, metrics)
        return metrics

    # --- phases, monitor, state ------------------------------------------------------------------------------
    def _enter_phase(self, task: Task, phases: list[Phase], index: int, stored: dict | None) -> _PhaseRun:
        """Parameter groups, optimizer and scheduler of phase `index`. The freeze plans of the phases before it
        are applied first (they compose), so a resumed run trains exactly the parameters the original did;
        the model is set up again because DDP must know which parameters now have gradients."""
        fabric, raw, phase = self.fabric, task.model, phases[index]
        for earlier in phases[:index]:
            earlier.freeze.apply(raw)
        groups = param_groups(raw, phase.lr, phase.weight_decay, phase.freeze)
        model = fabric.setup_module(raw)
        optimizer = fabric.setup_optimizers(build_optimizer(groups, phase.lr))
        steps = len(task.train_plan(first_epoch(phases, index), fabric.global_rank, fabric.world_size))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda(phase.scheduler, phase.epochs * steps, phase.warmup_ratio, phase.min_lr_ratio))
        if stored is not None and stored.get("optimizer_phase", 0) == index:
            optimizer.load_state_dict(stored["optimizer"])
            scheduler.load_state_dict(stored["scheduler"])
        if len(phases) > 1:
            trainable = sum(p.numel() for p in raw.parameters() if p.requires_grad)
            self.reporter.log(f"phase {index + 1}/{len(phases)} '{phase.name}': {phase.epochs} epochs, "
                              f"{trainable:,} of {sum(p.numel() for p in raw.parameters()):,} parameters trained, "
                              f"{len(groups)} parameter groups")
        return _PhaseRun(index, phase, model, optimizer, scheduler, steps)

    def _update_monitor(self, task: Task, loop: LoopState, raw: nn.Module) -> bool:
        """Keep the top-k states by the monitored metric; True when early stopping should end the run."""
        s = self.settings
        if not s.monitoring:
            return False
        row = {k: v[-1] for k, v in loop.history.items()}
        key = f"val_{task.monitor}" if f"val_{task.monitor}" in row else f"train_{task.monitor}"
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

    def _snapshot(self, task: Task, hooks: list[Hook], run: _PhaseRun, loop: LoopState) -> dict:
        """Everything exact resume needs (every rank must call it: RNG states are gathered)."""
        return to_storable({"model": task.model.state_dict(), "optimizer": run.optimizer.state_dict(),
                            "scheduler": run.scheduler.state_dict(), "optimizer_phase": run.index,
                            "rng": capture_rng(self.fabric), "task": task.state_dict(),
                            "hooks": [h.state_dict() for h in hooks[1:]], "loop": loop.to_dict()})

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

    def _any_rank(self, flag: bool, signals: _Signals) -> bool:
        """Whether any process has `flag` set; also shares a received signal so all ranks stop at one step."""
        world = self.fabric.world_size
        if world == 1:
            return flag
        both = torch.tensor([float(flag), float(bool(signals.received))], device=self.fabric.device)
        both = self.fabric.all_reduce(both, reduce_op="max")
        if both[1] > 0 and not signals.received:
            signals.received = "SIGINT (another process)"
        return bool(both[0] > 0)

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
