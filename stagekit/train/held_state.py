"""The last good training state: what a stopped run returns to and what a finished run's resume state is.

It is a full copy of model and optimizer state (with Adam, three times the weights). Held in memory it doubles a
large model's footprint, so above `spill_bytes` it is written, tensor by tensor from the live objects, to an
unlinked temporary file in the output's folder (never /tmp, which may be memory-backed) and read back only when it
is needed. The file holds each array's raw bytes, written from the live tensors' memory (the nesting stays in
memory): torch.save builds buffers as it goes, which would raise the peak at the first spill. Writing costs
little except the first time in a process, when the file's page cache is fresh memory.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from stagekit.train.state import TENSOR_TAG, map_leaves, tensor_values, to_storable

SPILL_BYTES = 256 * 1024**2


def tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a nested dict / list state."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(tensor_bytes(v) for v in obj)
    return 0


@dataclass(frozen=True)
class _Spilled:
    """Where one array's bytes are in the file; `tensor_dtype` is the torch dtype's name if it was a tensor."""

    offset: int
    dtype: str
    shape: tuple[int, ...]
    tensor_dtype: str | None


def _spill(obj: Any, file: IO[bytes]) -> Any:
    """`obj` with every tensor and numeric array written to `file` and replaced by where it went."""

    def leaf(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            values, dtype = tensor_values(value)
            return _write(file, values, dtype)
        if isinstance(value, np.ndarray):
            return value.copy() if value.dtype.hasobject else _write(file, value, None)
        return value

    return map_leaves(obj, leaf)


def _write(file: IO[bytes], array: np.ndarray, tensor_dtype: str | None) -> _Spilled:
    offset = file.tell()
    if not array.flags.c_contiguous:  # (np.ascontiguousarray would make a 0-d array 1-d)
        array = array.copy()
    file.write(memoryview(array.reshape(-1).view(np.uint8)))
    return _Spilled(offset, array.dtype.str, tuple(array.shape), tensor_dtype)


def _read_back(obj: Any, file: IO[bytes]) -> Any:
    """The `to_storable` form of what `_spill` wrote."""

    def leaf(value: Any) -> Any:
        if not isinstance(value, _Spilled):
            return value
        array = np.empty(value.shape, np.dtype(value.dtype))
        file.seek(value.offset)
        file.readinto(memoryview(array.reshape(-1).view(np.uint8)))
        return array if value.tensor_dtype is None else {TENSOR_TAG: array, "dtype": value.tensor_dtype}

    return map_leaves(obj, leaf)


class HeldState:
    """One training state (a dict with a "loop" entry, which always stays in memory as `loop`)."""

    def __init__(self, folder: Path | None = None, spill_bytes: int | None = None) -> None:
        self.folder, self.spill_bytes = folder, SPILL_BYTES if spill_bytes is None else spill_bytes
        self._state: dict = {}  # the state, or where its arrays are in the file
        self._file = None
        self.loop: dict | None = None

    def hold(self, state: dict) -> None:
        """Keep `state` (live tensors are copied or written now: later training steps do not change it)."""
        self.release()
        self.loop = to_storable(state["loop"])
        if self.folder is None or tensor_bytes(state) <= self.spill_bytes:
            self._state = to_storable(state)
            return
        # unlinked at once (nothing is left behind, even on a crash); open until the next hold or release
        self._file = tempfile.TemporaryFile(dir=self.folder, prefix=".stagekit-held-")  # noqa: SIM115
        self._state = _spill(state, self._file)
        self._file.flush()

    def hold_storable(self, state: dict) -> None:
        """Keep a state that is already a copy (a resume bundle's), as it is."""
        self.release()
        self._state, self.loop = state, state.get("loop")

    def get(self) -> dict:
        """The held state as `to_storable` gives it."""
        if self._file is None:
            return self._state
        return _read_back(self._state, self._file)

    def release(self) -> None:
        self._state = {}
        if self._file is not None:
            self._file.close()
            self._file = None
