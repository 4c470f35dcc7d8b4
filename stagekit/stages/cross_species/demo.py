"""`stagekit demo`: the cross-species chain on the embedded pancreas cells, pretrain -> align -> evaluate."""

from __future__ import annotations

from pathlib import Path

from stagekit.data.demo import DEMO_ORTHOLOGS, write_demo_inputs
from stagekit.stages import evaluate, extract
from stagekit.stages.registry import read_config, run_phase
from stagekit.stages.spec import PhaseRequest, Table


def run(out_dir: Path, quiet: bool = False, log=print) -> tuple[Path, list[Table]]:
    """The metrics file after align, and a table of the metrics after pretrain and after align."""
    out_dir.mkdir(parents=True, exist_ok=True)
    inputs = write_demo_inputs(DEMO_ORTHOLOGS, out_dir)
    log(f"demo inputs in {out_dir}: human.h5ad and mouse.h5ad (own gene vocabularies through Ensembl 105 "
        "orthologs); the gene embeddings are ortholog-derived STAND-INS for ESM protein embeddings")
    demo = "stagekit demo"
    pretrain_config = read_config("pretrain", "saturn-small", [("data.label_key", "Group", demo)])
    embeddings = [f"human={inputs['human_embeddings']}", f"mouse={inputs['mouse_embeddings']}"]
    pretrain = run_phase(PhaseRequest(pretrain_config, out_dir / "pretrain.stk", [inputs["human"], inputs["mouse"]],
                                      quiet=quiet, options={"species": ["human", "mouse"], "protein_emb": embeddings},
                                      log=log))
    align_config = read_config("align", "align", [("training.epochs", 20, demo),
                                                     ("training.batch_size", 256, demo)])
    aligned = run_phase(PhaseRequest(align_config, out_dir / "align.stk", parent=pretrain, quiet=quiet, log=log))
    reports = []
    for name, bundle in (("pretrain", pretrain), ("align", aligned)):
        cells = extract.run(bundle, [], out_dir / f"{name}_cells.h5ad", log=log)
        # the align cells carry the pretrain embedding and the reference too: scib scores all three there
        reports.append(evaluate.run(cells, out_dir / f"report_{name}", umap=name == "align",
                                    options={"no_scib": name == "pretrain"}).metrics)
    tables = [comparison(*reports)]
    if "scores" in reports[1].get("scib", {}):
        tables.append(scib_totals(reports[1]["scib"]["scores"]))
    return out_dir / "report_align" / "metrics.json", tables


def scib_totals(scores: dict) -> Table:
    names = {"X_pca_shared_genes": "shared-gene PCA (unintegrated)", "X_pretrain": "after pretrain",
             "X_align": "after align"}
    table = Table("scib-metrics on the same cells (species as batch; unscaled)",
                  ["aggregate", *(names[k] for k in scores)])
    for metric in ("Bio conservation", "Batch correction", "Total"):
        table.rows.append([metric, *(f"{s[metric]:.3f}" for s in scores.values())])
    return table


def comparison(before: dict, after: dict) -> Table:
    table = Table("cross-species integration of the pancreas demo (labels: cell type)",
                  ["metric", "after pretrain", "after align"])
    for pair in after["label_transfer"]:
        for score in ("accuracy", "balanced_accuracy"):
            table.rows.append([f"label transfer {pair} {score.replace('_', ' ')}",
                               f"{before['label_transfer'][pair][score]:.3f}",
                               f"{after['label_transfer'][pair][score]:.3f}"])
    for k in ("1", "15"):
        table.rows.append([f"{k}-NN cross-species label agreement", f"{before['integration']['knn_agreement'][k]:.3f}",
                           f"{after['integration']['knn_agreement'][k]:.3f}"])
    table.rows.append(["species mixing (1 = mixed)", f"{before['integration']['species_mixing']:.3f}",
                       f"{after['integration']['species_mixing']:.3f}"])
    return table
