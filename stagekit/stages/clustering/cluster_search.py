"""`stagekit cluster-search`: choose the number of clusters on the pretrain latent and place k-means centres."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import sparse
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA

from stagekit.bundle import Bundle, read_bundle, write_bundle
from stagekit.data.anndata_io import CountMatrix
from stagekit.errors import UserError
from stagekit.metrics.clustering import internal_scores, label_agreement
from stagekit.metrics.neighbour_graph import (
    laplacian_spectrum,
    leiden_partition,
    nearest_neighbours,
    self_tuning_affinity,
    symmetric_graph,
)
from stagekit.metrics.plots import plot_k_scores
from stagekit.models.vae import COUNT_LIKELIHOODS
from stagekit.stages.clustering.model_config import VAEConfig
from stagekit.stages.clustering.trained import embed, load_bundle_data, load_vae
from stagekit.stages.phase import check_output, lineage_of, stamp
from stagekit.stages.spec import PhaseRequest, Table

HIGHER_IS_BETTER = {"silhouette": True, "calinski_harabasz": True, "davies_bouldin": False, "gap": True,
                    "eigengap": True}


def kmeans(latent: np.ndarray, k: int, n_init: int, max_iter: int, seed: int) -> KMeans:
    return KMeans(n_clusters=k, n_init=n_init, max_iter=max_iter, random_state=seed).fit(latent)


def gap_statistic(latent: np.ndarray, inertias: dict[int, float], references: int, seed: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Tibshirani et al. 2001: E*[log W_k] - log W_k with uniform references in the PCA-aligned bounding box."""
    rng = np.random.default_rng(seed)
    rotated = PCA(random_state=seed).fit(latent)
    frame = rotated.transform(latent)
    lo, hi = frame.min(0), frame.max(0)
    ks = sorted(inertias)
    ref_log_w = np.zeros((references, len(ks)))
    for b in range(references):
        reference = rotated.inverse_transform(rng.uniform(lo, hi, size=frame.shape))
        for j, k in enumerate(ks):
            ref_log_w[b, j] = np.log(kmeans(reference, k, 1, 100, seed + b).inertia_)
    gap = ref_log_w.mean(0) - np.log([inertias[k] for k in ks])
    sd = ref_log_w.std(0) * np.sqrt(1 + 1 / references)
    return gap, sd


def graph_scores(latent: np.ndarray, ks: list[int], cfg: dict, log: Callable[[str], None]
                 ) -> dict[str, np.ndarray]:
    """Per k, the eigengap of the normalised Laplacian of the kNN graph with self-tuning affinities; and the
    number of Leiden communities of the unweighted kNN graph (what align and scanpy-style workflows cluster)."""
    distances, indices = nearest_neighbours(latent, cfg["neighbours"])
    spectrum = laplacian_spectrum(self_tuning_affinity(distances, indices), max(ks) + 1, seed=cfg["seed"])
    communities = len(np.unique(leiden_partition(symmetric_graph(indices), cfg["leiden_resolution"],
                                                 seed=cfg["seed"])))
    log(f"Leiden (resolution {cfg['leiden_resolution']:g}, {cfg['neighbours']} neighbours): {communities} "
        "communities")
    return {"eigengap": np.array([spectrum[k] - spectrum[k - 1] for k in ks]), "leiden": np.array(communities)}


def mean_ranks(table: dict[str, np.ndarray], criteria: tuple[str, ...]) -> np.ndarray:
    """Per k, the mean over `criteria` of its rank (1 = best; ties share the better rank). The gap is ranked by
    its value here, not by Tibshirani's rule."""
    from scipy.stats import rankdata

    return np.mean([rankdata(-table[c] if HIGHER_IS_BETTER[c] else table[c], method="min") for c in criteria], 0)


def choose_k(table: dict[str, np.ndarray], selection: str, tolerance: float = 0.05,
             rank_criteria: tuple[str, ...] = ("silhouette", "eigengap")) -> int:
    """Documented rules.

    - a criterion's best k: silhouette / calinski_harabasz (highest), davies_bouldin (lowest), gap (Tibshirani:
      the smallest k with gap(k) >= gap(k+1) - s(k+1)), eigengap (the largest jump between the k-th and
      (k+1)-th eigenvalues of the normalised Laplacian of the kNN graph with self-tuning affinities);
    - leiden: the number of Leiden communities of the kNN graph (`table["leiden"]`, one value), clipped to
      the range of k;
    - silhouette_plateau: the largest k whose silhouette is within `tolerance` (relative) of the best. The
      silhouette's maximum often sits at a coarse split (lymphoid vs myeloid), with the finer, nearly as well
      separated partition just behind it;
    - consensus: the median of the k each computed criterion (silhouette, Calinski-Harabasz, Davies-Bouldin,
      eigengap, and the gap when computed) chooses (the lower median for an even count);
    - mean_rank: the k with the best mean rank over `rank_criteria` (the smaller k on a tie).

    The default is the eigengap: over six labelled sets and three seeds it erred least, and came within 2 of
    the true k on three of the six (README, "How the chain holds across data sets").
    """
    ks = table["k"]
    if selection == "mean_rank":  # the first (smallest) k wins a tie
        return int(ks[np.argmin(mean_ranks(table, rank_criteria))])
    if selection == "leiden":
        return int(np.clip(table["leiden"], ks.min(), ks.max()))
    if selection == "silhouette_plateau":
        silhouette = table["silhouette"]
        return int(ks[np.flatnonzero(silhouette >= silhouette.max() - tolerance * abs(silhouette.max())).max()])
    if selection == "consensus":
        votes = sorted(choose_k(table, criterion) for criterion in HIGHER_IS_BETTER if criterion in table)
        return int(votes[(len(votes) - 1) // 2])
    if selection == "gap":
        gap, sd = table["gap"], table["gap_sd"]
        for j in range(len(ks) - 1):  # smallest k with gap(k) >= gap(k+1) - s(k+1)
            if gap[j] >= gap[j + 1] - sd[j + 1]:
                return int(ks[j])
        return int(ks[-1])
    values = table[selection]
    return int(ks[np.argmax(values) if HIGHER_IS_BETTER[selection] else np.argmin(values)])


def edge_warning(chosen: int, ks: list[int]) -> str:
    key, other = ("cluster.k_min", "lower") if chosen == ks[0] else ("cluster.k_max", "higher")
    return (f"the chosen k = {chosen} is at the edge of the searched range {ks[0]}..{ks[-1]}; the best k may lie "
            f"beyond it: try a {other} {key}")


def baseline_clusterings(counts: CountMatrix, fits: dict[int, KMeans], chosen: int, cfg: dict,
                         log: Callable[[str], None]) -> dict[str, np.ndarray]:
    """The latent's clusterings against k-means on 50 principal components of the log-normalised counts (at each
    k) and scanpy's default Leiden on them: `pca_kmeans_ari` per k, `pca_leiden` (communities) and
    `pca_leiden_ari` (against the chosen k's clustering), and the baselines' own clusterings at the chosen k.
    `cfg`: seed, n_init, counts (log-normalise first: the model reads counts; else the features as given)."""
    from sklearn.metrics import adjusted_rand_score

    from stagekit.stages.clustering.baselines import expression_pca, kmeans_labels, leiden_labels

    seed = cfg["seed"]
    pca = expression_pca(sparse.vstack(list(counts.blocks())), seed, cfg["counts"])
    kmeans_at = {k: kmeans_labels(pca, k, seed, cfg["n_init"]) for k in fits}
    leiden = leiden_labels(pca, seed)
    agreement = adjusted_rand_score(fits[chosen].labels_, leiden)
    log(f"Leiden on 50 principal components of the counts (scanpy defaults): {len(np.unique(leiden))} "
        f"communities, ARI {agreement:.3f} with the latent's clusters at k = {chosen}")
    return {"pca_kmeans_ari": np.array([adjusted_rand_score(fits[k].labels_, kmeans_at[k]) for k in fits]),
            "pca_leiden": np.array(len(np.unique(leiden))), "pca_leiden_ari": np.array(agreement),
            "kmeans": kmeans_at[chosen], "leiden": leiden}


def run(request: PhaseRequest) -> Path:
    """Writes the bundle; its results hold the score table (k and one array per criterion) and chosen k."""
    config, pretrain_path, output, log = request.config, request.parent, request.output, request.log
    k = request.options.get("k")
    if len(request.data) > 1:
        raise UserError(f"cluster-search reads at most one .h5ad; got {len(request.data)}")
    data_path = request.data[0] if request.data else None
    started = time.time()
    check_output(output)
    cfg = config["cluster"]
    # keys some runs do not need are read on every run, so a misspelt or unused key cannot slip by
    gap_references, tolerance = cfg["gap_references"], cfg["tolerance"]
    graph_cfg = {"neighbours": cfg["neighbours"], "leiden_resolution": cfg["leiden_resolution"], "seed": cfg["seed"]}
    rank_criteria = tuple(cfg["rank_criteria"])
    unknown = sorted(set(rank_criteria) - set(HIGHER_IS_BETTER))
    if unknown or not rank_criteria:
        raise UserError(f"cluster.rank_criteria: {', '.join(unknown) or 'empty'}; choose among "
                        f"{', '.join(HIGHER_IS_BETTER)}")
    parent = read_bundle(pretrain_path, ("pretrain",), command="cluster-search")
    if parent.model != "vae":
        raise UserError(f"{pretrain_path} holds a '{parent.model}' model; cluster-search needs a vae pretrain")
    label_key = VAEConfig.of(parent).data.label_key
    counts, batch_codes = load_bundle_data(parent, data_path, (label_key,))
    latent = embed(load_vae(parent), counts, batch_codes)
    if k is not None:
        ks = [k]
    else:
        if cfg["k_min"] > cfg["k_max"]:
            raise UserError(f"cluster.k_min ({cfg['k_min']}) is larger than cluster.k_max ({cfg['k_max']})")
        ks = list(range(cfg["k_min"], cfg["k_max"] + 1))
    if ks[-1] >= counts.n_obs:
        raise UserError(f"k = {ks[-1]} needs more cells than the {counts.n_obs} in {counts.path}")

    fits, rows = {}, []
    for kk in ks:
        fits[kk] = kmeans(latent, kk, cfg["n_init"], cfg["max_iter"], cfg["seed"])
        rows.append(internal_scores(latent, fits[kk].labels_, cfg["silhouette_sample_size"], cfg["seed"]))
        log(f"k={kk:<3} " + "  ".join(f"{name} {value:.4g}" for name, value in rows[-1].items()))
    table = {"k": np.array(ks)} | {name: np.array([r[name] for r in rows]) for name in rows[0]}
    table["inertia"] = np.array([fits[kk].inertia_ for kk in ks])
    if len(ks) > 1:
        table |= graph_scores(latent, ks, graph_cfg, log)
    if cfg["gap"] or cfg["selection"] == "gap" or (cfg["selection"] == "mean_rank" and "gap" in rank_criteria):
        table["gap"], table["gap_sd"] = gap_statistic(latent, {kk: fits[kk].inertia_ for kk in ks},
                                                      gap_references, cfg["seed"])
    chosen = ks[0] if len(ks) == 1 else choose_k(table, cfg["selection"], tolerance, rank_criteria)
    best = fits[chosen]
    if len(ks) > 1 and chosen in (ks[0], ks[-1]):
        log(f"warning: {edge_warning(chosen, ks)}")
    likelihood = VAEConfig.of(parent).model.likelihood
    baseline = (baseline_clusterings(counts, fits, chosen, graph_cfg | {"n_init": cfg["n_init"],
                                                                         "counts": likelihood in COUNT_LIKELIHOODS},
                                     log) if cfg["baselines"] else {})
    table |= {name: values for name, values in baseline.items() if name.startswith("pca_")}

    final = {"k": float(chosen)} | {name: float(values[ks.index(chosen)]) if values.ndim else float(values)
                                    for name, values in table.items() if name != "k"}
    if label_key:
        labels = counts.obs[label_key].astype(str).to_numpy()
        final |= {f"label_{m}": v for m, v in label_agreement(labels, best.labels_).items()}
        for name, clusters in (("pca_kmeans", baseline.get("kmeans")), ("pca_leiden", baseline.get("leiden"))):
            if clusters is not None:
                final |= {f"label_{m}_{name}": v for m, v in label_agreement(labels, clusters).items()}
    bundle = Bundle(weights=parent.weights,
                    model_config=parent.model_config, lineage=lineage_of(parent), data=counts.fingerprint(),
                    var_names=parent.var_names, categories=parent.categories, final_metrics=final,
                    results=table | {"centres": best.cluster_centers_.astype(np.float32),
                                     "assignments": best.labels_.astype(np.int64)})
    write_bundle(stamp(bundle, config, cfg["seed"], started, "cpu (scikit-learn k-means)"), output)
    if len(ks) > 1:
        plot_k_scores(table, chosen, output.with_name(output.stem + ".scores.png"))
    return output


def score_table(path: Path) -> Table:
    """The stored score per k, the chosen k marked."""
    bundle = read_bundle(path, weights=False)
    scores, chosen = bundle.results, int(bundle.final_metrics["k"])
    cluster_cfg = bundle.config()["cluster"]
    selection = cluster_cfg["selection"]
    leiden = f"; Leiden communities: {int(scores['leiden'])}" if "leiden" in scores else ""
    columns = {c: scores[c] for c in ("silhouette", "calinski_harabasz", "davies_bouldin", "gap", "eigengap")
               if c in scores}
    if selection == "mean_rank" and len(scores["k"]) > 1:
        criteria = tuple(cluster_cfg["rank_criteria"])
        columns[f"mean rank ({' + '.join(criteria)})"] = mean_ranks(scores, criteria)
    if "pca_kmeans_ari" in scores:
        columns["ARI with PCA-50 k-means"] = scores["pca_kmeans_ari"]
    rows = [[f"{kk}{' *' if kk == chosen else ''}", *(f"{v[i]:.4g}" for v in columns.values())]
            for i, kk in enumerate(scores["k"])]
    ks = [int(kk) for kk in scores["k"]]
    notes = ["* the chosen k"]
    if len(ks) > 1 and chosen in (ks[0], ks[-1]):
        notes.append(edge_warning(chosen, ks))
    if "eigengap" in scores and len(ks) > 2:  # near-equal jumps are common: show the runners-up to try with --k
        jumps = np.argsort(-scores["eigengap"], kind="stable")[:3]
        notes.append("largest eigengaps: " + ", ".join(f"k = {ks[j]} ({scores['eigengap'][j]:.3g})" for j in jumps))
    if "pca_leiden" in scores:
        notes.append(f"Leiden on the PCA-50 graph (scanpy defaults): {int(scores['pca_leiden'])} communities, "
                     f"ARI {float(scores['pca_leiden_ari']):.3f} with the chosen clusters")
    final = bundle.final_metrics
    if "label_ari" in final:
        against = [f"latent k-means {final['label_ari']:.3f}"]
        against += [f"{name} {final[key]:.3f}" for name, key in (("PCA-50 k-means", "label_ari_pca_kmeans"),
                                                                  ("PCA-50 Leiden", "label_ari_pca_leiden"))
                    if key in final]
        notes.append(f"ARI with obs['{VAEConfig.of(bundle).data.label_key}'] at the chosen k: " + ", ".join(against))
    return Table(f"cluster-search (selection: {selection}{leiden})", ["k", *columns], rows, notes)
