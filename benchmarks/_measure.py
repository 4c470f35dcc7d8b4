"""Run a stagekit command in a child process and read what it alone used (shared by the memory benchmarks)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Measured:
    peak_gb: float  # peak RSS of the child (and the descendants it waited for)
    wall_s: float
    cpu_s: float


def run_stagekit(*args: object, log: Path | None = None) -> Measured:
    """`stagekit ARGS` to completion; its rusage comes from wait4 on that child, so an earlier child's larger peak
    cannot mask it (RUSAGE_CHILDREN keeps the maximum over every child). Exits naming the log on failure."""
    cmd = [sys.executable, "-m", "stagekit", *map(str, args)]
    t0 = time.monotonic()
    with open(log or os.devnull, "w") as out:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=out)
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status):
        sys.exit(f"stagekit {' '.join(map(str, args))} failed" + (f"; see {log}" if log else ""))
    return Measured(usage.ru_maxrss / 1024**2, time.monotonic() - t0, usage.ru_utime + usage.ru_stime)
