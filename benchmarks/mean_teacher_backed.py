"""Two-stage Mean Teacher on synthetic screens read from disk (`--backed`): peak RSS and time of stage 1
(`pretrain --preset mean-teacher`), stage 2 (`finetune --preset mean-teacher`) and `extract`, and the macro-F1 of
the extracted predictions on the cells whose labels training did not use.

The screens are those of `perturbation_backed.py` (`make_screen.py`, reused from WORKDIR); the label is the
context (every gene shifts with it, so the task is easy: the figures here are of memory and time). Each command
runs in its own process; its peak RSS and CPU time come from wait4 on that process alone.

    python benchmarks/mean_teacher_backed.py [--cells 100000 1000000] [--workdir DIR] [--epochs 1]
"""

from __future__ import annotations

import json

from _measure import run_stagekit
from perturbation_backed import screen_arguments, screen_runs


def main() -> None:
    args = screen_arguments(__doc__.splitlines()[0]).parse_args()
    workdir, runs = screen_runs(args, "mt")
    rows = []
    for n, data, out in runs:
        epochs = ["--set", f"training.epochs={args.epochs}", "--backed", "-q"]
        s1 = run_stagekit("pretrain", "--preset", "mean-teacher", data, "--label-key", "context",
                          "--labelled-fraction", "0.01", *epochs, "-o", out / "s1.stk", log=out / "s1.log")
        s2 = run_stagekit("finetune", "--preset", "mean-teacher", out / "s1.stk", data, "--labelled-fraction",
                          "0.05", *epochs, "-o", out / "s2.stk", log=out / "s2.log")
        ex = run_stagekit("extract", out / "s2.stk", "--backed", "-q", "-o", out / "cells.h5ad",
                          log=out / "extract.log")
        run_stagekit("evaluate", out / "cells.h5ad", "--label-key", "context", "--no-umap", "-q", "-o",
                     out / "report", log=out / "evaluate.log")
        scores = json.loads((out / "report" / "metrics.json").read_text())
        row = {"cells": n, "stage1_gb": s1.peak_gb, "stage1_s": s1.wall_s, "stage2_gb": s2.peak_gb,
               "stage2_s": s2.wall_s, "extract_gb": ex.peak_gb, "extract_s": ex.wall_s,
               "macro_f1": _find(scores, "macro_f1")}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n{args.genes} genes, label = context ({args.contexts} classes), --backed, files in {workdir}")
    for row in rows:
        print("  ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))


def _find(metrics: dict, key: str) -> float | None:
    """The first value of `key` anywhere in evaluate's nested metrics."""
    for name, value in metrics.items():
        if name == key and isinstance(value, float):
            return value
        if isinstance(value, dict) and (found := _find(value, key)) is not None:
            return found
    return None


if __name__ == "__main__":
    main()
