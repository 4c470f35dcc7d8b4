"""Resume state: tensors <-> numpy trees the bundle can store, the loop state, and RNG state per process."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stagekit.errors import UserError

TENSOR_TAG = "__tensor__"  # a stored tensor: {TENSOR_TAG: array, "dtype": torch dtype name}


def map_leaves(obj: Any, leaf) -> Any:
    """`obj` with its dicts, lists and tuples rebuilt and every other value replaced by `leaf(value)`."""
    if isinstance(obj, dict):
        return {k: map_leaves(v, leaf) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(map_leaves(v, leaf) for v in obj)
    return leaf(obj)


def tensor_values(tensor: torch.Tensor) -> tuple[np.ndarray, str]:
    """A tensor's values on the CPU as numpy (a view of a CPU tensor; bfloat16, which numpy lacks, as float32)
    and its dtype's name."""
    values = tensor.detach().cpu()
    if values.dtype == torch.bfloat16:
        values = values.float()
    return values.numpy(), str(tensor.dtype).removeprefix("torch.")


def _storable_leaf(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        values, dtype = tensor_values(obj)
        return {TENSOR_TAG: values.copy(), "dtype": dtype}
    if isinstance(obj, np.ndarray):  # a copy: a snapshot must not change with the live state it was taken from
        return obj.copy()
    return obj


def to_storable(obj: Any) -> Any:
    return map_leaves(obj, _storable_leaf)


def from_storable(obj: Any) -> Any:
    if isinstance(obj, dict):
        if TENSOR_TAG in obj:
            return torch.from_numpy(np.asarray(obj[TENSOR_TAG])).to(getattr(torch, obj["dtype"]))
        return {k: from_storable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(from_storable(v) for v in obj)
    return obj


def weights_to_numpy(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().float().numpy().copy() if v.dtype == torch.bfloat16
            else v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}


def tensor_checksums(module: torch.nn.Module, names: list[str]) -> dict[str, str]:
    """sha256 of the bytes of each named parameter or buffer (to prove frozen tensors did not change)."""
    import hashlib

    own = dict(module.named_parameters()) | dict(module.named_buffers())
    raw = {n: own[n].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy() for n in names}
    return {n: hashlib.sha256(b.tobytes()).hexdigest() for n, b in raw.items()}


def load_weights(module: torch.nn.Module, weights: dict[str, np.ndarray], source: str | Path = "the bundle"
                 ) -> None:
    """Stored weights into `module`; weights that do not fit its parameters (a bundle written by a version whose
    model differs) are a UserError naming them, not a traceback."""
    own = module.state_dict()
    differ = sorted(set(own) ^ set(weights)) or [k for k in own if tuple(own[k].shape) != np.shape(weights[k])]
    if differ:
        raise UserError(f"{source}: its weights do not fit this stagekit's model ({', '.join(differ[:4])}"
                        f"{' ...' if len(differ) > 4 else ''} differ); it was written by another version: train it "
                        "again")
    module.load_state_dict({k: torch.from_numpy(np.asarray(v)).to(own[k].dtype) for k, v in weights.items()})


@dataclass
class LoopState:
    """Where the loop is and what it has accumulated; stored in the resume state, so it is plain data.

    `epoch` counts over the whole run (all phases); `top_k` holds the best states by the monitored metric,
    best first, each {"epoch", "value", "weights", "row"}."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    phase: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    count: int = 0
    history: dict[str, list[float]] = field(default_factory=dict)
    monitor_key: str = ""
    bad_epochs: int = 0
    top_k: list[dict] = field(default_factory=list)
    finished: str = ""
    # per phase entered: its parameter-group table and the checksums of its frozen tensors at entry and exit
    phase_log: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return copy.deepcopy(asdict(self))

    @classmethod
    def from_dict(cls, state: dict) -> LoopState:
        known = {f.name for f in fields(cls)}
        if "phase" not in state:
            raise UserError("this resume state was written by an older stagekit (no phase in its loop state); "
                            "start the phase again without --resume")
        return cls(**{k: v for k, v in copy.deepcopy(state).items() if k in known})

    def record(self, row: dict[str, float]) -> None:
        """Append an epoch row; a column that appears later (or stops) is NaN where absent, so every history
        column has one value per epoch."""
        done = len(self.history.get("epoch", []))
        for key in [k for k in row if k not in self.history]:  # in row order, so every run lays out the same
            self.history[key] = [float("nan")] * done
        for key, values in self.history.items():
            values.append(float(row.get(key, float("nan"))))


def capture_rng(fabric: Any) -> dict:
    """CPU (and CUDA, where used) RNG state of every process, one row per rank: under DDP each process draws its
    own dropout noise, and resume gives each its own stream back (a collective call: every rank must call)."""
    local = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        local["cuda"] = torch.cuda.get_rng_state(fabric.device if fabric.device.type == "cuda" else None)
    if fabric.world_size == 1:
        return {k: v[None] for k, v in local.items()}
    return {k: fabric.all_gather(v.to(fabric.device)).cpu() for k, v in local.items()}


def restore_rng(state: dict, rank: int, world: int) -> None:
    if state["torch"].ndim == 1:  # written before per-rank states: one process
        state = {k: v[None] for k, v in state.items()}
    if len(state["torch"]) != world:
        raise UserError(f"this run was interrupted with {len(state['torch'])} processes; resume it with the same "
                        f"number (--devices/--num-nodes), not {world}")
    # a row of the stacked states is a view at an offset, which set_rng_state cannot take (it crashes): copy it
    torch.set_rng_state(state["torch"][rank].clone())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"][rank].clone())
