"""The history while it is written: every step's and epoch's scalars to CSV and/or TensorBoard through Fabric's
loggers (rank 0 writes), so a long run can be watched (`tensorboard --logdir DIR`) or read before it ends."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

LOGGERS = ("csv", "tensorboard")


def fabric_loggers(kinds: str, log_dir: str | Path) -> list[Any]:
    """Fabric loggers for `kinds` ("csv", "tensorboard", or both comma-separated; "" for none). Each run writes
    LOG_DIR/version_N, N one above the highest there (Lightning's layout), so a resumed run sits beside the first."""
    names = [k.strip() for k in kinds.split(",") if k.strip()]
    unknown = [k for k in names if k not in LOGGERS]
    if unknown:
        raise ValueError(f"unknown logger {unknown[0]!r} (choose from {', '.join(LOGGERS)})")
    if not names:
        return []
    from lightning.fabric.loggers import CSVLogger, TensorBoardLogger

    root = Path(log_dir)
    taken = [int(d.name.removeprefix("version_")) for d in root.glob("version_*")
             if d.is_dir() and d.name.removeprefix("version_").isdigit()] if root.is_dir() else []
    version = max(taken, default=-1) + 1  # one folder for every logger of the run
    made = {"csv": lambda: CSVLogger(str(root), name="", version=version, flush_logs_every_n_steps=1_000_000),
            "tensorboard": lambda: TensorBoardLogger(str(root), name="", version=version, default_hp_metric=False)}
    return [made[name]() for name in dict.fromkeys(names)]


class LiveLogs:
    """What the engine writes to the loggers of its Fabric; nothing when it has none."""

    def __init__(self, fabric: Any) -> None:
        self.fabric = fabric
        self.loggers = list(fabric.loggers)

    @property
    def where(self) -> str:
        return ", ".join(sorted({str(Path(lg.log_dir)) for lg in self.loggers}))

    def start(self, hyperparameters: dict[str, Any]) -> None:
        """The run's settings: TensorBoard's hparams, and hyperparameters.json in the run's folder (Fabric's
        CSV logger keeps none)."""
        if not self.fabric.is_global_zero or not self.loggers:
            return
        from lightning.fabric.loggers import CSVLogger, TensorBoardLogger

        for logger in self.loggers:  # the CSV writer first: it warns about a folder others have written to
            if isinstance(logger, CSVLogger):
                logger.experiment  # noqa: B018 - creates the writer
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.log_hyperparams(hyperparameters)
        for folder in {Path(lg.log_dir) for lg in self.loggers}:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "hyperparameters.json").write_text(json.dumps(hyperparameters, indent=1, default=str))

    def step(self, values: dict[str, float], lrs: dict[str, float], phase: int, step: int) -> None:
        if self.loggers:
            self.fabric.log_dict({f"step/{k}": v for k, v in values.items()} | {f"lr/{k}": v for k, v in lrs.items()}
                                 | {"phase": float(phase)}, step=step)

    def epoch(self, row: dict[str, float], step: int) -> None:
        """The epoch's history row; written to disk now, not when the buffer fills."""
        if self.loggers:
            self.fabric.log_dict({f"epoch/{k}": v for k, v in row.items()}, step=step)
            for logger in self.loggers:
                logger.save()

    def close(self, status: str) -> None:
        for logger in self.loggers:
            logger.finalize("success" if status == "complete" else status)
