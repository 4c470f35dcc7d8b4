"""The transition pipeline on synthetic screens read from disk (`--backed`): peak RSS and time of `pretrain`,
`extract` and `evaluate` at each screen size, and whether the model beats the baselines on the held-out cells.

The screens come from `make_screen.py` (G genes, about 500 non-zero a cell, P perturbations x C contexts, effects
of known size), written once into WORKDIR and reused. Each command runs in its own process; its peak RSS and CPU
time come from wait4 on that process alone.

    python benchmarks/perturbation_backed.py [--cells 100000 1000000] [--workdir DIR] [--epochs 1]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from _measure import run_stagekit
from make_screen import write_screen


def screen(workdir: Path, cells: int, genes: int, perts: int, contexts: int) -> Path:
    path = workdir / f"screen_{cells}x{genes}_{perts}p{contexts}c.h5ad"
    if not path.is_file():
        partial = path.with_suffix(".partial.h5ad")
        write_screen(partial, cells, genes, perts, contexts)
        partial.rename(path)
    return path


def screen_arguments(description: str) -> argparse.ArgumentParser:
    """The options every benchmark on these screens takes: their sizes, the epochs and where they are kept."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--cells", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--perts", type=int, default=500)
    parser.add_argument("--contexts", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None)
    return parser


def screen_runs(args: argparse.Namespace, prefix: str) -> tuple[Path, list[tuple[int, Path, Path]]]:
    """The work folder and, per screen size, (cells, the screen's file, an output folder PREFIX_CELLS)."""
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="stagekit-screen-"))
    workdir.mkdir(parents=True, exist_ok=True)
    runs = []
    for n in args.cells:
        out = workdir / f"{prefix}_{n}"
        out.mkdir(exist_ok=True)
        runs.append((n, screen(workdir, n, args.genes, args.perts, args.contexts), out))
    return workdir, runs


def main() -> None:
    parser = screen_arguments(__doc__.splitlines()[0])
    parser.add_argument("--steps", nargs="+", default=["pretrain", "extract", "evaluate"],
                        choices=["pretrain", "extract", "evaluate"])
    args = parser.parse_args()
    workdir, runs = screen_runs(args, "run")
    rows = []
    for n, data, out in runs:
        row = {"cells": n}
        if "pretrain" in args.steps:
            m = run_stagekit("pretrain", "--preset", "transition", data, "--pert-key", "perturbation", "--control",
                             "control", "--context-key", "context", "--backed", "--set",
                             f"training.epochs={args.epochs}", "-q", "-o", out / "tx.stk", log=out / "pretrain.log")
            from stagekit.bundle import read_bundle

            history = read_bundle(out / "tx.stk", weights=False).history
            row |= {"pretrain_gb": m.peak_gb, "pretrain_s": m.wall_s,
                    "epoch_s": float(np.median(history["epoch_time_s"])),
                    "epoch_cpu_s": float(np.median(history["epoch_cpu_s"]))}
        if "extract" in args.steps:
            m = run_stagekit("extract", out / "tx.stk", "--backed", "-q", "-o", out / "pred.h5ad",
                             log=out / "extract.log")
            row |= {"extract_gb": m.peak_gb, "extract_s": m.wall_s}
        if "evaluate" in args.steps:
            m = run_stagekit("evaluate", out / "tx.stk", "--backed", "--no-umap", "--no-cell-eval", "-q",
                             "-o", out / "report", log=out / "evaluate.log")
            mean = json.loads((out / "report" / "metrics.json").read_text())["perturbation"]["mean"]
            row |= {"evaluate_gb": m.peak_gb, "evaluate_s": m.wall_s,
                    "energy_pca": {k: round(v["energy_embedding"], 4) for k, v in mean.items()},
                    "energy_genes": {k: round(v["energy_genes"], 4) for k, v in mean.items()}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n{args.genes} genes, {args.perts} perturbations x {args.contexts} contexts, --backed, files in {workdir}")
    for row in rows:
        print("  ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    if len(rows) > 1 and all("epoch_s" in r for r in rows):
        small, large = rows[0], rows[-1]
        ratio = (large["epoch_s"] / small["epoch_s"]) / (large["cells"] / small["cells"])
        print(f"time per epoch at {large['cells']:,} cells is {ratio:.2f}x linear from {small['cells']:,}")


if __name__ == "__main__":
    main()
