"""`evaluate`'s comparison of a clustering with the simple baselines on the same cells and labels."""

from __future__ import annotations

from pathlib import Path

from stagekit.stages.cell_report import EvalInput
from stagekit.stages.clustering.baselines import baseline_scores, expression_pca
from stagekit.stages.spec import Report, Table


def baseline_part(found: EvalInput, report: Report, output_dir: Path, seed: int) -> None:
    """k-means on PCA-50 of the log-normalised counts at the model's k and scanpy's default Leiden, scored against
    the labels beside the model's clusters (after `clustering_part`, which scores the model)."""
    model = report.metrics.get("clustering")
    if model is None or found.adata is None:
        return
    layer = str(found.provenance.get("layer", ""))
    if layer and layer not in found.adata.layers:
        report.tables.append(Table("baselines", ["note"], [[f"skipped: the cells have no layer '{layer}'"]]))
        return
    matrix = found.adata.layers[layer] if layer else found.adata.X
    counts = found.provenance.get("counts")  # absent in files written before it was recorded: guessed
    pca = expression_pca(matrix, seed, None if counts is None else bool(counts))
    scores = baseline_scores(pca, found.labels, int(model["k"]), seed)
    report.metrics["clustering_baselines"] = scores
    rows = [["this model", model["k"], model["acc"], model["ari"], model["nmi"]]]
    rows += [[name, s["k"], s["acc"], s["ari"], s["nmi"]] for name, s in scores.items()]
    notes = [f"{name} agrees better with the labels than this model (ARI {s['ari']:.3f} vs {model['ari']:.3f})"
             for name, s in scores.items() if s["ari"] > model["ari"]]
    report.tables.append(Table(f"clustering vs obs['{found.label_key}']: this model and simple baselines "
                               "(on 50 principal components of the log-normalised counts)",
                               ["method", "k", "ACC", "ARI", "NMI"], rows, notes))
