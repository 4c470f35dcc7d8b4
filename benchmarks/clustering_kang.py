"""Phenotype clustering on Kang 2018 PBMC (8,684 cells, 4 types in obs["cluster_id"]).

The full chain as a user runs it (`pretrain --preset vae` -> `cluster-search` -> `finetune --preset dec`),
side by side with k-means (n_init 10) on 50 PCA components of log-normalised counts and k-means on the pretrain
latent, all with the k that cluster-search chose. Targets: k within 4 +/- 1; DEC ARI >= the best baseline.

    python benchmarks/clustering_kang.py [--seed 0] [--workdir DIR]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from _chain import ari_nmi_acc, print_table, seed_and_workdir, stagekit

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kang2018_muscat_subset.h5ad"


def pca_kmeans(k: int, seed: int) -> np.ndarray:
    import anndata
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    x = anndata.read_h5ad(DATA).X.toarray()
    x = np.log1p(1e4 * x / x.sum(1, keepdims=True))
    return KMeans(k, n_init=10, random_state=seed).fit_predict(PCA(50, random_state=seed).fit_transform(x))


def main() -> None:
    import anndata

    from stagekit.bundle import read_bundle

    seed_value, work = seed_and_workdir(__doc__.splitlines()[0], "stagekit-kang-")
    seed = ["--seed", seed_value]
    stagekit("pretrain", "-p", "vae", DATA, "--label-key", "cluster_id", "-q", *seed, "-o", work / "vae.stk")
    stagekit("cluster-search", work / "vae.stk", "-q", *seed, "-o", work / "clusters.stk")
    stagekit("finetune", "-p", "dec", work / "clusters.stk", "-q", *seed, "-o", work / "dec.stk")
    labels = anndata.read_h5ad(DATA, backed="r").obs["cluster_id"].astype(str).to_numpy()
    clusters = read_bundle(work / "clusters.stk", weights=False)
    k = int(clusters.final_metrics["k"])
    rows = {f"k-means on PCA 50 of log-normalised (k={k})": ari_nmi_acc(labels, pca_kmeans(k, seed_value)),
            f"k-means on the pretrain latent (k={k})": ari_nmi_acc(labels, clusters.results["assignments"]),
            f"stagekit DEC (finetune --preset dec, k={k})":
                ari_nmi_acc(labels, read_bundle(work / "dec.stk", weights=False).results["assignments"])}
    print_table(f"Kang 2018 PBMC, seed {seed_value}; bundles in {work}", rows)
    best = max(r["ari"] for name, r in rows.items() if "DEC" not in name)
    dec = rows[f"stagekit DEC (finetune --preset dec, k={k})"]["ari"]
    print(f"cluster-search chose k = {k} (target 4 +/- 1: {'met' if abs(k - 4) <= 1 else 'MISSED'})")
    print(f"DEC ARI / best baseline ARI = {dec / best:.3f} (target >= 1: {'met' if dec >= best else 'MISSED'})")


if __name__ == "__main__":
    main()
