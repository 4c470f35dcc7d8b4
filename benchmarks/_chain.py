"""Run stagekit commands in this process and read their bundles (shared by the clustering benchmarks)."""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
from pathlib import Path


def stagekit(*args: object) -> None:
    from stagekit.cli import main

    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            if exc.code:
                sys.exit(f"stagekit {' '.join(map(str, args))} failed ({exc.code})")


def ari_nmi_acc(labels, clusters) -> dict[str, float]:
    from stagekit.metrics.clustering import label_agreement

    return label_agreement(labels, clusters)


def print_table(title: str, rows: dict[str, dict[str, float]]) -> None:
    print(title)
    print(f"{'method':<42} {'ARI':>7} {'NMI':>7} {'ACC':>7}")
    for name, m in rows.items():
        print(f"{name:<42} {m['ari']:7.3f} {m['nmi']:7.3f} {m['acc']:7.3f}")


def seed_and_workdir(description: str, prefix: str) -> tuple[int, Path]:
    """`--seed N` and `--workdir DIR` (default: a new temporary folder) of a clustering benchmark."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    return args.seed, work
