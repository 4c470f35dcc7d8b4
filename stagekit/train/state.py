"""Convert state dicts with tensors into trees of numpy arrays the bundle can store, and back."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

_TAG = "__tensor__"


def to_storable(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        tensor = obj.detach().cpu()
        dtype = str(tensor.dtype).removeprefix("torch.")
        if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16
            tensor = tensor.float()
        return {_TAG: tensor.numpy().copy(), "dtype": dtype}
    if isinstance(obj, dict):
        return {k: to_storable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_storable(v) for v in obj)
    return obj


def from_storable(obj: Any) -> Any:
    if isinstance(obj, dict):
        if _TAG in obj:
            return torch.from_numpy(np.asarray(obj[_TAG])).to(getattr(torch, obj["dtype"]))
        return {k: from_storable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(from_storable(v) for v in obj)
    return obj


def weights_to_numpy(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().float().numpy().copy() if v.dtype == torch.bfloat16
            else v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}


def load_weights(module: torch.nn.Module, weights: dict[str, np.ndarray]) -> None:
    own = module.state_dict()
    module.load_state_dict({k: torch.from_numpy(np.asarray(v)).to(own[k].dtype) for k, v in weights.items()})
