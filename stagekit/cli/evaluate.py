"""`stagekit evaluate BUNDLE_OR_H5AD --label-key KEY -o report/`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from stagekit.cli import options as opt
from stagekit.errors import UserError


def evaluate(
    source: Annotated[Path, typer.Argument(help="a bundle, or an .h5ad written by `stagekit extract`")],
    data: Annotated[Path | None, typer.Argument(help=".h5ad for a bundle; default: its training data")] = None,
    label_key: Annotated[str | None, typer.Option(help="obs column of the true labels (not for perturbation "
                                                         "models)")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="report folder")] = None,
    umap: Annotated[bool, typer.Option("--umap/--no-umap", help="draw a UMAP of the latent")] = True,
    seed: Annotated[int, typer.Option(help="seed of the silhouette subsample and UMAP")] = 0,
    json_: Annotated[bool, typer.Option("--json", help="print metrics.json on stdout")] = False,
    held_out_of: Annotated[Path | None, typer.Option(
        "--held-out-of", help="transition: score the model on the held-out cells of this ancestor bundle (e.g. "
                              "the pretraining task after fine-tuning: forgetting)")] = None,
    expansion_um: Annotated[float, typer.Option(
        "--expansion-um", help="segment: the nucleus-expansion baseline's distance (micron)")] = 5.0,
    markers: Annotated[Path | None, typer.Option(
        "--markers", help="segment: CSV/TSV of marker genes (columns gene, group) for MECR; default: the top genes "
                          "of k-means groups of the nuclei's own transcripts")] = None,
    quiet: opt.Quiet = False,
) -> None:
    """Score a bundle against labels: clustering ACC/ARI/NMI, silhouette, cluster sizes; across species, label
    transfer, neighbour agreement and species mixing; perturbation models against baselines; plots."""
    if output is None:
        raise UserError("name the report folder with -o/--output DIR")
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from stagekit.stages import evaluate as stage

    report = stage.run(source, output, label_key, data, umap, seed, held_out_of, expansion_um, markers)
    console = Console(stderr=True, quiet=quiet)  # --quiet: no tables; stdout still names metrics.json
    if "clustering" in report:
        table = Table(title=f"clustering vs obs['{report['label_key']}'] ({report['n_cells']} cells)")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for name, value in report["clustering"].items():
            table.add_row(name, f"{value:.4f}" if isinstance(value, float) else str(value))
        table.add_row("cluster sizes", " ".join(f"{k}:{v}" for k, v in report["cluster_sizes"].items()))
        console.print(table)
    if "classification" in report:
        scores = report["classification"]
        table = Table(title=f"classification vs obs['{report['label_key']}'] ({scores['cells']} cells: "
                            f"{scores['scored_on']})")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for name, value in scores.items():
            if isinstance(value, float):
                table.add_row(name, f"{value:.4f}")
        for name, value in scores.get("f1_per_class", {}).items():
            table.add_row(f"F1 {name}", f"{value:.4f}")
        console.print(table)
    if "label_transfer" in report:
        table = Table(title=f"cross-species integration ({report['integration']['embedding']}, "
                            f"labels obs['{report['label_key']}'])")
        for column in ("", "accuracy", "balanced accuracy"):
            table.add_column(column, justify="right" if column else "left")
        for pair, scores in report["label_transfer"].items():
            table.add_row(f"label transfer {pair}", f"{scores['accuracy']:.4f}", f"{scores['balanced_accuracy']:.4f}")
            if scores["unmatched_labels"]:  # partly shared labels: the ceiling and the shared cells' scores
                table.add_row("  max possible (cells whose label the source has)", f"{scores['max_accuracy']:.4f}",
                              "")
                if "shared_accuracy" in scores:
                    table.add_row("  on the shared labels' cells", f"{scores['shared_accuracy']:.4f}",
                                  f"{scores['shared_balanced_accuracy']:.4f}")
                shown = ", ".join(scores["unmatched_labels"][:6]) + (" ..." if len(scores["unmatched_labels"]) > 6
                                                                      else "")
                table.add_row(f"  labels without a counterpart: {escape(shown)}", "", "")
        scores = report["integration"]
        for k, value in scores["knn_agreement"].items():
            table.add_row(f"{k}-NN cross-species label agreement", f"{value:.4f}", "")
        table.add_row("species mixing (15 neighbours; 1 = mixed)", f"{scores['species_mixing']:.4f}", "")
        table.add_row("k-means vs labels ARI / NMI", f"{scores['kmeans_vs_labels']['ari']:.4f}",
                      f"{scores['kmeans_vs_labels']['nmi']:.4f}")
        table.add_row("silhouette of labels", f"{scores['silhouette_labels']:.4f}", "")
        console.print(table)
    if "perturbation" in report:
        _perturbation_tables(console, report["perturbation"])
    if "segmentation" in report:
        _segmentation_table(console, report)
    for plot in report["plots"]:
        console.print(f"wrote {plot}", highlight=False)
    print(json.dumps(report) if json_ else output / "metrics.json")


def _perturbation_tables(console, scores: dict) -> None:
    from rich.table import Table

    from stagekit.stages.perturbation.report import HEADLINE

    n, measurable = len(scores["groups"]), sum(r["measurable"] for r in scores["groups"])
    for key, title in (("mean", f"held-out groups: mean over {n}"),
                       ("mean_measurable", f"groups with a measurable effect: mean over {measurable}")):
        if not scores[key] or (key == "mean_measurable" and measurable == n):  # the same table twice
            continue
        table = Table(title=f"{title} (energy, mmd: lower is better; pearson, sign: higher; spread ratio: 1)")
        methods = list(scores[key])
        table.add_column("metric")
        for method in methods:
            table.add_column(f"{method.replace('_', ' ')} ({scores[key][method]['groups']})", justify="right")
        for metric in HEADLINE:
            table.add_row(metric.replace("_", " "), *(f"{scores[key][m][metric]:.3f}" for m in methods))
        console.print(table)


def _segmentation_table(console, report: dict) -> None:
    from rich.table import Table

    methods = report["segmentation"]
    table = Table(title=f"segmentation of {report['transcripts']:,} transcripts (correct, assigned: higher is "
                        "better; MECR: lower)")
    table.add_column("metric")
    for name in methods:
        table.add_column(name.replace("_", " "), justify="right")
    for metric in next(iter(methods.values())):
        table.add_row(metric.replace("_", " "), *(f"{m[metric]:.4f}" if isinstance(m[metric], float) else str(m[metric])
                                                   for m in methods.values()))
    for name, value in report["links"].items():
        table.add_row(f"held-out links: {name}", f"{value:.4f}" if isinstance(value, float) else str(value),
                      *[""] * (len(methods) - 1))
    console.print(table)
