"""`pretrain --preset vae` throughput against scvi-tools SCVI, side by side in one process.

Same data (Kang 2018 PBMC subset, 8,684 cells x 2,511 genes), same epochs, batch size, train split (90 %),
architecture size (1 hidden layer of 128, latent 10, gene-wise NB dispersion) and torch thread count.
Prints cells/s per epoch for each and the ratio (target >= 1.5x).

    python benchmarks/vae_throughput.py [--epochs 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kang2018_muscat_subset.h5ad"


def stagekit_cells_per_s(epochs: int, batch_size: int, threads: int) -> list[float]:
    from stagekit.bundle import read_bundle
    from stagekit.stages.registry import read_config, run_phase
    from stagekit.stages.spec import PhaseRequest

    # latent 10 as the SCVI model below (the preset's is 32)
    overrides = [("model.n_latent", 10, "bench"), ("training.epochs", epochs, "bench"),
                 ("training.batch_size", batch_size, "bench"),
                 ("training.early_stopping_patience", 0, "bench"), ("runtime.threads", threads, "bench"),
                 ("training.val_fraction", 0.1, "bench")]
    config = read_config("pretrain", "vae", overrides)
    with tempfile.TemporaryDirectory() as tmp:
        out = run_phase(PhaseRequest(config, Path(tmp) / "bench.stk", [DATA], quiet=True))
        return read_bundle(out, weights=False).history["cells_per_s"]


def scvi_cells_per_s(epochs: int, batch_size: int, threads: int) -> list[float]:
    import anndata
    import scvi
    import torch
    from lightning.pytorch.callbacks import Callback

    torch.set_num_threads(threads)
    adata = anndata.read_h5ad(DATA)
    scvi.model.SCVI.setup_anndata(adata)
    model = scvi.model.SCVI(adata, n_hidden=128, n_latent=10, n_layers=1, dispersion="gene")
    n_train = int(round(adata.n_obs * 0.9))
    times: list[float] = []

    class EpochTimer(Callback):
        def on_train_epoch_start(self, trainer, module):
            self.t0 = time.perf_counter()

        def on_train_epoch_end(self, trainer, module):
            times.append(time.perf_counter() - self.t0)

    model.train(max_epochs=epochs, batch_size=batch_size, train_size=0.9, accelerator="cpu", devices=1,
                check_val_every_n_epoch=10**6, enable_progress_bar=False, callbacks=[EpochTimer()])
    return [n_train / t for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    ours = stagekit_cells_per_s(args.epochs, args.batch_size, args.threads)
    theirs = scvi_cells_per_s(args.epochs, args.batch_size, args.threads)
    # the first epoch carries one-off warm-up in both; compare the median of the rest
    a, b = statistics.median(ours[1:] or ours), statistics.median(theirs[1:] or theirs)
    print(f"data: {DATA.name}; epochs {args.epochs}; batch {args.batch_size}; threads {args.threads}")
    print(f"stagekit pretrain --preset vae : {a:9.0f} cells/s per epoch")
    print(f"scvi-tools SCVI               : {b:9.0f} cells/s per epoch")
    print(f"ratio stagekit / scvi-tools    : {a / b:9.2f}x  (target >= 1.5x)")


if __name__ == "__main__":
    main()
