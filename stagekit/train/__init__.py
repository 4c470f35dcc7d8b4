"""The one training engine every phase uses (Lightning Fabric for devices, precision and DDP)."""

from stagekit.train.engine import Engine, FitResult, RunSettings, Task
from stagekit.train.hooks import EMA, Guard, Hook, StepContext
from stagekit.train.optim import FreezePlan, layer_decay_scales
from stagekit.train.phases import Phase

__all__ = ["EMA", "Engine", "FitResult", "FreezePlan", "Guard", "Hook", "Phase", "RunSettings", "StepContext", "Task",
           "layer_decay_scales"]
