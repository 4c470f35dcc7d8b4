"""`stagekit evaluate`: metrics, a rich table and PNG plots for a bundle or an extracted .h5ad."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from stagekit.bundle import Bundle, atomic_output, read_bundle
from stagekit.errors import UserError
from stagekit.metrics import plots
from stagekit.metrics.clustering import contingency, internal_scores, label_agreement
from stagekit.metrics.integration import cross_species_knn_agreement, label_transfer, species_mixing
from stagekit.stages.registry import entry, resolve

if TYPE_CHECKING:
    import anndata

EMBEDDINGS = ("X_align", "X_pretrain", "X_stagekit")  # the most refined one a file holds is evaluated


@dataclass
class EvalInput:
    latent: np.ndarray
    labels: np.ndarray
    label_key: str
    lineage: list
    clusters: np.ndarray | None = None
    species: np.ndarray | None = None
    embedding: str = "X_stagekit"
    classification: dict | None = None  # predictions, probabilities, split, positive class of a classifier


def scored_cells(found: EvalInput) -> tuple[np.ndarray, str]:
    """Which cells a classifier is scored on: those with a label that training neither learned from nor chose its
    kept epoch by (the 'unlabelled' split), or every labelled cell when the file does not say which those are."""
    keep = found.labels != "nan"
    split = found.classification["split"]
    if split is None:
        return keep, "every labelled cell"
    return keep & (split == "unlabelled"), "cells whose labels training never saw"


def classification_report(found: EvalInput, keep: np.ndarray, scored_on: str) -> dict:
    """A classifier's predictions against the labels on the cells `keep`. Binary tasks compare with
    label == positive class."""
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

    c = found.classification
    truth, predicted = found.labels[keep], c["predictions"][keep]
    report = {"cells": int(keep.sum()), "scored_on": scored_on}
    if c["positive_class"]:
        y, hit = truth == c["positive_class"], predicted == c["positive_class"]
        report |= {"f1": float(f1_score(y, hit)), "precision": float(precision_score(y, hit, zero_division=0)),
                   "recall": float(recall_score(y, hit, zero_division=0)),
                   "positive_share_true": float(y.mean()), "positive_share_predicted": float(hit.mean())}
        if 0 < y.sum() < len(y):
            report["auroc"] = float(roc_auc_score(y, c["probability"][keep]))
        return report
    classes = sorted(set(truth) | set(predicted))
    per_class = f1_score(truth, predicted, labels=classes, average=None, zero_division=0)
    return report | {"accuracy": float(accuracy_score(truth, predicted)),
                     "macro_f1": float(f1_score(truth, predicted, average="macro", zero_division=0)),
                     "f1_per_class": {name: float(v) for name, v in zip(classes, per_class, strict=True)}}


def _from_anndata(adata, where: str, label_key: str | None) -> EvalInput:
    embedding = next((k for k in EMBEDDINGS if k in adata.obsm), None)
    if embedding is None:
        raise UserError(f"{where} has no obsm['X_stagekit'|'X_pretrain'|'X_align']; evaluate a bundle or a "
                        "`stagekit extract` output")
    provenance = adata.uns.get("stagekit", {})
    label_key = label_key or provenance.get("label_key", "")
    if not label_key or label_key not in adata.obs:
        raise UserError(f"{where}: obs column '{label_key}' not found; name the labels with --label-key")
    lineage = [{"path": provenance["bundle"], "stage": provenance["stage"]}] if "bundle" in provenance else []
    lineage += json.loads(provenance.get("lineage", "[]"))
    species = adata.obs["species"].astype(str).to_numpy() if "species" in adata.obs else None
    if species is not None and len(set(species)) < 2:
        species = None
    clusters = adata.obs["stagekit_cluster"].astype(str).to_numpy() if "stagekit_cluster" in adata.obs else None
    classification = None
    if "stagekit_prediction" in adata.obs:
        classification = {"predictions": adata.obs["stagekit_prediction"].astype(str).to_numpy(),
                          "probability": adata.obs["stagekit_probability"].to_numpy(),
                          "split": adata.obs["stagekit_split"].astype(str).to_numpy()
                          if "stagekit_split" in adata.obs else None,
                          "positive_class": str(provenance.get("positive_class", ""))}
    labels = adata.obs[label_key].astype(str).to_numpy()
    return EvalInput(np.asarray(adata.obsm[embedding]), labels, label_key, lineage, clusters, species, embedding,
                     classification)


def _read_h5ad(path: Path) -> anndata.AnnData:
    import anndata

    try:
        return anndata.read_h5ad(path)
    except Exception as exc:  # any unreadable file means the same to a user
        raise UserError(f"{path} is not a readable .h5ad file ({type(exc).__name__})") from None


def _from_bundle(bundle: Bundle, path: Path, data: Path | None, label_key: str | None) -> EvalInput:
    from stagekit.stages.registry import cells_of

    adata, extra = cells_of(bundle, [data] if data else [], [], log=lambda m: None)
    adata.uns["stagekit"] = {k: extra[k] for k in ("label_key", "positive_class") if k in extra}
    found = _from_anndata(adata, str(path), label_key)
    found.lineage = [{"path": str(path), "stage": bundle.stage, "history": bundle.history}, *bundle.lineage]
    return found


def integration_report(found: EvalInput, seed: int = 0) -> dict:
    """Cross-species scores of the embedding (see stagekit.metrics.integration)."""
    from sklearn.cluster import KMeans

    z, species, labels = found.latent, found.species, found.labels
    clusters = KMeans(len(set(labels)), n_init=10, random_state=seed).fit_predict(z)
    return {"embedding": found.embedding,
            "label_transfer": label_transfer(z, species, labels),
            "knn_agreement": {"1": cross_species_knn_agreement(z, species, labels, 1),
                              "15": cross_species_knn_agreement(z, species, labels, 15)},
            "species_mixing": species_mixing(z, species, 15),
            "kmeans_vs_labels": label_agreement(labels, clusters),
            "silhouette_labels": internal_scores(z, labels, seed=seed)["silhouette"]}


def _perturbation_run(adata, source: Path, output_dir: Path, umap: bool, seed: int,
                      history: dict | None = None) -> dict:
    """A transition model's predictions against the observed held-out cells and the baselines."""
    from stagekit.stages.perturbation.report import perturbation_report, plot_report

    scores, groups = perturbation_report(adata, seed)
    output_dir.mkdir(parents=True, exist_ok=True)
    report = {"source": str(source), "perturbation": scores,
              "plots": plot_report(groups, scores, output_dir, umap, seed)}
    if history and history.get("train_loss"):
        report["plots"].append(str(plots.plot_history([("pretrain", history)], output_dir / "loss_curves.png")))
    with atomic_output(output_dir / "metrics.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2))
    return report


def _transition_cells(bundle: Bundle, data: Path | None, held_out_of: Path | None = None) -> anndata.AnnData:
    """A transition bundle's held-out groups (or `held_out_of`'s), predicted and observed (what `extract`
    writes)."""
    from stagekit.stages.registry import cells_of

    adata, extra = cells_of(bundle, [data] if data else [], [], log=_warnings_to_stderr, held_out_of=held_out_of)
    adata.uns["stagekit"] = extra
    return adata


def _warnings_to_stderr(message: str) -> None:
    if message.startswith("warning"):
        print(message, file=sys.stderr)


def run(source: Path, output_dir: Path, label_key: str | None = None, data: Path | None = None,
        umap: bool = True, seed: int = 0, held_out_of: Path | None = None, expansion_um: float = 5.0,
        markers: Path | None = None) -> dict:
    if not source.exists():
        raise UserError(f"{source} does not exist")
    if output_dir.exists() and not output_dir.is_dir():
        raise UserError(f"report folder {output_dir} is a file; give a folder path")
    adata, bundle = None, None
    if not source.is_dir():  # the source is read once; a perturbation model's predictions are scored apart
        adata, bundle = (_read_h5ad(source), None) if source.suffix == ".h5ad" else (None, read_bundle(source))
    scorer = entry(bundle.stage, bundle.model, str(source)).report if bundle is not None else ""
    if source.is_dir() or scorer:
        given = [flag for flag, value in (("--label-key", label_key), ("--held-out-of", held_out_of)) if value]
        if given:
            raise UserError(f"{given[0]} does not apply to a segmentation ({source}); drop it")
        if bundle is None:  # a segmentation folder written by `stagekit extract`
            from stagekit.stages.segmentation.report import from_folder

            return from_folder(source, output_dir, expansion_um, markers)
        return resolve(scorer)(bundle, data, output_dir, expansion_um, markers)
    if (adata is not None and "stagekit_source" in adata.obs) or (bundle is not None and bundle.model == "transition"):
        if label_key:
            raise UserError(f"--label-key does not apply to {source}: a perturbation model is scored against the "
                            "observed held-out cells; drop it")
        if bundle is not None:
            return _perturbation_run(_transition_cells(bundle, data, held_out_of), source, output_dir, umap, seed,
                                     bundle.history)
        if held_out_of is not None:
            raise UserError(f"--held-out-of needs the model: give its bundle, not the extracted {source}")
        return _perturbation_run(adata, source, output_dir, umap, seed)
    if held_out_of is not None:
        raise UserError(f"--held-out-of scores a perturbation model; {source} is not one")
    if adata is not None:
        found = _from_anndata(adata, str(source), label_key)
    else:
        found = _from_bundle(bundle, source, data, label_key)
    latent, clusters, labels, label_key, lineage = (found.latent, found.clusters, found.labels, found.label_key,
                                                    found.lineage)
    output_dir.mkdir(parents=True, exist_ok=True)
    report: dict = {"source": str(source), "label_key": label_key, "n_cells": int(len(labels)), "plots": []}
    if clusters is not None:
        names, counts = np.unique(clusters, return_counts=True)
        order = sorted(range(len(names)), key=lambda i: (len(names[i]), names[i]))  # "2" before "10"
        sizes = {str(names[i]): int(counts[i]) for i in order}
        scores = label_agreement(labels, clusters)
        if len(sizes) > 1:
            scores["silhouette"] = internal_scores(latent, clusters, seed=seed)["silhouette"]
        report["clustering"] = {"k": len(sizes)} | scores
        report["cluster_sizes"] = sizes
        table, label_values, cluster_values = contingency(labels, clusters)
        report["plots"].append(str(plots.plot_contingency(table, list(label_values), list(cluster_values),
                                                          output_dir / "contingency.png")))
    if found.classification is not None:
        keep, scored_on = scored_cells(found)
        report["classification"] = classification_report(found, keep, scored_on)
        if found.classification["split"] is not None:  # the cells that chose the kept epoch, apart
            chose = (labels != "nan") & (found.classification["split"] == "validation")
            report["classification"]["validation_cells"] = classification_report(
                found, chose, "validation cells (they chose the kept epoch)")
        table, label_values, predicted_values = contingency(labels[keep], found.classification["predictions"][keep])
        report["plots"].append(str(plots.plot_contingency(table, list(label_values), list(predicted_values),
                                                          output_dir / "confusion.png")))
    if found.species is not None:
        integration = integration_report(found, seed)
        report["label_transfer"] = integration.pop("label_transfer")
        report["integration"] = integration
    if umap:
        coords = plots.umap_layout(latent, seed)
        colourings = {f"label ({label_key})": labels} | ({"cluster": clusters} if clusters is not None else {})
        if found.species is not None:
            colourings["species"] = found.species
        report["plots"].append(str(plots.plot_embedding(coords, colourings, output_dir / "umap.png")))
    def history_of(entry: dict) -> dict:
        return entry["history"] if "history" in entry else read_bundle(entry["path"], weights=False,
                                                                       results=False).history

    histories = [(e["stage"], history_of(e)) for e in lineage if "history" in e or Path(e["path"]).is_file()]
    histories = [(stage, h) for stage, h in histories if h.get("train_loss")]
    if histories:
        report["plots"].append(str(plots.plot_history(histories[::-1], output_dir / "loss_curves.png")))
    with atomic_output(output_dir / "metrics.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2))
    return report
