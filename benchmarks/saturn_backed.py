"""Cross-species pretrain and align from disk (`--backed`) at 100,000 cells per species: peak RSS.

Synthetic two-species counts at the speed benchmark's gene shapes (2 species x 500 genes, 6 cell types, M = 200,
batch 4096) but 100,000 cells per species, written to .h5ad in chunks. `pretrain --preset saturn --backed` (two
epochs) and `align` (one epoch) run as separate processes; their peak RSS is read from the OS.
Target: under 4 GB.

    python benchmarks/saturn_backed.py [--cells 100000] [--epochs 2]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_species(folder: Path, n_cells: int, n_genes: int = 500, dim: int = 64, chunk: int = 20_000) -> list[Path]:
    import anndata
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    programs = rng.gamma(0.3, 1.0, (6, n_genes))
    base = rng.normal(size=(n_genes, dim))
    paths = []
    for name in ("human", "mouse"):
        types = rng.integers(0, 6, n_cells)
        blocks = [sp.csr_matrix(rng.poisson(programs[types[i:i + chunk]] * 2).astype(np.float32))
                  for i in range(0, n_cells, chunk)]
        adata = anndata.AnnData(X=sp.vstack(blocks).tocsr(), obs=pd.DataFrame(
            {"cell_type": types.astype(str)}, index=[f"{name}{i}" for i in range(n_cells)]))
        adata.var_names = [f"{name}_g{i}" for i in range(n_genes)]
        adata.write_h5ad(folder / f"{name}.h5ad")
        np.savez(folder / f"{name}.npz", genes=np.array(adata.var_names, dtype=str),
                 embeddings=(base + 0.1 * rng.normal(size=base.shape)).astype(np.float32))
        paths.append(folder / f"{name}.h5ad")
        del adata, blocks
    return paths


def peak_rss_gb(*args: object) -> tuple[float, float]:
    """Run `stagekit ARGS` in a child process: (peak RSS in GB, wall seconds)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "stagekit", *map(str, args)], check=True, stdout=subprocess.DEVNULL)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak <= before:
        print("warning: this child did not exceed an earlier child's peak; the figure is an upper bound")
    return peak / 1024**2, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=100_000)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="stagekit-saturn-backed-"))
    human, mouse = write_species(folder, args.cells)
    common = ["--set", "training.batch_size=4096", "--set", "runtime.threads=2", "-q"]
    pre_gb, pre_s = peak_rss_gb(
        "pretrain", "-p", "saturn", human, mouse, "--protein-emb", f"human={folder / 'human.npz'}",
        "--protein-emb", f"mouse={folder / 'mouse.npz'}", "--label-key", "cell_type", "--backed",
        "--set", "data.hv_genes=500", "--set", "model.n_macrogenes=200", "--set", f"training.epochs={args.epochs}",
        *common, "-o", folder / "pre.stk")
    align_gb, align_s = peak_rss_gb("align", folder / "pre.stk", "--set", "training.epochs=1", *common,
                                    "-o", folder / "align.stk")
    print(f"2 species x {args.cells:,} cells x 500 genes, M = 200, batch 4096, --backed; files in {folder}")
    print(f"pretrain ({args.epochs} epochs): peak RSS {pre_gb:.2f} GB, {pre_s:.0f} s")
    print(f"align (1 epoch):            peak RSS {align_gb:.2f} GB, {align_s:.0f} s")
    worst = max(pre_gb, align_gb)
    print(f"target: under 4 GB: {'met' if worst < 4 else 'MISSED'} ({worst:.2f} GB)")


if __name__ == "__main__":
    main()
