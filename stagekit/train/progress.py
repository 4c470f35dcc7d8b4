"""Progress on stderr: a rich bar on a terminal, plain periodic lines otherwise, nothing with --quiet."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class ProgressReporter:
    def __init__(self, quiet: bool = False, interval_s: float = 10.0) -> None:
        self.quiet = quiet
        self.console = Console(stderr=True)
        self.rich = sys.stderr.isatty() and not quiet
        self.interval_s = interval_s
        self._bar: Progress | None = None
        self._last_line = 0.0
        self.unit = "cells"

    def start(self, epochs: int, steps_per_epoch: int, first_epoch: int = 0, unit: str = "cells") -> None:
        self.epochs, self.steps, self.unit = epochs, steps_per_epoch, unit
        if self.rich:
            self._bar = Progress(TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"), BarColumn(),
                                 TextColumn("step {task.completed}/{task.total}"),
                                 TextColumn("loss {task.fields[loss]:.4g}  lr {task.fields[lr]}  "
                                            f"{{task.fields[rate]:.0f}} {unit}/s"),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                 console=self.console, transient=True)
            self._bar.start()
            self._task = self._bar.add_task("train", total=epochs * steps_per_epoch,
                                            completed=first_epoch * steps_per_epoch, epoch=first_epoch + 1,
                                            epochs=epochs, loss=float("nan"), lr="", rate=0.0)
        self._t0 = time.monotonic()

    def step(self, epoch: int, global_step: int, loss: float, lrs: tuple[float, float], rate: float) -> None:
        """`lrs`: the lowest and highest lr of the parameter groups (one value shown when they agree)."""
        lr = f"{lrs[1]:.2e}" if lrs[0] == lrs[1] else f"{lrs[0]:.1e}..{lrs[1]:.1e}"
        if self._bar is not None:
            self._bar.update(self._task, completed=global_step, epoch=epoch + 1, loss=loss, lr=lr, rate=rate)
        elif not self.quiet and time.monotonic() - self._last_line > self.interval_s:
            self._last_line = time.monotonic()
            self.log(f"epoch {epoch + 1}/{self.epochs} step {global_step} loss {loss:.4g} lr {lr} "
                     f"{rate:.0f} {self.unit}/s")

    def epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        shown = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k not in ("epoch",))
        self.log(f"epoch {epoch + 1}/{self.epochs}  {shown}")
        self._last_line = time.monotonic()

    def log(self, message: str) -> None:
        if self.quiet:
            return
        if self._bar is not None:
            self._bar.console.print(message, highlight=False, markup=False)
        else:
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
