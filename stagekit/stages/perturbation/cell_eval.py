"""Predictions in cell-eval's layout, and cell-eval's metrics for the model and the baselines side by side.

cell-eval (the Virtual Cell Challenge's evaluator) compares a predicted and a real AnnData with the same genes, a
perturbation column, and the control cells in both. The held-out groups of a screen become one such pair per
context (cell type or line): real = the observed cells of every held-out perturbation there and the context's
control cells; predicted = the predictions of those perturbations (the model's, or a baseline's) and the same
control cells. Values are the model's gene space, log1p of counts per 10,000 (recorded in `uns`), never negative.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from stagekit.data.normalise import TARGET_SUM

if TYPE_CHECKING:
    import anndata

NORMALISATION = f"log1p(counts / total counts * {TARGET_SUM:g}), totals over every gene of the input file"
# cell-eval metrics shown in the tables; every metric it computes is in metrics.json
HEADLINE = ("overlap_at_50", "precision_at_50", "de_direction_match", "de_spearman_lfc_sig", "pearson_delta", "mae")
# undefined with one perturbation in a context (cell-eval raises inside them), and the discrimination score is
# 1 by construction there: left out of such contexts
NEEDS_SEVERAL = ("pearson_edistance", "clustering_agreement", "discrimination_score_l1", "discrimination_score_l2",
                 "discrimination_score_cosine")


def folder_name(context: str) -> str:
    """A context as a folder name (cell types hold spaces, '+' and '/')."""
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", context).strip("_") or "context"


def _anndata(parts: list[tuple[np.ndarray, str]], genes: list[str], pert_key: str, kind: str,
             context: tuple[str, str] = ("", "")) -> anndata.AnnData:
    """`context`: (column, value) written to every cell, for readers of several contexts' files."""
    import anndata

    x = np.maximum(np.concatenate([values for values, _ in parts]), 0).astype(np.float32)
    labels = np.concatenate([[label] * len(values) for values, label in parts])
    obs = pd.DataFrame({pert_key: pd.Categorical(labels)}, index=[f"{kind}-{i}" for i in range(len(x))])
    if context[0] and context[0] != pert_key:
        obs[context[0]] = pd.Categorical([context[1]] * len(x))
    adata = anndata.AnnData(x, obs=obs, var=pd.DataFrame(index=genes))
    adata.uns["normalisation"] = NORMALISATION
    return adata


def pairs(groups: list[dict], method: str, genes: list[str], pert_key: str, control: str, context_key: str = ""
          ) -> dict[str, tuple[anndata.AnnData, anndata.AnnData]]:
    """context -> (predicted, real) for `method` ("model" or a baseline) over the held-out groups it has."""
    out = {}
    for context in dict.fromkeys(g["context"] for g in groups):
        mine = [g for g in groups if g["context"] == context and method in g["candidates"]]
        if not mine:
            continue
        controls = (mine[0]["controls"]["genes"], control)
        predicted = [(g["candidates"][method]["genes"], g["perturbation"]) for g in mine]
        real = [(g["observed"]["genes"], g["perturbation"]) for g in mine]
        where = (context_key, context)
        out[context] = (_anndata([*predicted, controls], genes, pert_key, "predicted", where),
                        _anndata([*real, controls], genes, pert_key, "real", where))
    return out


def write_pairs(groups: list[dict], genes: list[str], pert_key: str, control: str, context_key: str, folder: Path
                ) -> list[Path]:
    """The model's pairs as FOLDER/<context>/predicted.h5ad and real.h5ad."""
    from stagekit.data.anndata_io import write_h5ad

    written = []
    for context, (predicted, real) in pairs(groups, "model", genes, pert_key, control, context_key).items():
        where = folder / folder_name(context)
        where.mkdir(parents=True, exist_ok=True)
        for name, adata in (("predicted.h5ad", predicted), ("real.h5ad", real)):
            write_h5ad(adata, where / name)
            written.append(where / name)
    return written


def available() -> bool:
    try:
        import cell_eval  # noqa: F401
    except ImportError:
        return False
    return True


def scores(groups: list[dict], methods: list[str], genes: list[str], pert_key: str, control: str,
           output_dir: Path) -> list[dict]:
    """cell-eval's metrics per held-out group and method: [{perturbation, context, methods: {method: {metric:
    value}}}]. cell-eval's own tables go to OUTPUT_DIR/cell_eval/<context>/<method>/."""
    from cell_eval import MetricsEvaluator

    logging.getLogger("cell_eval").setLevel(logging.ERROR)
    found: dict[tuple[str, str], dict[str, dict[str, float]]] = {}
    # cell-eval's and pdex's progress bars (tqdm, on stderr) would bury the report; its errors still raise
    real_de: dict[tuple[str, frozenset], str] = {}  # the observed cells' DE, computed once per context and groups
    with contextlib.redirect_stderr(io.StringIO()):
        for method in methods:
            for context, (predicted, real) in pairs(groups, method, genes, pert_key, control).items():
                outdir = output_dir / "cell_eval" / folder_name(context) / method
                perts = frozenset(real.obs[pert_key].astype(str))
                several = len(perts) > 2  # besides the control
                evaluator = MetricsEvaluator(predicted, real, de_real=real_de.get((context, perts)),
                                             control_pert=control, pert_col=pert_key, outdir=str(outdir),
                                             num_threads=1)
                real_de.setdefault((context, perts), str(outdir / "real_de.csv"))
                results, _ = evaluator.compute(profile="full", skip_metrics=None if several else list(NEEDS_SEVERAL))
                for row in results.to_dicts():
                    values = {k: float(v) for k, v in row.items() if k != "perturbation" and v is not None}
                    found.setdefault((str(row["perturbation"]), context), {})[method] = values
    return [{"perturbation": p, "context": c, "methods": m} for (p, c), m in found.items()]


def means(rows: list[dict], methods: list[str]) -> dict[str, dict[str, Any]]:
    """Per method, each metric's mean over the groups it was computed for."""
    out = {}
    for method in methods:
        scored = [r["methods"][method] for r in rows if method in r["methods"]]
        if scored:
            metrics = sorted({k for s in scored for k in s})
            values = {k: np.array([s.get(k, np.nan) for s in scored]) for k in metrics}
            out[method] = {k: float(v[np.isfinite(v)].mean()) if np.isfinite(v).any() else float("nan")
                           for k, v in values.items()}
            out[method]["groups"] = len(scored)
    return out
