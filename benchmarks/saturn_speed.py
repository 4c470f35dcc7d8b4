"""Cross-species pipeline speed and memory at the reference's benchmark shapes.

Synthetic two-species counts: 2 species x 1,000 cells x 500 genes (all kept as HV genes), M = 200 macrogenes,
batch 4096, 2 torch threads (as the reference), CPU. Measures CPU seconds per pretrain epoch, per align (metric)
epoch, the macrogene k-means, and peak RSS of this process, and prints ratios against the SATURN reference's figures
measured on this kind of machine (given in the issue; the reference itself cannot be installed here):
1.34 CPU-s per pretrain epoch, 1.80 CPU-s per metric epoch, 13 s k-means, 0.94 GB peak RSS.
Targets: >= 10x less time per epoch in each stage, <= 1/2 the peak memory.

This machine's timings drift by +-15 % from minute to minute; compare rows of one run, and run it twice.
`--threads 1` shows the CPU time of a single-threaded run (elementwise work does not split well over 2 threads).
The memory rows separate what importing the mandated stack costs (torch, Lightning Fabric, scvi-tools, anndata)
from what the run itself adds.

    python benchmarks/saturn_speed.py [--epochs 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

REFERENCE = {"pretrain_epoch_cpu_s": 1.34, "align_epoch_cpu_s": 1.80, "kmeans_s": 13.0, "peak_rss_gb": 0.94}


def write_species(folder: Path, n_cells: int = 1000, n_genes: int = 500, dim: int = 64, chunk: int = 20_000
                  ) -> list[Path]:
    """Two species of synthetic counts (6 cell-type programs) and their gene embeddings; cells are drawn `chunk`
    at a time so 100,000 cells need no dense 100,000 x genes array."""
    import anndata
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    programs = rng.gamma(0.3, 1.0, (6, n_genes))
    base = rng.normal(size=(n_genes, dim))
    paths = []
    for name in ("human", "mouse"):
        types = rng.integers(0, 6, n_cells)
        counts = sp.vstack([sp.csr_matrix(rng.poisson(programs[types[i:i + chunk]] * 2).astype(np.float32))
                            for i in range(0, n_cells, chunk)]).tocsr()
        adata = anndata.AnnData(X=counts, obs=pd.DataFrame({"cell_type": types.astype(str)},
                                                           index=[f"{name}{i}" for i in range(n_cells)]))
        adata.var_names = [f"{name}_g{i}" for i in range(n_genes)]
        adata.write_h5ad(folder / f"{name}.h5ad")
        np.savez(folder / f"{name}.npz", genes=np.array(adata.var_names, dtype=str),
                 embeddings=(base + 0.1 * rng.normal(size=base.shape)).astype(np.float32))
        paths.append(folder / f"{name}.h5ad")
    return paths


def rss_gb() -> float:
    """Resident memory now (not the peak)."""
    import os

    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024**3


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    import anndata  # noqa: F401  the stack every run imports, before anything is measured
    import lightning.fabric  # noqa: F401
    import scvi  # noqa: F401
    import torch

    imports_gb = rss_gb()

    from stagekit.bundle import read_bundle
    from stagekit.config import resolve_config
    from stagekit.models.macrogenes import initial_log_weights
    from stagekit.stages.registry import PhaseRequest, run_phase

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the reference ran with 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folder = Path(tempfile.mkdtemp(prefix="stagekit-saturn-bench-"))
    human, mouse = write_species(folder)
    protein = np.concatenate([np.load(folder / "human.npz")["embeddings"], np.load(folder / "mouse.npz")["embeddings"]])
    t0 = time.perf_counter()
    initial_log_weights(protein, 200, seed=0)
    kmeans_s = time.perf_counter() - t0

    common = [("training.epochs", args.epochs, "bench"), ("training.batch_size", 4096, "bench"),
              ("runtime.threads", args.threads, "bench")]
    pre = resolve_config("pretrain", "saturn", common + [("data.hv_genes", 500, "bench"),
                                                         ("model.n_macrogenes", 200, "bench"),
                                                         ("data.label_key", "cell_type", "bench")])
    c0 = cpu_seconds()
    embeddings = [f"human={folder / 'human.npz'}", f"mouse={folder / 'mouse.npz'}"]
    run_phase(PhaseRequest(pre, folder / "pre.stk", [human, mouse], quiet=True,
                           options={"species": ["human", "mouse"], "protein_emb": embeddings}))
    pre_bundle = read_bundle(folder / "pre.stk", weights=False)
    pre_epoch = np.median(pre_bundle.history["epoch_cpu_s"])  # CPU time of the training steps per epoch
    pre_cpu = (cpu_seconds() - c0) / args.epochs  # includes loading, HVG and k-means: an upper bound
    c0 = cpu_seconds()
    align = resolve_config("align", "align", common)
    run_phase(PhaseRequest(align, folder / "align.stk", parent=folder / "pre.stk", quiet=True, log=lambda m: None))
    align_epoch = np.median(read_bundle(folder / "align.stk", weights=False).history["epoch_cpu_s"])
    align_cpu = (cpu_seconds() - c0) / args.epochs
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    rows = {"pretrain epoch (CPU-s, whole run / epochs)": (pre_cpu, REFERENCE["pretrain_epoch_cpu_s"]),
            "pretrain epoch (training steps CPU-s)": (pre_epoch, REFERENCE["pretrain_epoch_cpu_s"]),
            "align epoch (CPU-s, whole run / epochs)": (align_cpu, REFERENCE["align_epoch_cpu_s"]),
            "align epoch (training steps CPU-s)": (align_epoch, REFERENCE["align_epoch_cpu_s"]),
            "macrogene k-means (s)": (kmeans_s, REFERENCE["kmeans_s"]),
            "peak RSS (GB, whole process)": (peak_gb, REFERENCE["peak_rss_gb"])}
    print(f"2 species x 1,000 cells x 500 genes, M = 200, batch 4096, {args.threads} thread(s), CPU")
    print(f"{'measure':<46} {'stagekit':>9} {'reference':>9} {'ratio':>7}")
    for name, (ours, ref) in rows.items():
        print(f"{name:<46} {ours:9.3f} {ref:9.3f} {ref / ours:6.1f}x")
    print(f"{'RSS after importing torch, Fabric, scvi-tools, anndata (GB)':<46} {imports_gb:9.3f}")
    print(f"{'peak RSS above those imports (GB)':<46} {peak_gb - imports_gb:9.3f}")
    print("targets: >= 10x less time per epoch in each stage; peak memory <= 1/2 (ratio >= 2x)")
    print("(the whole-run rows add data loading, HVG, k-means and bundle writing, spread over the epochs run)")


if __name__ == "__main__":
    main()
