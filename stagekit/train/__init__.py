"""The one training engine every phase uses (Lightning Fabric for devices, precision and DDP)."""

from stagekit.train.engine import Engine, FitResult, RunSettings, Task

__all__ = ["Engine", "FitResult", "RunSettings", "Task"]
