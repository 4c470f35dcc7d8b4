"""AdamW parameter groups (no decay on biases/norms/embeddings or what the model declares, per-prefix lr scales,
freeze plans), layer-wise lr decay scales and learning-rate schedules."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

_NO_DECAY_MODULES = (nn.LayerNorm, nn.BatchNorm1d, nn.GroupNorm, nn.Embedding)


def matches_prefix(name: str, prefix: str) -> bool:
    """Whether a dotted parameter name is `prefix` or lies under it (`blocks` matches `blocks.3.weight`)."""
    return name == prefix or name.startswith(prefix + ".")


@dataclass
class FreezePlan:
    """Which parameters train and at what relative lr. Prefixes match dotted parameter names.

    `frozen` prefixes stop training, `trainable` prefixes (re)start it; where both match, the longer prefix wins
    (freeze "blocks", train "blocks.3"). A parameter neither mentions keeps its current state, so the plans of
    successive phases compose (progressive unfreezing) instead of silently unfreezing everything.
    `lr_scales` maps a prefix to a multiplier of the base lr; the longest matching prefix wins.
    """

    frozen: tuple[str, ...] = ()
    trainable: tuple[str, ...] = ()
    lr_scales: dict[str, float] = field(default_factory=dict)

    def apply(self, model: nn.Module) -> None:
        for name, param in model.named_parameters():
            rules = [(len(p), False) for p in self.frozen if matches_prefix(name, p)]
            rules += [(len(p), True) for p in self.trainable if matches_prefix(name, p)]
            if rules:
                param.requires_grad_(max(rules)[1])

    def scale_prefix(self, name: str) -> str:
        """The lr-scale prefix that applies to a parameter ('' for none)."""
        matches = [p for p in self.lr_scales if matches_prefix(name, p)]
        return max(matches, key=len) if matches else ""

    def lr_scale(self, name: str) -> float:
        prefix = self.scale_prefix(name)
        return self.lr_scales[prefix] if prefix else 1.0


def layer_decay_scales(blocks: Sequence[str], decay: float) -> dict[str, float]:
    """Layer-wise lr decay (timm's rule): for prefixes ordered bottom -> top, block i of n gets
    decay ** (n - 1 - i), so the top keeps the base lr and each block below it a factor `decay` less."""
    n = len(blocks)
    return {prefix: decay ** (n - 1 - i) for i, prefix in enumerate(blocks)}


def no_decay_names(model: nn.Module) -> set[str]:
    """Parameters without weight decay: biases and other 1-d tensors, norm layers, embeddings, and whatever the
    model lists in `no_weight_decay()` (names or prefixes, timm's convention)."""
    declared = tuple(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else ()
    names = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            if (isinstance(module, _NO_DECAY_MODULES) or param.ndim <= 1
                    or any(matches_prefix(full, p) for p in declared)):
                names.add(full)
    return names


def param_groups(model: nn.Module, lr: float, weight_decay: float, plan: FreezePlan | None = None) -> list[dict]:
    """Apply the freeze plan, then group trainable parameters by (lr-scale prefix, decay?). Each group is named
    by its prefix ('base' where no scale applies) so the history can show its lr."""
    plan = plan or FreezePlan()
    plan.apply(model)
    no_decay = no_decay_names(model)
    groups: dict[tuple[str, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        prefix, decay = plan.scale_prefix(name), name not in no_decay
        group = groups.setdefault((prefix, decay), {"params": [], "lr": lr * plan.lr_scale(name),
                                                    "weight_decay": weight_decay if decay else 0.0,
                                                    "name": prefix or "base"})
        group["params"].append(param)
    return list(groups.values())


def module_of(model: nn.Module, name: str) -> str:
    """The module a parameter belongs to, as a table names it: `blocks.3` for an item of a list of blocks
    (an nn.ModuleList), else the top-level module (`pert_encoder`)."""
    parts = name.split(".")
    top = getattr(model, parts[0], None)
    return ".".join(parts[:2]) if isinstance(top, nn.ModuleList) and len(parts) > 2 else parts[0]


def group_table(model: nn.Module, groups: list[dict]) -> list[dict]:
    """One row per named parameter group (its decaying and non-decaying tensors together), then one for the
    frozen parameters: name, lr, weight_decay (of the decaying tensors), trainable and total parameters, and the
    modules they belong to."""
    names = {id(p): n for n, p in model.named_parameters()}
    rows: dict[str, dict] = {}
    for group in groups:
        row = rows.setdefault(group["name"], {"group": group["name"], "lr": group["lr"], "weight_decay": 0.0,
                                              "trainable": 0, "modules": []})
        row["weight_decay"] = max(row["weight_decay"], group["weight_decay"])
        for param in group["params"]:
            row["trainable"] += param.numel()
            module = module_of(model, names[id(param)])
            if module not in row["modules"]:
                row["modules"].append(module)
    frozen = [(n, p) for n, p in model.named_parameters() if not p.requires_grad]
    table = list(rows.values())
    if frozen:
        table.append({"group": "frozen", "lr": 0.0, "weight_decay": 0.0, "trainable": 0,
                      "modules": list(dict.fromkeys(module_of(model, n) for n, _ in frozen))})
    for row in table:
        row["total"] = row["trainable"] or sum(p.numel() for _, p in frozen)
        row["modules"] = ", ".join(row["modules"])
    return table


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


def build_optimizer(groups: list[dict], lr: float, kind: str = "adamw") -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay), Adam (weight decay as an L2 term) or SGD with Nesterov momentum 0.9; the
    groups carry their own lr and weight decay."""
    if not groups:
        raise ValueError("no trainable parameters: the freeze plan froze everything")
    if kind == "adam":
        return torch.optim.Adam(groups, lr=lr)
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=lr)
