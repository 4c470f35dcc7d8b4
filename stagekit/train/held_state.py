"""The last good training state: what a stopped run returns to and what a finished run's resume state is.

It is a full copy of model and optimizer state (with Adam, three times the weights). Held in memory it doubled a
large model's footprint (0.78 GB at SATURN's real shape: 2 x 8,000 genes, 2,000 macrogenes), so above
`spill_bytes` it is written, tensor by tensor from the live objects, to an unlinked temporary file in the
output's folder (never /tmp, which may be memory-backed) and read back only when it is needed. Writing it costs
little except the first time in a process, when the file's 0.78 GB of page cache is fresh memory (6 s on the
benchmark VM, whose first touch of freed memory is slow; later holds reuse those pages: 0.3 s).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from stagekit.train.state import to_storable

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


class HeldState:
    """One training state (a dict with a "loop" entry, which always stays in memory as `loop`)."""

    def __init__(self, folder: Path | None = None, spill_bytes: int | None = None) -> None:
        self.folder, self.spill_bytes = folder, SPILL_BYTES if spill_bytes is None else spill_bytes
        self._state: dict = {}
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
        torch.save(state, self._file)
        self._file.flush()

    def hold_storable(self, state: dict) -> None:
        """Keep a state that is already a copy (a resume bundle's), as it is."""
        self.release()
        self._state, self.loop = state, state.get("loop")

    def get(self) -> dict:
        """The held state as `to_storable` gives it."""
        if self._file is None:
            return self._state
        self._file.seek(0)
        # our own process-private file: the loop state holds plain Python objects besides tensors
        return to_storable(torch.load(self._file, weights_only=False))

    def release(self) -> None:
        self._state = {}
        if self._file is not None:
            self._file.close()
            self._file = None
