"""One explicit training loop for every phase; Lightning Fabric handles devices, precision and DDP.

A phase describes itself as a `Task` (model, mini-batch plans, one step); the engine owns optimisation,
schedules, clipping, validation, early stopping, the non-finite guard, checkpoints, signals and resume.
"""

from __future__ import annotations

import copy
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from stagekit.errors import TrainingStopped
from stagekit.train.optim import FreezePlan, build_optimizer, lr_lambda, param_groups
from stagekit.train.progress import ProgressReporter
from stagekit.train.state import from_storable, to_storable


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
    checkpoint_every: int = 0
    seed: int = 0
    accelerator: str = "cpu"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    threads: int = 0

    @classmethod
    def from_config(cls, training: dict[str, Any], runtime: dict[str, Any]) -> RunSettings:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in (training | runtime).items() if k in names})


class Task:
    """What a phase hands the engine. Subclasses set `model` and implement the plans, `load` and `step`."""

    model: nn.Module
    monitor: str = "loss"  # validation (or, without validation, training) metric early stopping watches

    def freeze_plan(self) -> FreezePlan:
        return FreezePlan()

    def train_plan(self, epoch: int, rank: int, world: int) -> list[Any]:
        """Cheap descriptors (e.g. row indices) of this process's steps in `epoch`, deterministic."""
        raise NotImplementedError

    def val_plan(self, rank: int, world: int) -> list[Any]:
        return []

    def load(self, item: Any) -> Any:
        """Materialise one descriptor into a batch (tensors on the CPU; the engine moves them)."""
        raise NotImplementedError

    def batch_size_of(self, batch: Any) -> int:
        return len(next(iter(batch.values())))

    def step(self, model: nn.Module, batch: Any, epoch: int, train: bool) -> dict[str, torch.Tensor]:
        """Loss terms averaged over the batch; 'loss' is the one optimised."""
        raise NotImplementedError

    def after_optimizer_step(self, model: nn.Module) -> None:
        """Hook for EMA teachers, target updates and similar; runs after every optimizer step.

        It may raise TrainingStopped (the engine keeps the last good state) or set `finish_reason` to end
        training early as a success (e.g. a convergence rule).
        """

    finish_reason: str | None = None

    def state_dict(self) -> dict:
        """Task state that resume must restore (numpy arrays and scalars), e.g. a clustering target."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def epoch_extras(self, epoch: int) -> dict[str, float]:
        """Extra per-epoch values for the history (e.g. a loss weight)."""
        return {}


@dataclass
class FitResult:
    status: str  # complete | interrupted | stopped
    message: str
    epochs_done: int
    history: dict[str, list[float]]
    resume_state: dict
    device: str
    is_global_zero: bool
    final_metrics: dict[str, float] = field(default_factory=dict)


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

    def _sum(self, values: dict[str, float]) -> dict[str, float]:
        if self.fabric.world_size == 1 or not values:
            return values
        keys = sorted(values)
        total = self.fabric.all_reduce(torch.tensor([values[k] for k in keys], dtype=torch.float64),
                                       reduce_op="sum")
        return dict(zip(keys, total.tolist(), strict=True))

    def fit(self, task: Task, resume: dict | None = None) -> FitResult:
        s, fabric = self.settings, self.fabric
        rank, world = fabric.global_rank, fabric.world_size
        raw_model = task.model
        groups = param_groups(raw_model, s.lr, s.weight_decay, task.freeze_plan())
        model, optimizer = fabric.setup(raw_model, build_optimizer(groups, s.lr))
        steps_per_epoch = len(task.train_plan(0, rank, world))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda(s.scheduler, s.epochs * steps_per_epoch, s.warmup_ratio, s.min_lr_ratio))
        loop = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best": math.inf, "bad_epochs": 0,
                "sums": {}, "count": 0, "history": {}, "best_model": None}
        if resume is not None:
            state = from_storable(resume)
            raw_model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["rng"]["torch"])
            task.load_state_dict(state.get("task", {}))
            loop = state["loop"]
        elif world > 1:  # same initial weights (DDP broadcasts them), different dropout noise per process
            torch.manual_seed(s.seed * 1000 + rank)
        if not fabric.is_global_zero:
            self.reporter.quiet, self.reporter.rich = True, False
        device = f"{fabric.device} x{world} ({fabric.strategy.__class__.__name__}, {s.precision})"

        def snapshot() -> dict:
            return to_storable({"model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                                "scheduler": scheduler.state_dict(), "rng": {"torch": torch.get_rng_state()},
                                "task": copy.deepcopy(task.state_dict()), "loop": copy.deepcopy(loop)})

        def result(status: str, message: str, state: dict) -> FitResult:
            return FitResult(status, message, loop["epoch"], state["loop"]["history"], state, device,
                             fabric.is_global_zero)

        last_good = snapshot()
        self.reporter.start(s.epochs, steps_per_epoch, loop["epoch"])
        try:
            with _Signals() as signals:
                while loop["epoch"] < s.epochs:
                    epoch, t0, cpu0 = loop["epoch"], time.monotonic(), time.process_time()
                    model.train()
                    plan = task.train_plan(epoch, rank, world)
                    for i in range(loop["step_in_epoch"], len(plan)):
                        batch = fabric.to_device(task.load(plan[i]))
                        out = task.step(model, batch, epoch, train=True)
                        loss = out["loss"]
                        finite = torch.isfinite(loss.detach()).float()
                        if world > 1:
                            finite = fabric.all_reduce(finite, reduce_op="min")
                        if finite.item() < 1:
                            raw_model.load_state_dict(from_storable(last_good["model"]))
                            return result("stopped", f"loss became non-finite at epoch {epoch + 1}, step {i + 1}; "
                                          "lower training.lr or set training.grad_clip", last_good)
                        optimizer.zero_grad(set_to_none=True)
                        fabric.backward(loss)
                        if s.grad_clip > 0:
                            fabric.clip_gradients(model, optimizer, max_norm=s.grad_clip, error_if_nonfinite=False)
                        optimizer.step()
                        scheduler.step()
                        try:
                            task.after_optimizer_step(model)
                        except TrainingStopped as exc:
                            raw_model.load_state_dict(from_storable(last_good["model"]))
                            task.load_state_dict(from_storable(last_good["task"]))
                            return result("stopped", str(exc), last_good)
                        n = task.batch_size_of(batch)
                        for k, v in out.items():
                            loop["sums"][k] = loop["sums"].get(k, 0.0) + float(v.detach()) * n
                        loop["count"] += n
                        loop["step_in_epoch"] = i + 1
                        loop["global_step"] += 1
                        elapsed = max(time.monotonic() - t0, 1e-9)
                        self.reporter.step(epoch, loop["global_step"], float(loss.detach()),
                                           scheduler.get_last_lr()[0], loop["count"] * world / elapsed)
                        if signals.received:
                            return result("interrupted", f"{signals.received} at epoch {epoch + 1}, step {i + 1}",
                                          snapshot())
                        if task.finish_reason:
                            break
                    train_time, train_cpu = time.monotonic() - t0, time.process_time() - cpu0
                    row = self._epoch_row(task, model, loop, epoch, train_time, scheduler.get_last_lr()[0])
                    row["epoch_cpu_s"] = train_cpu  # all threads of this process, training steps only
                    for k, v in row.items():
                        loop["history"].setdefault(k, []).append(v)
                    self.reporter.epoch_end(epoch, row)
                    loop.update(epoch=epoch + 1, step_in_epoch=0, sums={}, count=0)
                    stop = self._early_stopping(loop, row, task, raw_model)
                    last_good = snapshot()
                    if signals.received:  # arrived during validation or between epochs
                        return result("interrupted", f"{signals.received} after epoch {epoch + 1}", last_good)
                    if stop:
                        self.reporter.log(f"early stopping: no improvement in {s.early_stopping_patience} epochs")
                        break
                    if task.finish_reason:
                        self.reporter.log(f"finished early: {task.finish_reason}")
                        break
                    if (s.checkpoint_every and loop["epoch"] % s.checkpoint_every == 0
                            and loop["epoch"] < s.epochs and self.on_checkpoint):
                        self.on_checkpoint(result("checkpoint", "", last_good))
        finally:
            self.reporter.close()
        if loop["best_model"] is not None:  # early stopping keeps the best weights
            raw_model.load_state_dict(from_storable(loop["best_model"]))
        return result("complete", "", last_good)

    def _epoch_row(self, task: Task, model: nn.Module, loop: dict, epoch: int, train_time: float,
                   lr: float) -> dict[str, float]:
        totals = self._sum(loop["sums"] | {"_count": float(loop["count"])})
        count = max(totals.pop("_count"), 1.0)
        row = {"epoch": float(epoch + 1)} | {f"train_{k}": v / count for k, v in totals.items()}
        val_plan = task.val_plan(self.fabric.global_rank, self.fabric.world_size)
        if val_plan:
            model.eval()
            sums: dict[str, float] = {}
            n_val = 0
            with torch.no_grad():
                for item in val_plan:
                    batch = self.fabric.to_device(task.load(item))
                    n = task.batch_size_of(batch)
                    for k, v in task.step(model, batch, epoch, train=False).items():
                        sums[k] = sums.get(k, 0.0) + float(v) * n
                    n_val += n
            totals = self._sum(sums | {"_count": float(n_val)})
            count_val = max(totals.pop("_count"), 1.0)
            row |= {f"val_{k}": v / count_val for k, v in totals.items()}
        row |= {"lr": lr, "epoch_time_s": train_time, "cells_per_s": count / max(train_time, 1e-9)}
        return row | task.epoch_extras(epoch)

    def _early_stopping(self, loop: dict, row: dict[str, float], task: Task, raw_model: nn.Module) -> bool:
        patience = self.settings.early_stopping_patience
        if not patience:
            return False
        key = f"val_{task.monitor}" if f"val_{task.monitor}" in row else f"train_{task.monitor}"
        if row[key] < loop["best"]:
            loop.update(best=row[key], bad_epochs=0, best_model=to_storable(raw_model.state_dict()))
            return False
        loop["bad_epochs"] += 1
        return loop["bad_epochs"] >= patience
