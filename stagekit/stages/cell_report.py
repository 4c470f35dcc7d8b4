"""`evaluate` of per-cell outputs (an embedding in obsm, labels in obs): the parts a pipeline's report is made of.

A pipeline's report calls `cell_report` with its own cells function and the parts that score what it predicts:
clusters, classes or an integration across species. Each part adds its metrics and tables to the report.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stagekit.bundle import read_bundle
from stagekit.errors import UserError
from stagekit.metrics import plots
from stagekit.metrics.clustering import contingency, internal_scores, label_agreement
from stagekit.metrics.integration import cross_species_knn_agreement, label_transfer, species_mixing
from stagekit.stages.spec import CellsRequest, Report, ReportRequest, Table

EMBEDDINGS = ("X_align", "X_pretrain", "X_stagekit")  # the most refined one a file holds is evaluated


@dataclass
class EvalInput:
    latent: np.ndarray
    labels: np.ndarray
    label_key: str
    lineage: list
    obs: Any  # the cells' obs (pandas DataFrame)
    provenance: dict
    embedding: str = "X_stagekit"
    obsm: dict = field(default_factory=dict)  # every embedding the file holds
    adata: Any = None  # the AnnData the cells come from (X, layers)

    def column(self, name: str) -> np.ndarray | None:
        return self.obs[name].astype(str).to_numpy() if name in self.obs else None


def _read_cells(adata, where: str, label_key: str | None) -> EvalInput:
    embedding = next((k for k in EMBEDDINGS if k in adata.obsm), None)
    if embedding is None:
        raise UserError(f"{where} has no obsm['X_stagekit'|'X_pretrain'|'X_align']; evaluate a bundle or a "
                        "`stagekit extract` output")
    provenance = dict(adata.uns.get("stagekit", {}))
    label_key = label_key or provenance.get("label_key", "")
    if not label_key or label_key not in adata.obs:
        raise UserError(f"{where}: obs column '{label_key}' not found; name the labels with --label-key")
    lineage = [{"path": provenance["bundle"], "stage": provenance["stage"]}] if "bundle" in provenance else []
    lineage += json.loads(provenance.get("lineage", "[]"))
    labels = adata.obs[label_key].astype(str).to_numpy()
    return EvalInput(np.asarray(adata.obsm[embedding]), labels, label_key, lineage, adata.obs, provenance, embedding,
                     {k: np.asarray(v) for k, v in adata.obsm.items()}, adata)


def cells_of(request: ReportRequest, cells: Callable) -> EvalInput:
    """The cells `extract` wrote, or the bundle's cells computed by the pipeline's `cells`."""
    label_key = request.options.get("label_key")
    if request.cells is not None:
        return _read_cells(request.cells, str(request.source), label_key)
    bundle = request.bundle
    adata, extra = cells(CellsRequest(bundle, [request.data] if request.data else [], log=lambda m: None))
    adata.uns["stagekit"] = {k: extra[k] for k in ("label_key", "positive_class", "layer", "counts", "classes")
                             if k in extra}
    found = _read_cells(adata, str(request.source), label_key)
    found.lineage = [{"path": str(request.source), "stage": bundle.stage, "history": bundle.history},
                     *bundle.lineage]
    return found


Part = Callable[[EvalInput, Report, Path, int], None]


def cell_report(request: ReportRequest, cells: Callable, parts: list[Part]) -> Report:
    """The report of per-cell outputs: the parts' scores, a UMAP of the embedding and the loss curves."""
    found = cells_of(request, cells)
    output_dir = request.output_dir
    report = Report({"source": str(request.source), "label_key": found.label_key, "n_cells": int(len(found.labels)),
                     "plots": []})
    colourings = {f"label ({found.label_key})": found.labels}
    for part in parts:
        part(found, report, output_dir, request.seed)
    clusters = found.column("stagekit_cluster")
    if clusters is not None:
        colourings["cluster"] = clusters
    species = found.column("species")
    if species is not None and len(set(species)) > 1:
        colourings["species"] = species
    if request.umap:
        coords = plots.umap_layout(found.latent, request.seed)
        report.metrics["plots"].append(str(plots.plot_embedding(coords, colourings, output_dir / "umap.png")))
    history_plot(found.lineage, report, output_dir)
    return report


def history_plot(lineage: list[dict], report: Report, output_dir: Path) -> None:
    """The loss curves of every phase in the lineage whose history can still be read."""
    def history_of(entry: dict) -> dict:
        return entry["history"] if "history" in entry else read_bundle(entry["path"], weights=False,
                                                                       results=False).history

    histories = [(e["stage"], history_of(e)) for e in lineage if "history" in e or Path(e["path"]).is_file()]
    histories = [(stage, h) for stage, h in histories if h.get("train_loss")]
    if histories:
        report.metrics["plots"].append(str(plots.plot_history(histories[::-1], output_dir / "loss_curves.png")))


def _metric_rows(scores: dict) -> list[list]:
    return [[name, value] for name, value in scores.items() if isinstance(value, int | float)]


def clustering_part(found: EvalInput, report: Report, output_dir: Path, seed: int) -> None:
    """Clusters (obs['stagekit_cluster']) against the labels: ACC/ARI/NMI, silhouette, sizes, a contingency plot."""
    clusters = found.column("stagekit_cluster")
    if clusters is None:
        return
    labels = found.labels
    names, counts = np.unique(clusters, return_counts=True)
    order = sorted(range(len(names)), key=lambda i: (len(names[i]), names[i]))  # "2" before "10"
    sizes = {str(names[i]): int(counts[i]) for i in order}
    scores = label_agreement(labels, clusters)
    if len(sizes) > 1:
        scores["silhouette"] = internal_scores(found.latent, clusters, seed=seed)["silhouette"]
    report.metrics["clustering"] = {"k": len(sizes)} | scores
    report.metrics["cluster_sizes"] = sizes
    table, label_values, cluster_values = contingency(labels, clusters)
    report.metrics["plots"].append(str(plots.plot_contingency(table, list(label_values), list(cluster_values),
                                                              output_dir / "contingency.png")))
    rows = _metric_rows(report.metrics["clustering"])
    rows.append(["cluster sizes", " ".join(f"{k}:{v}" for k, v in sizes.items())])
    report.tables.append(Table(f"clustering vs obs['{found.label_key}'] ({len(labels)} cells)", ["metric", "value"],
                               rows))


def classification_scores(found: EvalInput, keep: np.ndarray, scored_on: str) -> dict:
    """A classifier's predictions against the labels on the cells `keep`. Binary tasks compare with
    label == positive class."""
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

    positive = str(found.provenance.get("positive_class", ""))
    truth, predicted = found.labels[keep], found.column("stagekit_prediction")[keep]
    report = {"cells": int(keep.sum()), "scored_on": scored_on} | calibration_scores(found, keep)
    if positive:
        y, hit = truth == positive, predicted == positive
        report |= {"f1": float(f1_score(y, hit)), "precision": float(precision_score(y, hit, zero_division=0)),
                   "recall": float(recall_score(y, hit, zero_division=0)),
                   "positive_share_true": float(y.mean()), "positive_share_predicted": float(hit.mean())}
        if 0 < y.sum() < len(y):
            report["auroc"] = float(roc_auc_score(y, found.obs["stagekit_probability"].to_numpy()[keep]))
        return report
    classes = sorted(set(truth) | set(predicted))
    per_class = f1_score(truth, predicted, labels=classes, average=None, zero_division=0)
    return report | {"accuracy": float(accuracy_score(truth, predicted)),
                     "macro_f1": float(f1_score(truth, predicted, average="macro", zero_division=0)),
                     "f1_per_class": {name: float(v) for name, v in zip(classes, per_class, strict=True)}}


def calibration_scores(found: EvalInput, keep: np.ndarray) -> dict:
    """Expected calibration error of obs['stagekit_class_probabilities'] (columns in uns['stagekit']['classes']
    order) on the cells `keep` whose label is one of the classes; binary tasks also the mean probability of the
    positive class beside its true share."""
    from stagekit.metrics.calibration import expected_calibration_error

    classes = [str(c) for c in found.provenance.get("classes", [])]
    probability = found.obsm.get("stagekit_class_probabilities")
    if probability is None or probability.shape[1] != len(classes) or not keep.any():
        return {}
    positive = str(found.provenance.get("positive_class", ""))
    truth = found.labels[keep]
    if positive:
        target = (truth == positive).astype(np.int64)
    else:
        code = {name: i for i, name in enumerate(classes)}
        known = np.array([t in code for t in truth], dtype=bool)
        target = np.array([code[t] for t in truth[known]], dtype=np.int64)
        keep = np.flatnonzero(keep)[known]
    scores = {"expected_calibration_error": expected_calibration_error(probability[keep], target)}
    if positive:
        scores["mean_probability_positive"] = float(probability[keep, 1].mean())
    return scores


def classification_part(found: EvalInput, report: Report, output_dir: Path, seed: int) -> None:
    """Predicted classes (obs['stagekit_prediction']) against the labels, on the cells whose labels training
    never saw (obs['stagekit_split'] == 'unlabelled'), or every labelled cell when the file does not say."""
    if found.column("stagekit_prediction") is None:
        raise UserError(f"{found.provenance.get('bundle', 'the cells')} hold no obs['stagekit_prediction']; "
                        "extract them again")
    labels, split = found.labels, found.column("stagekit_split")
    keep = labels != "nan"
    scored_on = "every labelled cell"
    if split is not None:
        keep, scored_on = keep & (split == "unlabelled"), "cells whose labels training never saw"
    scores = classification_scores(found, keep, scored_on)
    if split is not None:  # the cells that chose the kept epoch, apart
        chose = (labels != "nan") & (split == "validation")
        scores["validation_cells"] = classification_scores(found, chose,
                                                           "validation cells (they chose the kept epoch)")
    report.metrics["classification"] = scores
    table, label_values, predicted_values = contingency(labels[keep], found.column("stagekit_prediction")[keep])
    report.metrics["plots"].append(str(plots.plot_contingency(table, list(label_values), list(predicted_values),
                                                              output_dir / "confusion.png")))
    rows = [[n, v] for n, v in scores.items() if isinstance(v, float)]
    rows += [[f"F1 {name}", value] for name, value in scores.get("f1_per_class", {}).items()]
    report.tables.append(Table(f"classification vs obs['{found.label_key}'] ({scores['cells']} cells: "
                               f"{scored_on})", ["metric", "value"], rows))


def integration_scores(found: EvalInput, species: np.ndarray, seed: int = 0) -> dict:
    """Cross-species scores of the embedding (see stagekit.metrics.integration)."""
    from sklearn.cluster import KMeans

    z, labels = found.latent, found.labels
    clusters = KMeans(len(set(labels)), n_init=10, random_state=seed).fit_predict(z)
    return {"embedding": found.embedding,
            "label_transfer": label_transfer(z, species, labels),
            "knn_agreement": {"1": cross_species_knn_agreement(z, species, labels, 1),
                              "15": cross_species_knn_agreement(z, species, labels, 15)},
            "species_mixing": species_mixing(z, species, 15),
            "kmeans_vs_labels": label_agreement(labels, clusters),
            "silhouette_labels": internal_scores(z, labels, seed=seed)["silhouette"]}


def integration_part(found: EvalInput, report: Report, output_dir: Path, seed: int) -> None:
    """Label transfer, neighbour agreement and mixing across species (obs['species'], two or more)."""
    species = found.column("species")
    if species is None or len(set(species)) < 2:
        return
    scores = integration_scores(found, species, seed)
    report.metrics["label_transfer"] = transfer = scores.pop("label_transfer")
    report.metrics["integration"] = scores
    rows = []
    for pair, s in transfer.items():
        rows.append([f"label transfer {pair}", s["accuracy"], s["balanced_accuracy"]])
        if s["unmatched_labels"]:  # partly shared labels: the ceiling and the shared cells' scores
            rows.append(["  max possible (cells whose label the source has)", s["max_accuracy"], ""])
            if "shared_accuracy" in s:
                rows.append(["  on the shared labels' cells", s["shared_accuracy"], s["shared_balanced_accuracy"]])
            shown = ", ".join(s["unmatched_labels"][:6]) + (" ..." if len(s["unmatched_labels"]) > 6 else "")
            rows.append([f"  labels without a counterpart: {shown}", "", ""])
    rows += [[f"{k}-NN cross-species label agreement", v, ""] for k, v in scores["knn_agreement"].items()]
    rows.append(["species mixing (15 neighbours; 1 = mixed)", scores["species_mixing"], ""])
    rows.append(["k-means vs labels ARI / NMI", scores["kmeans_vs_labels"]["ari"], scores["kmeans_vs_labels"]["nmi"]])
    rows.append(["silhouette of labels", scores["silhouette_labels"], ""])
    report.tables.append(Table(f"cross-species integration ({scores['embedding']}, labels obs['{found.label_key}'])",
                               ["", "accuracy", "balanced accuracy"], rows))
