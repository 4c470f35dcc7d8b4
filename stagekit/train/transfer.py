"""Loading weights into a model by name, with a report of what carried over (for initialising one model from
another phase's bundle: a classifier from a VAE encoder, a fine-tuned model from a pretrained one)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)  # same name and shape: copied
    new: list[str] = field(default_factory=list)  # in the model only: left as initialised
    mismatched: list[str] = field(default_factory=list)  # same name, other shape: left as initialised
    unexpected: list[str] = field(default_factory=list)  # in the weights only: ignored

    def summary(self) -> str:
        parts = []
        for kind in ("loaded", "new", "mismatched", "unexpected"):
            names = getattr(self, kind)
            if names:
                shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
                parts.append(f"{len(names)} {kind} ({shown})")
        return "; ".join(parts) or "nothing to load"

    def as_dict(self) -> dict[str, list[str]]:
        return asdict(self)


def load_by_name(model: nn.Module, weights: dict[str, np.ndarray]) -> LoadReport:
    """Copy every tensor of `weights` whose name and shape match one of the model's (parameters and buffers)."""
    own = model.state_dict()
    report = LoadReport(unexpected=sorted(set(weights) - set(own)))
    matched = {}
    for name, tensor in own.items():
        if name not in weights:
            report.new.append(name)
        elif tuple(np.shape(weights[name])) != tuple(tensor.shape):
            report.mismatched.append(name)
        else:
            matched[name] = torch.as_tensor(np.asarray(weights[name])).to(tensor.dtype)
            report.loaded.append(name)
    model.load_state_dict(matched, strict=False)
    return report
