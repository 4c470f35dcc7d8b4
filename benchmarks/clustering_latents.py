"""Where the clustering chain's representation stands: k-means at the true k on PCA-50, on the `vae` preset's
latent (and variants of it) and on scvi-tools' SCVI latent, per labelled set, same cells, same seed.

SCVI runs as its users run it (`setup_anndata` on raw counts, NB likelihood, 200 epochs, its other defaults;
latent 10). stagekit variants are `pretrain --preset vae` with `--set` overrides,
given as NAME=KEY=VALUE[,KEY=VALUE...]. Sets and their files are benchmarks/clustering_sets.py's.

    python benchmarks/clustering_latents.py [--sets worm kidney kang cite ifnb] [--seed 0] [--no-scvi]
        [--variant beta1=model.beta=1.0 ...] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from _chain import ari_nmi_acc, stagekit
from clustering_sets import DATA, SETS


def kmeans_ari(latent: np.ndarray, labels: np.ndarray, k: int, seed: int) -> float:
    from stagekit.stages.clustering.baselines import kmeans_labels

    return ari_nmi_acc(labels, kmeans_labels(latent, k, seed))["ari"]


def scvi_latent(path: Path, seed: int) -> tuple[np.ndarray, float]:
    import anndata
    import scvi

    scvi.settings.seed = seed
    adata = anndata.read_h5ad(path)
    scvi.model.SCVI.setup_anndata(adata)
    model = scvi.model.SCVI(adata, n_latent=10, gene_likelihood="nb")
    started = time.perf_counter()
    model.train(max_epochs=200, accelerator="cpu", enable_progress_bar=False)
    return model.get_latent_representation(), time.perf_counter() - started


def main() -> None:
    import anndata

    from stagekit.bundle import read_bundle
    from stagekit.stages.clustering.baselines import expression_pca
    from stagekit.stages.clustering.cells import vae_cells
    from stagekit.stages.spec import CellsRequest

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=["worm", "kidney", "kang", "cite", "ifnb"],
                        choices=[s for s in SETS if s != "digits"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", nargs="*", default=[], metavar="NAME=KEY=VALUE[,KEY=VALUE]")
    parser.add_argument("--no-scvi", action="store_true")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="stagekit-latents-"))
    work.mkdir(parents=True, exist_ok=True)
    variants = {"vae preset": []} | {v.split("=", 1)[0]: [a for kv in v.split("=", 1)[1].split(",")
                                                          for a in ("--set", kv)] for v in args.variant}
    rows = {}
    for name in args.sets:
        file, label_key, _, _ = SETS[name]
        path = DATA / file
        adata = anndata.read_h5ad(path)
        labels = adata.obs[label_key].astype(str).to_numpy()
        k = len(np.unique(labels))
        row = {"PCA-50": kmeans_ari(expression_pca(adata.X, args.seed, True), labels, k, args.seed)}
        for variant, overrides in variants.items():
            out = work / f"{name}_{variant.replace(' ', '_')}_{args.seed}.stk"
            if not out.exists():
                stagekit("pretrain", "-p", "vae", path, *overrides, "--seed", args.seed, "-q", "-o", out)
            cells, _ = vae_cells(CellsRequest(read_bundle(out), [path], log=lambda m: None))
            row[variant] = kmeans_ari(cells.obsm["X_stagekit"], labels, k, args.seed)
        if not args.no_scvi:
            latent, seconds = scvi_latent(path, args.seed)
            row["SCVI latent"] = kmeans_ari(latent, labels, k, args.seed)
            print(f"{name}: SCVI trained in {seconds:.0f} s", flush=True)
        rows[name] = row
        print(name, {m: round(v, 3) for m, v in row.items()}, flush=True)
    methods = list(next(iter(rows.values())))
    print(f"\nk-means ARI at the true k, seed {args.seed}")
    print(f"{'set':<8}" + "".join(f"{m:>16}" for m in methods))
    for name, row in rows.items():
        print(f"{name:<8}" + "".join(f"{row[m]:16.3f}" for m in methods))


if __name__ == "__main__":
    main()
