"""Start-up time of `stagekit --help` and `stagekit info` (target: --help under 0.5 s), side by side with
`python -c "import torch"`, which both avoid.

    python benchmarks/cli_startup.py [BUNDLE]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time


def timed(command: list[str], repeats: int = 5) -> float:
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def main() -> None:
    stagekit = [sys.executable, "-m", "stagekit"]
    rows = {"stagekit --help": timed([*stagekit, "--help"]),
            "python -c 'import torch'": timed([sys.executable, "-c", "import torch"])}
    if len(sys.argv) > 1:
        rows["stagekit info BUNDLE"] = timed([*stagekit, "info", sys.argv[1]])
    for name, seconds in rows.items():
        print(f"{name:<26} {seconds:6.3f} s")
    ratio = rows["stagekit --help"] / rows["python -c 'import torch'"]
    print(f"--help / import torch      {ratio:6.2f}x   (--help target < 0.5 s)")


if __name__ == "__main__":
    main()
