"""Cross-species pretrain and align from disk (`--backed`) at 100,000 cells per species: peak RSS.

Synthetic two-species counts at the speed benchmark's gene shapes (2 species x 500 genes, 6 cell types, M = 200,
batch 4096) but 100,000 cells per species, written to .h5ad in chunks. `pretrain --preset saturn --backed` (two
epochs) and `align` (one epoch) run as separate processes; their peak RSS is read from the OS.
Run it at --cells 50000 and 500000 to see how the time per epoch and the memory grow with the cells.

    python benchmarks/saturn_backed.py [--cells 100000] [--epochs 2]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from _measure import run_stagekit
from saturn_speed import write_species


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=100_000)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="stagekit-saturn-backed-"))
    human, mouse = write_species(folder, args.cells)
    common = ["--set", "training.batch_size=4096", "--set", "runtime.threads=2", "-q"]
    pre = run_stagekit(
        "pretrain", "-p", "saturn", human, mouse, "--protein-emb", f"human={folder / 'human.npz'}",
        "--protein-emb", f"mouse={folder / 'mouse.npz'}", "--label-key", "cell_type", "--backed",
        "--set", "data.hv_genes=500", "--set", "model.n_macrogenes=200", "--set", f"training.epochs={args.epochs}",
        *common, "-o", folder / "pre.stk", log=folder / "pretrain.log")
    align = run_stagekit("align", folder / "pre.stk", "--set", "training.epochs=1", *common,
                         "-o", folder / "align.stk", log=folder / "align.log")
    from stagekit.bundle import read_bundle

    pre_epoch = read_bundle(folder / "pre.stk", weights=False).history
    align_epoch = read_bundle(folder / "align.stk", weights=False).history
    print(f"2 species x {args.cells:,} cells x 500 genes, M = 200, batch 4096, --backed; files in {folder}")
    print(f"pretrain ({args.epochs} epochs): peak RSS {pre.peak_gb:.2f} GB, whole command {pre.wall_s:.0f} s, "
          "per epoch "
          f"{np.median(pre_epoch['epoch_time_s']):.1f} s ({np.median(pre_epoch['epoch_cpu_s']):.1f} CPU-s)")
    print(f"align (1 epoch):            peak RSS {align.peak_gb:.2f} GB, whole command {align.wall_s:.0f} s, "
          "per epoch "
          f"{np.median(align_epoch['epoch_time_s']):.1f} s ({np.median(align_epoch['epoch_cpu_s']):.1f} CPU-s)")


if __name__ == "__main__":
    main()
