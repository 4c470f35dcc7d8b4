"""AdamW parameter groups (no decay on biases/norms/embeddings, per-prefix lr scales, frozen prefixes)
and learning-rate schedules."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

_NO_DECAY_MODULES = (nn.LayerNorm, nn.BatchNorm1d, nn.GroupNorm, nn.Embedding)


@dataclass
class FreezePlan:
    """Which parameters train and at what relative lr. Prefixes match dotted parameter names.

    `lr_scales` maps a prefix to a multiplier of the base lr; the longest matching prefix wins, so a
    layer-wise decay is a list of prefixes with decreasing scales.
    """

    frozen: tuple[str, ...] = ()
    lr_scales: dict[str, float] = field(default_factory=dict)

    def is_frozen(self, name: str) -> bool:
        return any(name == p or name.startswith(p + ".") for p in self.frozen)

    def lr_scale(self, name: str) -> float:
        matches = [p for p in self.lr_scales if name == p or name.startswith(p + ".")]
        return self.lr_scales[max(matches, key=len)] if matches else 1.0


def _no_decay_names(model: nn.Module) -> set[str]:
    names = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            if isinstance(module, _NO_DECAY_MODULES) or param.ndim <= 1:
                names.add(full)
    return names


def param_groups(model: nn.Module, lr: float, weight_decay: float,
                 plan: FreezePlan | None = None) -> list[dict]:
    """Groups keyed by (decay?, lr scale); frozen parameters get requires_grad=False and no group."""
    plan = plan or FreezePlan()
    no_decay = _no_decay_names(model)
    groups: dict[tuple[bool, float], dict] = {}
    for name, param in model.named_parameters():
        param.requires_grad_(not plan.is_frozen(name))
        if not param.requires_grad:
            continue
        decay = name not in no_decay
        scale = plan.lr_scale(name)
        group = groups.setdefault((decay, scale), {"params": [], "names": [], "lr": lr * scale,
                                                   "weight_decay": weight_decay if decay else 0.0})
        group["params"].append(param)
        group["names"].append(name)
    return [{k: v for k, v in g.items() if k != "names"} | {"name": ",".join(g["names"][:3])}
            for g in groups.values()]


def lr_lambda(scheduler: str, total_steps: int, warmup_ratio: float, min_lr_ratio: float
              ) -> Callable[[int], float]:
    """Multiplier of each group's lr at a step: optional linear warm-up, then constant or cosine."""
    warmup = int(total_steps * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if scheduler == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def build_optimizer(groups: list[dict], lr: float) -> torch.optim.Optimizer:
    if not groups:
        raise ValueError("no trainable parameters: the freeze plan froze everything")
    return torch.optim.AdamW(groups, lr=lr)
