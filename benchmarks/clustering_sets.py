"""The clustering chain on six real labelled sets x three seeds, side by side with the simple baselines.

Sets (../shared/data, labels used only for scoring), of the two shapes users bring: top-2,000-gene matrices as
preprocessed by the scDeepCluster/scDCC authors (C. elegans neurons, Cao 2017, 4,186 cells, 10 types; human kidney,
Young 2018, 5,685 cells, 11 types; CITE-seq cord blood, Stoeckius 2017, 8,617 cells, 15 types) and whole raw count
files (Kang 2018 PBMC, 8,684 cells x 2,511 genes, 4 types; Kang's IFN-beta PBMC subset, 2,800 cells x 14,053
genes, 13 types), plus scikit-learn's digits (1,797 images, 10 classes; `--preset autoencoder`, DEC with
`balance = 1`, as benchmarks/clustering_digits.py). Per set and seed, as a user runs it:

    pretrain -> cluster-search (every rule read off one score table, gap included) -> cluster-search --k TRUE
    -> finetune --preset dec

Printed: ARI at the true k of k-means on PCA-50 of the log-normalised counts (of the pixels for digits) and of
scanpy's default Leiden on the PCA-50 graph (both as `cluster-search --k TRUE` reports them), of k-means on the
pretrain latent and of DEC; the k each rule chooses against the true k; the chain's wall time against
scDeepCluster's 1,638 s (its reference run on 2 cores for 4,271 cells). Targets: DEC ARI >= PCA-50 k-means on at
least 5 of the 6 sets and never more than 0.03 below it; DEC >= Leiden on at least 4 of 6 (means over seeds); the
default rule within +/- 2 of the true k on at least 4 of 6 (median over seeds); pretrain + cluster-search + DEC
<= 163.8 s.

    python benchmarks/clustering_sets.py [--sets worm kidney kang digits cite ifnb stim ifnb-hvg] [--seeds 0 1 2]
        [--pretrain-set model.n_latent=10 ...] [--workdir DIR]

Extra checks outside the six sets: `stim` (Kang's 1,556 IFN-beta-stimulated and control PBMCs, 5 types) and
`ifnb-hvg` (the 13-type IFN-beta subset on its 2,000 most variable genes, `data.n_top_genes = 2000`).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from _chain import ari_nmi_acc, stagekit
from clustering_digits import write_digits

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SETS = {  # name: (file, label column, pretrain preset, pretrain overrides, DEC overrides)
    "worm": ("scdcc_worm_neuron_top2000.h5ad", "label", "vae", [], []),
    "kidney": ("scdcc_human_kidney_top2000.h5ad", "label", "vae", [], []),
    "kang": ("kang2018_muscat_subset.h5ad", "cluster_id", "vae", [], []),
    "digits": ("digits.h5ad", "digit", "autoencoder", [], ["--set", "dec.balance=1.0"]),
    "cite": ("scdcc_cite_cbmc_top2000.h5ad", "label", "vae", [], []),
    "ifnb": ("kang2018_ifnb_2800.h5ad", "label", "vae", [], []),
    # extra checks outside the six sets: 1,556 IFN-beta-stimulated and control PBMCs, 5 types; and the
    # 13-type IFN-beta subset on its 2,000 most variable genes, the shape of scDeepCluster's own input
    "stim": ("kang2018_muscat_example_sce.h5ad", "cluster_id", "vae", [], []),
    "ifnb-hvg": ("kang2018_ifnb_2800.h5ad", "label", "vae", ["--set", "data.n_top_genes=2000"], []),
}
DEFAULT_SETS = ["worm", "kidney", "kang", "digits", "cite", "ifnb"]
RULES = ("mean_rank", "silhouette_plateau", "silhouette", "calinski_harabasz", "davies_bouldin", "gap", "eigengap",
         "leiden", "consensus")
REFERENCE_SECONDS = 1638.0


def run_set(name: str, seed: int, work: Path, pretrain_sets: list[str]) -> dict:
    import anndata

    from stagekit.bundle import read_bundle
    from stagekit.stages.clustering.cluster_search import choose_k

    file, label_key, preset, own_sets, dec_sets = SETS[name]
    path = work / file if name == "digits" else DATA / file
    labels = anndata.read_h5ad(path, backed="r").obs[label_key].astype(str).to_numpy()
    true_k = len(np.unique(labels))
    out = work / f"{name}_{seed}"
    out.mkdir(exist_ok=True)
    s = ["-q", "--seed", seed]
    times = {}
    started = time.perf_counter()
    overrides = own_sets + [a for value in pretrain_sets for a in ("--set", value)]
    stagekit("pretrain", "-p", preset, path, "--label-key", label_key, *overrides, *s, "-o", out / "pretrain.stk")
    times["pretrain"] = time.perf_counter() - started
    started = time.perf_counter()
    stagekit("cluster-search", out / "pretrain.stk", *s, "-o", out / "search.stk")
    times["cluster-search"] = time.perf_counter() - started
    search = read_bundle(out / "search.stk", weights=False)
    started = time.perf_counter()
    stagekit("cluster-search", out / "pretrain.stk", "--set", "cluster.gap=true", "--set", "cluster.baselines=false",
             *s, "-o", out / "gap.stk")
    times["gap"] = time.perf_counter() - started
    table = read_bundle(out / "gap.stk", weights=False).results
    chosen = {rule: choose_k(table, rule, 0.05) for rule in RULES}
    chosen["default"] = int(search.final_metrics["k"])
    stagekit("cluster-search", out / "pretrain.stk", "--k", true_k, *s, "-o", out / "clusters.stk")
    started = time.perf_counter()
    try:  # a run the collapse guard stops counts as the user sees it: no result
        stagekit("finetune", "-p", "dec", out / "clusters.stk", *dec_sets, *s, "-o", out / "dec.stk")
    except SystemExit as stopped:
        print(f"{name} seed {seed}: {stopped}", flush=True)
    times["dec"] = time.perf_counter() - started
    at_true_k = read_bundle(out / "clusters.stk", weights=False)  # its baselines: what cluster-search shows
    ari = {"pca50_kmeans": at_true_k.final_metrics["label_ari_pca_kmeans"],
           "pca50_leiden": at_true_k.final_metrics["label_ari_pca_leiden"],
           "latent_kmeans": ari_nmi_acc(labels, at_true_k.results["assignments"])["ari"],
           "dec": (ari_nmi_acc(labels, read_bundle(out / "dec.stk", weights=False).results["assignments"])["ari"]
                   if (out / "dec.stk").exists() else float("nan"))}
    return {"set": name, "seed": seed, "true_k": true_k, "k": chosen, "ari": ari, "seconds": times,
            "silhouette": np.round(table["silhouette"], 3).tolist()}


def report(results: list[dict]) -> None:
    sets = list(dict.fromkeys(r["set"] for r in results))
    by_set = {name: [r for r in results if r["set"] == name] for name in sets}
    methods = ("pca50_kmeans", "pca50_leiden", "latent_kmeans", "dec")
    print("\nARI with the true k (mean +/- sd over seeds); Leiden: scanpy's defaults, its own number of clusters")
    print(f"{'set':<8} {'true k':>6} {'PCA-50 k-means':>16} {'PCA-50 Leiden':>16} {'latent k-means':>16} "
          f"{'DEC':>16}  DEC - k-means  DEC - Leiden")
    for name, rows in by_set.items():
        cells = {m: np.array([r["ari"][m] for r in rows]) for m in methods}
        text = "  ".join(f"{np.nanmean(v):7.3f} +/- {np.nanstd(v):.3f}" for v in cells.values())
        dec = np.nanmean(cells["dec"])
        collapsed = int(np.isnan(cells["dec"]).sum())
        print(f"{name:<8} {rows[0]['true_k']:>6} {text}  {dec - cells['pca50_kmeans'].mean():+13.3f}"
              f"  {dec - cells['pca50_leiden'].mean():+12.3f}"
              + (f"  (DEC stopped by the collapse guard in {collapsed} of {len(rows)} seeds)" if collapsed else ""))
    print("\nk chosen per rule (one per seed) against the true k; sets within +/- 2 (median over seeds)")
    print(f"{'rule':<20} " + " ".join(f"{n + ' (' + str(by_set[n][0]['true_k']) + ')':>14}" for n in sets)
          + "  sets  mean |error|")
    for rule in ("default", *RULES):
        within, errors, cells = 0, [], []
        for name in sets:
            ks = [r["k"][rule] for r in by_set[name]]
            true_k = by_set[name][0]["true_k"]
            within += abs(np.median(ks) - true_k) <= 2
            errors += [abs(k - true_k) for k in ks]
            cells.append(",".join(map(str, ks)))
        print(f"{rule:<20} " + " ".join(f"{c:>14}" for c in cells) + f"  {within}/{len(sets)}  {np.mean(errors):.1f}")
    print("\nwall seconds: pretrain + cluster-search + DEC (median over seeds) against scDeepCluster's 1,638 s")
    for name, rows in by_set.items():
        chain = np.median([r["seconds"]["pretrain"] + r["seconds"]["cluster-search"] + r["seconds"]["dec"]
                           for r in rows])
        parts = {p: np.median([r["seconds"][p] for r in rows]) for p in ("pretrain", "cluster-search", "dec")}
        print(f"{name:<8} {chain:6.1f} s = 1/{REFERENCE_SECONDS / chain:.0f} of the reference  "
              + "  ".join(f"{p} {v:.1f}" for p, v in parts.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=DEFAULT_SETS, choices=list(SETS))
    parser.add_argument("--pretrain-set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides for every pretrain, e.g. model.n_latent=10 (how the README's latent-size "
                             "and likelihood comparisons were run)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="stagekit-clustering-"))
    work.mkdir(parents=True, exist_ok=True)
    if "digits" in args.sets:
        write_digits(work / "digits.h5ad")
    results = []
    for seed in args.seeds:
        for name in args.sets:
            results.append(run_set(name, seed, work, args.pretrain_set))
            print(json.dumps(results[-1]), flush=True)
    report(results)
    print(f"\nbundles in {work}")


if __name__ == "__main__":
    main()
