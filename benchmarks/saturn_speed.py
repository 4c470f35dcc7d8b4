"""Cross-species pipeline speed and memory at the reference's benchmark shapes and at SATURN's real shapes.

Synthetic two-species counts (6 cell-type programs; all genes kept as HV genes), 2 torch threads (as the
reference), CPU. One shape per run (`--shape`):

    toy       2 x 1,000 cells x 500 genes, M 200, embedding 256, batch 4,096  (the first cross-species issue)
    pancreas  175 + 822 cells x 2,000 genes, M 2,000, embedding 64, batch 256  (the two-species pancreas case)
    run       2 x 5,000 cells x 2,000 genes, M 500, embedding 256, batch 4,096
    real      2 x 5,000 cells x 8,000 genes, M 2,000, embedding 256, batch 4,096  (SATURN's defaults)
    memory    2 x 20,000 cells at the real shape, one epoch (the real size for peak memory)

Measured: CPU seconds per pretrain epoch and per align (metric) epoch, for the training steps and for the whole
command (loading, HVG, macrogene k-means, training, writing) divided by the epochs; the macrogene k-means; peak
RSS of each phase's process (pretrain and align run in processes of their own, as users run the commands; the
data are generated in a third) and what a run adds above importing torch, Lightning Fabric, scvi-tools and
anndata. The
reference's figures, measured on this kind of machine, are the issues' (SATURN itself cannot be installed here):
toy 1.34 CPU-s per pretrain epoch, 1.80 per metric epoch, 13 s k-means, 0.94 GB; pancreas 11.9 CPU-s per pretrain
epoch, 1.63 GB; run 12.4 and 26.7 CPU-s, 2.33 GB. Targets: toy >= 10x less time per epoch and <= 1/2 the peak
memory; the other shapes >= 3x less CPU time per epoch.

Beside each time: the matrix-multiply work of one epoch counted from the shapes, and the CPU time that work
needs at the rate torch.matmul reaches on this machine for the largest product of the shape ((batch x genes) @
(genes x M), measured in the same run): the "limit". Counted per cell of species s (G genes, M macrogenes,
H hidden, E embedding, S species): pretrain 16 G M (the macrogene layer forward and weight gradient 4 G M;
the decoder's gene layer and zero-inflation head, forward and both gradients, 6 G M each) plus 6 (2 M H + H E +
(E + S) H) for encoder and decoder; align 6 (M H + H E), and per step the mining products 2 B_0 B_1 M
(cross-species neighbours in macrogene space) and 2 B^2 E (embedding similarities). With the macrogenes frozen
align computes the gene layer's 2 G M per cell once per run, not per epoch ("align, once"). Target at the
pancreas and real shapes: pretrain and align >= 50 % of the limit.

This machine's timings drift by +-15 % from minute to minute; compare rows of one run, and run it twice.

    python benchmarks/saturn_speed.py [--shape toy|pancreas|run|real|memory] [--epochs N] [--threads 2]
        [--micro-batch-size N] [--glibc-default]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Shape:
    cells: tuple[int, int]
    genes: int
    macrogenes: int
    embed: int
    batch: int
    epochs: int
    reference: dict[str, float]  # the SATURN reference's figures at this shape, where measured
    dim: int = 1280  # protein embedding (ESM-1b's size)
    hidden: int = 256


SHAPES = {
    "toy": Shape((1000, 1000), 500, 200, 256, 4096, 10, {"pretrain_epoch_cpu_s": 1.34, "align_epoch_cpu_s": 1.80,
                                                         "kmeans_s": 13.0, "peak_rss_gb": 0.94}, dim=64),
    "pancreas": Shape((175, 822), 2000, 2000, 64, 256, 5, {"pretrain_epoch_cpu_s": 11.9, "peak_rss_gb": 1.63}),
    "run": Shape((5000, 5000), 2000, 500, 256, 4096, 3, {"pretrain_epoch_cpu_s": 12.4, "align_epoch_cpu_s": 26.7,
                                                         "peak_rss_gb": 2.33}),
    "real": Shape((5000, 5000), 8000, 2000, 256, 4096, 2, {}),
    "memory": Shape((20000, 20000), 8000, 2000, 256, 4096, 1, {}),  # issue 14's real size for peak RSS
}
TARGET_RATIO = {"toy": 10.0, "pancreas": 3.0, "run": 3.0, "real": 3.0, "memory": 3.0}


def write_species(folder: Path, n_cells: int | tuple[int, int] = 1000, n_genes: int = 500, dim: int = 64,
                  chunk: int = 20_000) -> list[Path]:
    """Two species of synthetic counts (6 cell-type programs) and their gene embeddings; cells are drawn `chunk`
    at a time so 100,000 cells need no dense 100,000 x genes array."""
    import anndata
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    programs = rng.gamma(0.3, 1.0, (6, n_genes))
    base = rng.normal(size=(n_genes, dim))
    paths = []
    for name, cells in zip(("human", "mouse"), np.broadcast_to(n_cells, 2), strict=True):
        types = rng.integers(0, 6, cells)
        counts = sp.vstack([sp.csr_matrix(rng.poisson(programs[types[i:i + chunk]] * 2).astype(np.float32))
                            for i in range(0, cells, chunk)]).tocsr()
        adata = anndata.AnnData(X=counts, obs=pd.DataFrame({"cell_type": types.astype(str)},
                                                           index=[f"{name}{i}" for i in range(cells)]))
        adata.var_names = [f"{name}_g{i}" for i in range(n_genes)]
        adata.write_h5ad(folder / f"{name}.h5ad")
        np.savez(folder / f"{name}.npz", genes=np.array(adata.var_names, dtype=str),
                 embeddings=(base + 0.1 * rng.normal(size=base.shape)).astype(np.float32))
        paths.append(folder / f"{name}.h5ad")
    return paths


def step_batches(shape: Shape) -> list[tuple[int, int]]:
    """Cells of each species in each step of one epoch (the smaller species cycles), as the tasks plan them."""
    from stagekit.data.batching import epoch_plan

    plans = [epoch_plan(np.arange(n), shape.batch, i, 0) for i, n in enumerate(shape.cells)]
    return [tuple(len(p[j % len(p)]) for p in plans) for j in range(max(map(len, plans)))]


def epoch_flop(shape: Shape) -> dict[str, float]:
    """Matrix-multiply FLOP of one pretrain and one align epoch (module docstring)."""
    g, m, h, e, s = shape.genes, shape.macrogenes, shape.hidden, shape.embed, len(shape.cells)
    pretrain = align = 0.0
    for b0, b1 in step_batches(shape):
        cells = b0 + b1
        pretrain += cells * (16 * g * m + 6 * (2 * m * h + h * e + (e + s) * h))
        align += cells * 6 * (m * h + h * e) + 2 * b0 * b1 * m + 2 * cells**2 * e
    return {"pretrain": pretrain, "align": align, "align_once": sum(shape.cells) * 2 * g * m}


def matmul_flop_per_cpu_s(shape: Shape, rounds: int = 3) -> float:
    """FLOP per CPU-second of torch.matmul at the shape's largest product, (batch x genes) @ (genes x M): the
    best of `rounds` rounds of at least one CPU-second each (the rate the machine can reach; it drifts)."""
    import torch

    a, b = torch.rand(min(shape.batch, max(shape.cells)), shape.genes), torch.rand(shape.genes, shape.macrogenes)
    a @ b
    rates = []
    for _ in range(rounds):
        c0, done = cpu_seconds(), 0
        while done < 2 or cpu_seconds() - c0 < 1.0:  # getrusage ticks are coarse
            a @ b
            done += 1
        rates.append(done * 2 * a.shape[0] * a.shape[1] * b.shape[1] / (cpu_seconds() - c0))
    return max(rates)


def rss_gb() -> float:
    """Resident memory now (not the peak)."""
    import os

    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024**3


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_one_phase(args: argparse.Namespace) -> None:
    """Child process: one phase on the folder the parent wrote; prints its measurements as one JSON line."""
    import json

    import anndata  # noqa: F401  the stack every run imports, before anything is measured
    import lightning.fabric  # noqa: F401
    import scvi  # noqa: F401
    import torch

    imports_gb = rss_gb()
    from stagekit.bundle import read_bundle
    from stagekit.stages.cross_species import pretrain
    from stagekit.stages.registry import read_config, run_phase
    from stagekit.stages.spec import PhaseRequest
    from stagekit.train import engine

    if args.glibc_default:
        engine.keep_freed_memory = lambda: False
    shape, folder = SHAPES[args.shape], Path(args.folder)
    torch.set_num_threads(args.threads)
    kmeans_s = []
    original = pretrain.macrogene_centroids

    def timed_centroids(*a, **k):  # the k-means of the run itself, timed
        t0 = time.perf_counter()
        out = original(*a, **k)
        kmeans_s.append(time.perf_counter() - t0)
        return out

    pretrain.macrogene_centroids = timed_centroids
    common = [("training.epochs", args.epochs or shape.epochs, "bench"),
              ("training.batch_size", shape.batch, "bench"), ("runtime.threads", args.threads, "bench")]
    if args.precision:
        common.append(("runtime.precision", args.precision, "bench"))
    c0, t0 = cpu_seconds(), time.perf_counter()
    if args.run_phase == "pretrain":
        model = [("data.hv_genes", shape.genes, "bench"), ("model.n_macrogenes", shape.macrogenes, "bench"),
                 ("model.n_hidden", shape.hidden, "bench"), ("model.n_embed", shape.embed, "bench"),
                 ("data.label_key", "cell_type", "bench")]
        micro = [] if args.micro_batch_size is None else [("training.micro_batch_size", args.micro_batch_size,
                                                           "bench")]
        config = read_config("pretrain", "saturn", common + model + micro)
        micro_batch = config["training"]["micro_batch_size"]
        embeddings = [f"human={folder / 'human.npz'}", f"mouse={folder / 'mouse.npz'}"]
        run_phase(PhaseRequest(config, folder / "pre.stk", [folder / "human.h5ad", folder / "mouse.h5ad"],
                               quiet=True, options={"species": ["human", "mouse"], "protein_emb": embeddings}))
    else:
        micro_batch = None
        run_phase(PhaseRequest(read_config("align", "align", common), folder / "align.stk",
                               parent=folder / "pre.stk", quiet=True, log=lambda m: None))
    whole = (cpu_seconds() - c0, time.perf_counter() - t0)
    bundle = read_bundle(folder / ("pre.stk" if args.run_phase == "pretrain" else "align.stk"), weights=False)
    print(json.dumps({"epoch_cpu_s": float(np.median(bundle.history["epoch_cpu_s"])), "cpu_s": whole[0],
                      "wall_s": whole[1], "kmeans_s": kmeans_s[0] if kmeans_s else None,
                      "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
                      "imports_gb": imports_gb, "micro_batch_size": micro_batch}))


def main() -> None:
    import json
    import subprocess
    import sys

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=SHAPES, default="toy")
    parser.add_argument("--epochs", type=int, help="epochs of each stage (default: per shape)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the reference ran with 2)")
    parser.add_argument("--micro-batch-size", type=int,
                        help="pretrain's training.micro_batch_size (cells of each species per pass; 0: the whole "
                             "batch; default: the saturn preset's)")
    parser.add_argument("--precision", choices=("32-true", "bf16-mixed"),
                        help="runtime.precision of both phases (default: the presets')")
    parser.add_argument("--glibc-default", action="store_true",
                        help="leave glibc's allocator as it is (the engine keeps freed large blocks otherwise)")
    parser.add_argument("--run-phase", choices=("pretrain", "align"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_phase:
        run_one_phase(args)
        return
    import torch

    torch.set_num_threads(args.threads)
    shape = SHAPES[args.shape]
    epochs = args.epochs or shape.epochs
    folder = Path(tempfile.mkdtemp(prefix="stagekit-saturn-bench-"))
    measured = {}
    try:  # the data and bundles take 0.6-1.2 GB at the real shapes: removed after every run
        write_species(folder, shape.cells, shape.genes, shape.dim)
        for phase in ("pretrain", "align"):  # each phase in its own process, as users run the commands
            child = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--run-phase", phase, "--folder",
                                    str(folder)], capture_output=True, text=True)
            if child.returncode:
                sys.exit(f"{phase} failed:\n{child.stderr[-3000:]}")
            measured[phase] = json.loads(child.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    pre, align = measured["pretrain"], measured["align"]
    rate = matmul_flop_per_cpu_s(shape)
    flop = epoch_flop(shape)
    ref = shape.reference
    print(f"{args.shape}: {' + '.join(f'{n:,}' for n in shape.cells)} cells x {shape.genes:,} genes per species, "
          f"M = {shape.macrogenes:,}, hidden {shape.hidden}, embedding {shape.embed}, batch {shape.batch:,}, "
          f"protein embedding dim {shape.dim}, {epochs} epochs, {args.threads} thread(s), CPU, "
          f"precision {args.precision or 'of the presets'}"
          + (", glibc's default allocator" if args.glibc_default else "")
          + f", pretrain micro-batches of {pre['micro_batch_size'] or 'the whole batch'}")
    print(f"torch.matmul at ({min(shape.batch, max(shape.cells))} x {shape.genes}) @ ({shape.genes} x "
          f"{shape.macrogenes}), float32: {rate / 1e9:.0f} GFLOP per CPU-s")
    print(f"{'measure':<44} {'stagekit':>9} {'limit':>8} {'of limit':>8} {'reference':>9} {'ratio':>7}")
    for stage, m in (("pretrain", pre), ("align", align)):
        steps, whole, limit = m["epoch_cpu_s"], m["cpu_s"], flop[stage] / rate
        reference = ref.get(f"{stage}_epoch_cpu_s")
        versus = f"{reference:9.2f} {reference / steps:6.1f}x" if reference else f"{'-':>9} {'-':>7}"
        print(f"{stage + ' epoch, training steps (CPU-s)':<44} {steps:9.2f} {limit:8.2f} {limit / steps:8.0%} "
              + versus + f"   ({flop[stage] / 1e9:,.0f} GFLOP)")
        versus = f"{reference:9.2f} {reference * epochs / whole:6.1f}x" if reference else f"{'-':>9} {'-':>7}"
        print(f"{stage + ' whole command / epochs (CPU-s)':<44} {whole / epochs:9.2f} {'':>8} {'':>8} " + versus)
    print(f"{'align, once: macrogene products (GFLOP)':<44} {flop['align_once'] / 1e9:9.0f} "
          f"{flop['align_once'] / rate:8.2f}")
    print(f"{'pretrain / align whole command (wall s)':<44} {pre['wall_s']:9.1f} {align['wall_s']:8.1f}")
    k_ref = ref.get("kmeans_s")
    print(f"{'macrogene k-means (s)':<44} {pre['kmeans_s']:9.2f} {'':>8} {'':>8} "
          + (f"{k_ref:9.2f} {k_ref / pre['kmeans_s']:6.1f}x" if k_ref else f"{'-':>9} {'-':>7}"))
    peak_gb = max(pre["peak_gb"], align["peak_gb"])
    rss_ref = ref.get("peak_rss_gb")
    print(f"{'peak RSS (GB): pretrain / align processes':<44} {pre['peak_gb']:9.2f} {align['peak_gb']:8.2f}"
          + (f" {'':>8} {rss_ref:9.2f} {rss_ref / peak_gb:6.1f}x" if rss_ref else ""))
    print(f"{'RSS after importing torch, Fabric, scvi-tools, anndata (GB)':<60} {pre['imports_gb']:6.2f}")
    print(f"{'peak RSS above those imports (GB)':<60} {peak_gb - pre['imports_gb']:6.2f}")
    print(f"targets: >= {TARGET_RATIO[args.shape]:g}x less CPU time per epoch than the reference"
          + ("; peak memory <= 1/2 (ratio >= 2x)" if args.shape == "toy" else "; >= 50 % of the limit"))
    print("(the whole-command rows add data loading, HVG, k-means and bundle writing, spread over the epochs run;"
          " the reference's whole-command figures are not known)")


if __name__ == "__main__":
    main()
