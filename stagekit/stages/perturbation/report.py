"""`stagekit evaluate` of a transition bundle or its extract: every held-out (perturbation, context) group scored
for the model and, side by side, for baselines built from the same control cells:

- control_mean: no change (the control cells the model predicted from, as they are);
- training_shift: those controls moved by the mean shift of every training perturbation;
- other_contexts: those controls moved by the same perturbation's mean shift in the other contexts (where it has
  training cells there: the zero-shot baseline of scGen-style tasks);
- own_shift: those controls moved by the group's own training cells' mean shift (where it has training cells: the
  few-shot baseline, what a few cells of the group say on average);
- reference: a resample of the group's own training cells, where it has some (the best a model of seen
  perturbations can do; not a baseline to beat).

Baselines start from the very control cells the model's prediction started from, so each baseline set has as many
cells as the model's (set distances of finite samples depend on set sizes). Changes are measured from the mean of
all the context's controls.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from stagekit.errors import UserError
from stagekit.metrics.perturbation import (
    LOWER_IS_BETTER,
    SetDistances,
    effect_is_measurable,
    median_distance,
    set_scores,
)
from stagekit.stages.perturbation import space as expression_space
from stagekit.stages.spec import CellsRequest, Report, ReportRequest, Table

if TYPE_CHECKING:
    import anndata

BASELINES = ("control_mean", "training_shift", "other_contexts", "own_shift")
# evaluate --backed: observed cells x genes of the groups scored together. About 20 dense gene rows live per
# observed cell while a batch is scored (predicted, basal, reference, the baselines' shifted copies) besides the
# context's controls: 2,000 cells at 2,000 genes is 0.3 GB (30,000 cells peaked at 6.2 GB on a 1,000,000-cell
# screen); a wider gene space scores fewer cells at a time
BATCH_VALUES = 4_000_000
HEADLINE = ("energy_embedding", "energy_genes", "mmd_genes", "pearson_delta", "pearson_delta_top50", "sign_top50",
            "spread_ratio")


def _dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if hasattr(x, "toarray") else x, np.float32)


def _held_out_sets(adata: anndata.AnnData, pert_key: str, context_key: str) -> list[dict]:
    """Per held-out group: its predicted, observed, control, basal (the controls each prediction started from)
    and reference cells, in both spaces."""
    source = adata.obs["stagekit_source"].astype(str).to_numpy()
    row = adata.obs["stagekit_row"].to_numpy()
    pert = adata.obs[pert_key].astype(str).to_numpy()
    context = adata.obs[context_key].astype(str).to_numpy()
    genes, embedding = _dense(adata.X), np.asarray(adata.obsm["X_pert_embedding"], np.float32)

    def cells(mask: np.ndarray) -> dict[str, np.ndarray]:
        return {"genes": genes[mask], "embedding": embedding[mask]}

    found, context_controls = [], {}
    for p, c in sorted(set(zip(pert[source == "predicted"], context[source == "predicted"], strict=True))):
        in_group = (pert == p) & (context == c)
        observed = in_group & (source == "observed")
        if not observed.any():
            continue
        predicted = in_group & (source == "predicted")
        if c not in context_controls:  # one copy of a context's controls, shared by its groups
            controls = np.flatnonzero((context == c) & (source == "control"))
            position = {r: i for i, r in zip(controls, row[controls].tolist(), strict=True)}  # names may repeat
            shared = cells(controls)
            context_controls[c] = (shared | {"genes_mean": shared["genes"].mean(0, keepdims=True)}, position)
        controls, position = context_controls[c]
        basal = np.array([position[r] for r in row[predicted].tolist()])
        entry = {"perturbation": p, "context": c, "predicted": cells(predicted), "observed": cells(observed),
                 "controls": controls, "basal": cells(basal)}
        if (in_group & (source == "reference")).any():
            entry["reference"] = cells(in_group & (source == "reference"))
        found.append(entry)
    return found


def _shifted(controls: dict[str, np.ndarray], genes: np.ndarray, embedding: np.ndarray) -> dict[str, np.ndarray]:
    """Controls moved by a mean shift; in gene space no lower than 0 (log-normalised expression), as the model's
    predictions."""
    return {"genes": np.maximum(controls["genes"] + genes, expression_space.EXPRESSION_FLOOR),
            "embedding": controls["embedding"] + embedding}


def _means(rows: list[dict], method: str) -> dict[str, float]:
    scored = [r["methods"][method] for r in rows if method in r["methods"]]
    if not scored:
        return {}
    return {k: float(np.mean([s[k] for s in scored])) for k in scored[0]} | {"groups": len(scored)}


def _versus(rows: list[dict]) -> dict:
    """The model against each baseline on the groups where that baseline exists: means and groups won."""
    out = {}
    for baseline in BASELINES:
        both = [r["methods"] for r in rows if baseline in r["methods"]]
        if not both:
            continue
        entry = {"groups": len(both)}
        for metric in ("energy_embedding", "energy_genes", "mmd_genes", "pearson_delta_top50"):
            if metric not in both[0]["model"]:  # no gene space
                continue
            model = np.array([m["model"][metric] for m in both])
            other = np.array([m[baseline][metric] for m in both])
            won = model < other if metric in LOWER_IS_BETTER else model > other
            entry[metric] = {"model": float(model.mean()), "baseline": float(other.mean()),
                             "groups_won": int(won.sum())}
        out[baseline] = entry
    return out


def score_groups(adata: anndata.AnnData, seed: int = 0, index_of: dict[tuple[str, str], int] | None = None
                 ) -> tuple[list[dict], list[dict]]:
    """Scores of every held-out group of `adata`, and the groups' sets (with the candidates scored). A group's
    permutation test is seeded by its place among all held-out groups (`index_of`, by (perturbation, context);
    default: its place in this file), so scoring a screen a context at a time gives the same figures."""
    provenance = adata.uns.get("stagekit", {})
    pert_key, context_key = provenance.get("pert_key", ""), provenance.get("context_key", "")
    if pert_key not in adata.obs or context_key not in adata.obs:
        raise UserError("the file does not name its perturbation and context columns (uns['stagekit']); evaluate "
                        "a transition bundle or its `stagekit extract` output")
    groups = _held_out_sets(adata, pert_key, context_key)
    if not groups:
        raise UserError("no observed cells to compare the predictions with (an `extract --pert` file holds "
                        "predictions only); evaluate the bundle, or the extract of its held-out cells")
    shifts = adata.uns.get("stagekit_shifts", {})
    names = list(np.asarray(shifts.get("groups", [])).astype(str))
    rows = []
    for i, g in enumerate(groups):
        distances = {space: SetDistances(g["observed"][space], median_distance(g["observed"][space], seed))
                     for space in ("genes", "embedding") if g["observed"][space].shape[1]}
        candidates = {"model": g["predicted"], "control_mean": g["basal"]}
        key = f"{g['perturbation']}\t{g['context']}"
        if key in names:
            j = names.index(key)
            candidates["training_shift"] = _shifted(g["basal"], shifts["training_mean_genes"],
                                                    shifts["training_mean_embedding"])
            other_g, other_e = shifts["other_contexts_genes"][j], shifts["other_contexts_embedding"][j]
            if np.isfinite(other_e).all():  # NaN where the perturbation has no training cells there
                candidates["other_contexts"] = _shifted(g["basal"], other_g, other_e)
            if "own_shift_embedding" in shifts and np.isfinite(shifts["own_shift_embedding"][j]).all():
                candidates["own_shift"] = _shifted(g["basal"], shifts["own_shift_genes"][j],
                                                   shifts["own_shift_embedding"][j])
        if "reference" in g:
            candidates["reference"] = g["reference"]
        g["candidates"] = candidates
        place = i if index_of is None else index_of[(g["perturbation"], g["context"])]
        measurable, distance, null = effect_is_measurable(g["observed"]["embedding"], g["controls"]["embedding"],
                                                          seed=seed + place)
        rows.append({"perturbation": g["perturbation"], "context": g["context"],
                     "n_observed": len(g["observed"]["genes"]), "n_predicted": len(g["predicted"]["genes"]),
                     "n_controls": len(g["controls"]["genes"]), "measurable": measurable,
                     "effect_energy": distance, "null_energy_max": null,
                     "methods": {m: set_scores(s, g["observed"], g["controls"], distances, seed)
                                 for m, s in candidates.items()}})
    return rows, groups


def summarise(rows: list[dict]) -> dict:
    """Every group's scores and their means, over all groups and over those with a measurable effect."""
    rows = sorted(rows, key=lambda r: (r["perturbation"], r["context"]))
    methods = ["model", *BASELINES, "reference"]
    measurable = [r for r in rows if r["measurable"]]
    return {"groups": rows, "methods": methods,
            "mean": {m: _means(rows, m) for m in methods if _means(rows, m)},
            "mean_measurable": {m: _means(measurable, m) for m in methods if _means(measurable, m)},
            "versus": _versus(rows), "versus_measurable": _versus(measurable),
            "measurable_rule": "observed vs control energy distance above its largest value over 20 random "
                               "splits of the pooled cells into sets of the same sizes (permutation test, p < 0.05)"}


def perturbation_report(adata: anndata.AnnData, seed: int = 0) -> tuple[dict, list[dict]]:
    """Scores of every held-out group and their means; also the groups' sets, for plots."""
    rows, groups = score_groups(adata, seed)
    return summarise(rows), groups


def _slim(group: dict) -> dict:
    """A scored group as the plots use it: gene sets reduced to their means, the embeddings of the observed and
    predicted cells kept (the UMAP) and no others (a batch's controls would stay alive through them)."""
    def mean(name: str, cells: dict) -> dict:
        genes = cells["genes_mean"] if "genes_mean" in cells else cells["genes"].mean(0, keepdims=True)
        return {"genes": genes} | ({"embedding": cells["embedding"]} if name in ("observed", "predicted") else {})

    return {k: mean(k, v) if isinstance(v, dict) and "genes" in v else v for k, v in group.items()
            if k != "candidates"}


def plot_report(groups: list[dict], report: dict, output_dir: Path, umap: bool, seed: int) -> list[str]:
    """Predicted vs observed change for the strongest groups; a UMAP of observed and predicted cells."""
    from stagekit.metrics import plots

    written = []
    by_effect = sorted(range(len(groups)), key=lambda i: -report["groups"][i]["effect_energy"])[:6]
    panels = []
    for i in by_effect:
        g = groups[i]
        base = g["controls"]["genes"].mean(0)
        panels.append((f"{g['perturbation']} / {g['context']}", g["observed"]["genes"].mean(0) - base,
                       g["predicted"]["genes"].mean(0) - base))
    if groups and groups[0]["observed"]["genes"].shape[1]:  # a model without a gene space predicts no genes
        written.append(str(plots.plot_delta_scatter(panels, output_dir / "delta_scatter.png")))
    if umap:
        rng = np.random.default_rng(seed)
        parts = [(g, kind) for g in groups for kind in ("observed", "predicted")]
        embedding = np.concatenate([g[kind]["embedding"] for g, kind in parts])
        source = np.concatenate([[kind] * len(g[kind]["embedding"]) for g, kind in parts])
        label = np.concatenate([[f"{g['perturbation']} / {g['context']}"] * len(g[kind]["embedding"])
                                for g, kind in parts])
        keep = np.sort(rng.choice(len(embedding), min(len(embedding), 5000), replace=False))
        coords = plots.umap_layout(embedding[keep], seed)
        colourings = {"observed or predicted": source[keep]}
        if len(set(label)) <= 20:
            colourings["group"] = label[keep]
        written.append(str(plots.plot_embedding(coords, colourings, output_dir / "umap.png")))
    return written


def tables(scores: dict) -> list[Table]:
    """The mean over held-out groups (and over those with a measurable effect, where they differ)."""
    n, measurable = len(scores["groups"]), sum(r["measurable"] for r in scores["groups"])
    out = []
    for key, title in (("mean", f"held-out groups: mean over {n}"),
                       ("mean_measurable", f"groups with a measurable effect: mean over {measurable}")):
        if not scores[key] or (key == "mean_measurable" and measurable == n):  # the same table twice
            continue
        methods = list(scores[key])
        columns = ["metric", *(f"{m.replace('_', ' ')} ({scores[key][m]['groups']})" for m in methods)]
        rows = [[metric.replace("_", " "), *(f"{scores[key][m][metric]:.3f}" for m in methods)] for metric in HEADLINE
                if metric in scores[key]["model"]]
        out.append(Table(f"{title} (energy, mmd: lower is better; pearson, sign: higher; spread ratio: 1)", columns,
                         rows))
    return out


def write_cell_eval_pairs(adata: anndata.AnnData, folder: Path) -> list[Path]:
    """extract: the model's held-out predictions and the observed cells as cell-eval's predicted / real files,
    FOLDER/<context>/predicted.h5ad and real.h5ad (none for predictions without observed cells, `--pert`)."""
    from stagekit.bundle import atomic_folder
    from stagekit.stages.perturbation import cell_eval

    provenance = adata.uns["stagekit"]
    if not adata.n_vars:  # a model without a gene space: cell-eval scores genes
        return []
    groups = _held_out_sets(adata, provenance["pert_key"], provenance["context_key"])
    if not groups:
        return []
    for g in groups:
        g["candidates"] = {"model": g["predicted"]}
    with atomic_folder(folder) as tmp:
        cell_eval.write_pairs(groups, list(adata.var_names), provenance["pert_key"], _control_label(adata),
                              provenance["context_key"], tmp)
    return [folder]


def _control_label(adata: anndata.AnnData) -> str:
    source = adata.obs["stagekit_source"].astype(str).to_numpy()
    return str(adata.obs[adata.uns["stagekit"]["pert_key"]][source == "control"].iloc[0])


def _cell_eval_rows(adata: anndata.AnnData, groups: list[dict], methods: list[str], output_dir: Path) -> list[dict]:
    """cell-eval's metrics of the model and the baselines on the same held-out cells."""
    from stagekit.stages.perturbation import cell_eval

    return cell_eval.scores(groups, methods, list(adata.var_names), adata.uns["stagekit"]["pert_key"],
                            _control_label(adata), output_dir)


def _cell_eval_summary(rows: list[dict], methods: list[str], output_dir: Path) -> tuple[dict, list[Table]]:
    from stagekit.stages.perturbation import cell_eval

    mean = cell_eval.means(rows, methods)
    result = {"groups": rows, "mean": mean, "normalisation": cell_eval.NORMALISATION,
              "left_out_with_one_perturbation": list(cell_eval.NEEDS_SEVERAL),
              "tables": str(output_dir / "cell_eval")}
    shown = [m for m in methods if m in mean]
    out = [Table(f"cell-eval: mean over {mean['model']['groups']} held-out group(s) (mae: lower is better; the "
                 "others higher)", ["metric", *(f"{m.replace('_', ' ')} ({mean[m]['groups']})" for m in shown)],
                 [[k.replace("_", " "), *(f"{mean[m].get(k, float('nan')):.3f}" for m in shown)]
                  for k in cell_eval.HEADLINE],
                 [f"cell-eval's own tables: {output_dir / 'cell_eval'}"])]
    if 1 < len(rows) <= 12:  # one table per group; a larger screen's groups are in metrics.json
        for row in rows:
            mine = [m for m in shown if m in row["methods"]]
            out.append(Table(f"cell-eval: {row['perturbation']} / {row['context']}",
                             ["metric", *(m.replace("_", " ") for m in mine)],
                             [[k.replace("_", " "), *(f"{row['methods'][m].get(k, float('nan')):.3f}" for m in mine)]
                              for k in cell_eval.HEADLINE]))
    return result, out


def _cell_eval_skipped(request: ReportRequest) -> dict | None:
    """Why cell-eval does not run (None: it runs)."""
    from stagekit.stages.perturbation import cell_eval

    if request.options.get("no_cell_eval"):
        return {"skipped": "--no-cell-eval"}
    if not _has_genes(request):
        return {"skipped": "the model predicts no genes (an obsm embedding without counts or a gene decoder); "
                           "cell-eval scores genes"}
    if not cell_eval.available():
        return {"skipped": "cell-eval is not installed (pip install 'stagekit[evaluators]'); its metrics were "
                           "skipped"}
    return None


def _has_genes(request: ReportRequest) -> bool:
    if request.bundle is None:
        return request.cells.n_vars > 0
    from stagekit.stages.perturbation.trained import stored_space

    return bool(stored_space(request.bundle).genes)


def _by_context(request: ReportRequest, methods: list[str], cell_eval_runs: bool
                ) -> tuple[list[dict], list[dict], list[dict]]:
    """evaluate --backed: the held-out groups scored a context at a time (the context's cells read once, never
    the whole screen): every group's scores, the groups as the plots use them, cell-eval's rows."""
    from stagekit.stages.perturbation.cells import _anndata, _design_keys, requested_held_out

    found = requested_held_out(CellsRequest(request.bundle, [request.data] if request.data else [],
                                            {"backed": True, "held_out_of": request.options.get("held_out_of")},
                                            _warnings))
    screen = found.tx.screen
    names = sorted((screen.perts[p.pert], screen.contexts[p.context]) for p in found.plans)
    index_of = {name: i for i, name in enumerate(names)}
    rows, groups, cell_eval_rows = [], [], []
    for c in found.contexts():
        for plans in _batches(found.in_context(c), len(found.tx.space.genes)):
            adata = _anndata(list(found.parts(c, plans)), found.tx)
            adata.uns["stagekit_shifts"] = found.shifts(plans)
            adata.uns["stagekit"] = _design_keys(found.tx)
            scored, sets = score_groups(adata, request.seed, index_of)
            rows += scored
            if cell_eval_runs:
                cell_eval_rows += _cell_eval_rows(adata, sets, methods, request.output_dir)
            groups += [_slim(g) for g in sets]
    order = sorted(range(len(rows)), key=lambda i: (rows[i]["perturbation"], rows[i]["context"]))
    return rows, [groups[i] for i in order], cell_eval_rows


def _batches(plans: list, n_genes: int) -> Iterator[list]:
    """Groups of a context in batches of about BATCH_VALUES / n_genes observed cells (with their predictions and
    references; see BATCH_VALUES)."""
    cells = max(1, BATCH_VALUES // max(n_genes, 1))
    batch, size = [], 0
    for plan in plans:
        batch.append(plan)
        size += len(plan.observed)
        if size >= cells:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _warnings(message: str) -> None:
    if message.startswith("warning"):
        print(message, file=sys.stderr)


def report(request: ReportRequest, cells: Callable) -> Report:
    """A transition model's predictions against the observed held-out cells and the baselines: from the bundle
    (its held-out groups, or those of the --held-out-of bundle; with --backed a context at a time) or from the
    cells `extract` wrote."""
    held_out_of, group = request.options.get("held_out_of"), request.options.get("group")
    methods = ["model", *BASELINES, "reference"]
    skipped = _cell_eval_skipped(request)
    if request.bundle is not None and request.options.get("backed") and group is None:
        rows, groups, cell_eval_rows = _by_context(request, methods, skipped is None)
        scores = summarise(rows)
    else:
        if request.bundle is None:
            if held_out_of is not None or group is not None or request.options.get("backed"):
                raise UserError(f"--held-out-of, --group and --backed need the model: give its bundle, not the "
                                f"extracted {request.source}")
            adata = request.cells
        else:
            data = [request.data] if request.data else []
            adata, extra = cells(CellsRequest(request.bundle, data, {"held_out_of": held_out_of, "group": group},
                                              _warnings))
            adata.uns["stagekit"] = extra
        scores, groups = perturbation_report(adata, request.seed)
        cell_eval_rows = _cell_eval_rows(adata, groups, methods, request.output_dir) if skipped is None else []
    metrics = {"source": str(request.source), "perturbation": scores,
               "plots": plot_report(groups, scores, request.output_dir, request.umap, request.seed)}
    if skipped is not None:
        metrics["cell_eval"] = skipped
        cell_eval_tables = [] if request.options.get("no_cell_eval") else [Table("cell-eval", ["metric"], [],
                                                                                 [skipped["skipped"]])]
    else:
        metrics["cell_eval"], cell_eval_tables = _cell_eval_summary(cell_eval_rows, methods, request.output_dir)
    history = request.bundle.history if request.bundle is not None else None
    if history and history.get("train_loss"):
        from stagekit.metrics import plots

        metrics["plots"].append(str(plots.plot_history([(request.bundle.stage, history)],
                                                       request.output_dir / "loss_curves.png")))
    return Report(metrics, tables(scores) + cell_eval_tables)
