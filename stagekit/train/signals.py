"""SIGINT/SIGTERM turned into a flag that a loop or a write checks when it is safe to stop."""

from __future__ import annotations

import signal
import threading
from typing import Any


class Signals:
    """SIGINT/SIGTERM set a flag the loop checks after each step; a second SIGINT aborts at once.

    Contexts nest: an inner one starts with the signal an outer one has received, and hands its own back on exit,
    so a signal that lands while an inner loop is winding down is still seen by the code around it."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> Signals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        outer = self._outer()
        if outer is not None:
            self.received = outer.received
        return self

    def _outer(self) -> Signals | None:
        handler = self._old.get(signal.SIGINT)
        owner = getattr(handler, "__self__", None)
        return owner if isinstance(owner, Signals) else None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc: Any) -> None:
        outer = self._outer()
        if outer is not None and self.received:
            outer.received = self.received
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
