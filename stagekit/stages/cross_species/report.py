"""`evaluate` of a cross-species model: label transfer, neighbour agreement and mixing (cell_report's integration
part), and scib-metrics' bio-conservation and batch-correction scores of every embedding the cells carry, the
unintegrated reference (a PCA of the genes the species share by symbol) among them."""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import numpy as np

from stagekit.stages.cell_report import EvalInput, Part
from stagekit.stages.spec import Report, Table

REFERENCE = "X_pca_shared_genes"
# scored in this order when present: the reference, then the embeddings of the lineage
EMBEDDINGS = {REFERENCE: "shared-gene PCA", "X_pretrain": "pretrain", "X_align": "align"}


def scib_available() -> bool:
    try:
        import scib_metrics  # noqa: F401
    except ImportError:
        return False
    return True


def scib_scores(found: EvalInput, embeddings: tuple[str, ...] = tuple(EMBEDDINGS)) -> dict[str, dict[str, float]]:
    """scib-metrics' Benchmarker (its default metrics) on each of `embeddings` the cells carry, species as the
    batch; the reference PCA is the pre-integration embedding of its PCR comparison. Unscaled scores: embedding ->
    metric -> value."""
    import anndata
    import pandas as pd
    from scib_metrics.benchmark import Benchmarker

    keys = [k for k in embeddings if k in found.obsm]
    obs = pd.DataFrame({"species": found.column("species"), "label": found.labels})
    adata = anndata.AnnData(np.zeros((len(obs), 1), np.float32), obs=obs.set_index(pd.RangeIndex(len(obs)).astype(str)),
                            obsm={k: found.obsm[k] for k in keys})
    logging.getLogger("scib_metrics").setLevel(logging.ERROR)
    with contextlib.redirect_stderr(io.StringIO()):  # its progress output would bury the report
        bench = Benchmarker(adata, batch_key="species", label_key="label", embedding_obsm_keys=keys,
                            pre_integrated_embedding_obsm_key=REFERENCE if REFERENCE in keys else None,
                            n_jobs=1, progress_bar=False)
        bench.benchmark()
        table = bench.get_results(min_max_scale=False)
    table = table.drop(index="Metric Type", errors="ignore")
    return {key: {metric: float(value) for metric, value in table.loc[key].items()} for key in keys}


def scib_part(skip: bool) -> Part:
    def part(found: EvalInput, report: Report, output_dir: Path, seed: int) -> None:
        species = found.column("species")
        if skip or species is None or len(set(species)) < 2:
            return
        if not scib_available():
            note = "scib-metrics is not installed (pip install 'stagekit[evaluators]'); its scores were skipped"
            report.metrics["scib"] = {"skipped": note}
            report.tables.append(Table("scib-metrics", ["metric"], [], [note]))
            return
        scores = scib_scores(found)
        report.metrics["scib"] = {"scores": scores, "batch": "species", "label_key": found.label_key,
                                  "reference": f"obsm['{REFERENCE}']: PCA of log-normalised counts of the genes "
                                               "whose symbols match across species (ignoring case)"}
        shown = list(scores)
        metrics = list(scores[shown[0]])
        report.tables.append(Table(
            "scib-metrics (unscaled; species as batch)", ["metric", *(EMBEDDINGS[k] for k in shown)],
            [[m, *(f"{scores[k][m]:.3f}" for k in shown)] for m in metrics],
            ["shared-gene PCA: the unintegrated reference"] if REFERENCE in scores else []))
    return part
