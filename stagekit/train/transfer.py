"""Loading weights into a model by name, with a report of what carried over (for initialising one model from
another phase's bundle: a classifier from a VAE encoder, a fine-tuned model from a pretrained one)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from stagekit.bundle.records import format_load_report
from stagekit.train.optim import matches_prefix


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)  # same name and shape (or regrown): copied
    new: list[str] = field(default_factory=list)  # declared new by the caller: left as initialised
    mismatched: list[str] = field(default_factory=list)  # same name, other shape: left as initialised
    missing: list[str] = field(default_factory=list)  # in the model only, not declared new: left as initialised
    unexpected: list[str] = field(default_factory=list)  # in the weights only: ignored

    def summary(self) -> str:
        return format_load_report(self.as_dict())

    def as_dict(self) -> dict[str, list[str]]:
        return asdict(self)

    @property
    def partial(self) -> list[str]:
        """What is neither loaded nor declared new: a transfer that silently drops or re-initialises weights."""
        return self.mismatched + self.missing + self.unexpected


@dataclass
class Regrow:
    """A tensor whose entries along `axis` are re-indexed: position i takes the stored entry `source[i]`, or
    stays as initialised where `source[i]` is -1 (e.g. an input per perturbation, where new perturbations
    join known ones). `labels` name the positions in the report."""

    axis: int
    source: np.ndarray
    labels: list[str]


def _regrown(own: torch.Tensor, stored: np.ndarray, regrow: Regrow) -> torch.Tensor | None:
    """`own` with the stored entries copied in; None when the other dimensions differ."""
    stored_t = torch.as_tensor(np.asarray(stored)).to(own.dtype)
    axis = regrow.axis
    if (own.ndim != stored_t.ndim or len(regrow.source) != own.shape[axis]
            or any(own.shape[d] != stored_t.shape[d] for d in range(own.ndim) if d != axis)
            or regrow.source.max(initial=-1) >= stored_t.shape[axis]):
        return None
    result = own.detach().clone()
    kept = np.flatnonzero(regrow.source >= 0)
    index = torch.as_tensor(kept)
    result.index_copy_(regrow.axis, index, stored_t.index_select(regrow.axis, torch.as_tensor(regrow.source[kept])))
    return result


def load_by_name(model: nn.Module, weights: dict[str, np.ndarray], new: tuple[str, ...] = (),
                 regrow: dict[str, Regrow] | None = None) -> LoadReport:
    """Copy every tensor of `weights` whose name and shape match one of the model's (parameters and buffers).
    Model tensors without weights are `new` when their name starts with one of the `new` prefixes, else
    `missing`; `regrow` tensors are copied entry by entry along an axis (their new entries reported as
    `name[label]`)."""
    own = model.state_dict()
    regrow = regrow or {}
    report = LoadReport(unexpected=sorted(set(weights) - set(own)))
    matched = {}
    for name, tensor in own.items():
        if name not in weights:
            declared = any(matches_prefix(name, p) for p in new)
            (report.new if declared else report.missing).append(name)
        elif name in regrow:
            grown = _regrown(tensor, weights[name], regrow[name])
            if grown is None:
                report.mismatched.append(name)
                continue
            matched[name] = grown
            report.loaded.append(name)
            rule = regrow[name]
            report.new += [f"{name}[{rule.labels[i]}]" for i in np.flatnonzero(rule.source < 0)]
        elif tuple(np.shape(weights[name])) != tuple(tensor.shape):
            report.mismatched.append(name)
        else:
            matched[name] = torch.as_tensor(np.asarray(weights[name])).to(tensor.dtype)
            report.loaded.append(name)
    model.load_state_dict(matched, strict=False)
    return report
