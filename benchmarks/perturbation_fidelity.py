"""The transition model against baselines on real perturbation data, over seeds (issue targets):

  kang:      IFN-beta PBMCs (Kang 2018, ctrl/stim x 5 cell types). Five folds, each holding out one cell type's
             stimulated cells (zero-shot across cell types; the donor is the batch). Target: averaged over the
             folds, top-50 Pearson delta and energy distance better than the same perturbation's shift from the
             other cell types, and better than control mean.
  papalexi:  CRISPR knockouts in THP-1 (Papalexi 2021, 25 targets, `unassigned` excluded), 20 % of every
             target's cells held out. Target: on the targets with a measurable effect, energy distance and top-50
             Pearson delta better than control mean and mean training shift; resampling the target's own training
             cells is shown as the reference.

Every figure comes from `stagekit evaluate`'s report (metrics.json), model and baselines scored on the same cells.

  kang-embed: the same Kang folds with the model in the PCA (the default) and in a VAE latent (`pretrain --preset
             vae` on all of the cells, written into obsm by `extract`, read with --embed-key X_stagekit), each
             against its baselines; the gene-space scores compare the two (the embeddings differ).

    python benchmarks/perturbation_fidelity.py kang [--seeds 0 1 2] [--epochs 100] [--json out.json]
    python benchmarks/perturbation_fidelity.py kang-embed [--seeds 0 1 2] [--epochs 100]
    python benchmarks/perturbation_fidelity.py papalexi [--seeds 0 1 2] [--epochs 40]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
KANG = SHARED / "kang2018_muscat_example_sce.h5ad"
PAPALEXI = SHARED / "papalexi2021_sceptre_lowmoi.h5ad"
METRICS = ("energy_embedding", "energy_genes", "pearson_delta_top50", "sign_top50", "spread_ratio")
METHODS = ("model", "control_mean", "training_shift", "other_contexts", "own_shift", "reference")


def train_and_evaluate(data: Path, out: Path, overrides: list[tuple[str, object]], cell_eval: bool = True
                       ) -> tuple[Path, dict]:
    """The bundle and evaluate's metrics.json (stagekit's scores under "perturbation", cell-eval's under
    "cell_eval")."""
    from stagekit.stages import evaluate
    from stagekit.stages.registry import read_config, run_phase
    from stagekit.stages.spec import PhaseRequest

    config = read_config("pretrain", "transition", [(k, v, "bench") for k, v in overrides])
    bundle = run_phase(PhaseRequest(config, out / "tx.stk", [data], quiet=True, log=lambda m: None))
    return bundle, evaluate.run(bundle, out / "report", umap=False, options={"no_cell_eval": not cell_eval}).metrics


def unclipped_scores(bundle: Path, out: Path) -> dict:
    """stagekit's scores of the same bundle with predicted expression allowed below zero (what clipping at zero
    changes); cell-eval refuses negative values, so it is left out here."""
    from stagekit.stages import evaluate
    from stagekit.stages.perturbation import cell_eval, space

    floor, available = space.EXPRESSION_FLOOR, cell_eval.available
    space.EXPRESSION_FLOOR, cell_eval.available = -np.inf, lambda: False
    try:
        return evaluate.run(bundle, out / "report_unclipped", umap=False).metrics["perturbation"]
    finally:
        space.EXPRESSION_FLOOR, cell_eval.available = floor, available


def kang_data(folder: Path) -> Path:
    import anndata

    adata = anndata.read_h5ad(KANG)
    adata.obs["donor"] = adata.obs["sample_id"].astype(str).str[-3:]  # ctrl101 / stim101: donor 101
    path = folder / "kang_stim.h5ad"
    adata.write_h5ad(path)
    return path


def kang_fold(data: Path, out: Path, context: str, seed: int, epochs: int, extra: list = (),
              cell_eval: bool = True) -> tuple[Path, dict, dict]:
    """One fold: `context`'s stimulated cells held out (the donor as batch); the bundle, evaluate's metrics and
    the held-out cell type's group among them."""
    out.mkdir()
    bundle, metrics = train_and_evaluate(data, out, [
        ("data.pert_key", "group_id"), ("data.control", "ctrl"), ("data.context_key", "cluster_id"),
        ("data.batch_key", "donor"), ("data.holdout_contexts", [context]), ("training.seed", seed),
        ("training.epochs", epochs), *extra], cell_eval)
    (group,) = [g for g in metrics["perturbation"]["groups"] if g["context"] == context]
    return bundle, metrics, group


def kang(seeds: list[int], epochs: int) -> dict:
    """Per fold and seed, the held-out cell type's scores (the zero-shot group only)."""
    import anndata

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = kang_data(Path(tmp))
        contexts = sorted(anndata.read_h5ad(data, backed="r").obs["cluster_id"].astype(str).unique())
        for seed in seeds:
            for context in contexts:
                out = Path(tmp) / f"{seed}-{context.replace(' ', '_')}"
                bundle, metrics, group = kang_fold(data, out, context, seed, epochs)
                (unclipped,) = [g for g in unclipped_scores(bundle, out)["groups"] if g["context"] == context]
                cell_eval = [g for g in metrics["cell_eval"].get("groups", []) if g["context"] == context]
                rows.append({"seed": seed, "context": context, "measurable": group["measurable"],
                             "methods": group["methods"], "unclipped": unclipped["methods"],
                             "cell_eval": cell_eval[0]["methods"] if cell_eval else {}})
                print(f"seed {seed} {context:18s} " + "  ".join(
                    f"{m} E={s['energy_embedding']:.3f} r50={s['pearson_delta_top50']:.3f}"
                    for m, s in group["methods"].items() if m in ("model", "control_mean", "other_contexts")),
                    flush=True)
    return {"rows": rows, "mean": _means([r["methods"] for r in rows]),
            "mean_unclipped": _means([r["unclipped"] for r in rows]),
            "cell_eval_mean": _cell_eval_means([r["cell_eval"] for r in rows if r["cell_eval"]])}


def with_vae_latent(data: Path, folder: Path) -> Path:
    """`data` with obsm["X_stagekit"]: the latent of `pretrain --preset vae` (preset defaults) on all its cells."""
    from stagekit.stages import extract
    from stagekit.stages.registry import read_config, run_phase
    from stagekit.stages.spec import PhaseRequest

    config = read_config("pretrain", "vae", [("data.batch_key", "donor", "bench")])
    vae = run_phase(PhaseRequest(config, folder / "vae.stk", [data], quiet=True, log=lambda m: None))
    return extract.run(vae, [data], folder / "kang_latent.h5ad", log=lambda m: None)


def kang_embed(seeds: list[int], epochs: int) -> dict:
    """Per space, seed and fold: the held-out cell type's scores, without cell-eval."""
    import anndata

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = kang_data(Path(tmp))
        latent = with_vae_latent(data, Path(tmp))
        contexts = sorted(anndata.read_h5ad(data, backed="r").obs["cluster_id"].astype(str).unique())
        for space, path, extra in (("pca", data, []), ("vae", latent, [("data.embed_key", "X_stagekit")])):
            for seed in seeds:
                for context in contexts:
                    out = Path(tmp) / f"{space}-{seed}-{context.replace(' ', '_')}"
                    _, _, group = kang_fold(path, out, context, seed, epochs, extra, cell_eval=False)
                    rows.append({"space": space, "seed": seed, "context": context, "methods": group["methods"]})
                    shown = ("model", "control_mean", "other_contexts")
                    print(f"{space} seed {seed} {context:18s} " + "  ".join(
                        f"{m} E={v['energy_embedding']:.3f} G={v['energy_genes']:.3f} r={v['pearson_delta_top50']:.3f}"
                        for m, v in group["methods"].items() if m in shown), flush=True)
    return {"rows": rows, "mean": {space: _means([r["methods"] for r in rows if r["space"] == space])
                                   for space in ("pca", "vae")}}


CELL_EVAL = ("overlap_at_50", "precision_at_50", "de_direction_match", "pearson_delta", "mae")


def _cell_eval_means(rows: list[dict]) -> dict:
    return {m: {k: float(np.nanmean([r[m].get(k, np.nan) for r in rows if m in r])) for k in CELL_EVAL}
            | {"n": sum(m in r for r in rows)} for m in METHODS if any(m in r for r in rows)}


def papalexi(seeds: list[int], epochs: int) -> dict:
    per_seed = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            out = Path(tmp) / str(seed)
            out.mkdir()
            _, metrics = train_and_evaluate(PAPALEXI, out, [
                ("data.pert_key", "perturbation"), ("data.control", "control"), ("data.exclude", ["unassigned"]),
                ("training.seed", seed), ("training.epochs", epochs)])
            groups = metrics["perturbation"]["groups"]
            measurable = [g for g in groups if g["measurable"]]
            per_seed.append({"seed": seed, "measurable": [g["perturbation"] for g in measurable],
                             "all": _means([g["methods"] for g in groups]),
                             "measurable_mean": _means([g["methods"] for g in measurable]),
                             "groups": [{"perturbation": g["perturbation"], "measurable": g["measurable"],
                                         "effect_energy": g["effect_energy"], "methods": g["methods"]}
                                        for g in groups]})
            print(f"seed {seed}: {len(measurable)}/{len(groups)} targets with a measurable effect: "
                  f"{', '.join(sorted(g['perturbation'] for g in measurable))}", flush=True)
    return {"per_seed": per_seed}


def _means(rows: list[dict]) -> dict:
    return {m: {k: float(np.mean([r[m][k] for r in rows if m in r])) for k in METRICS}
            | {"n": sum(m in r for r in rows)} for m in METHODS if any(m in r for r in rows)}


def _table(title: str, means: dict, metrics: tuple[str, ...] = METRICS) -> None:
    print(f"\n{title}")
    print(f"{'method':16s}{'groups':>9s}" + "".join(f"{k:>22s}" for k in metrics))
    for method, values in means.items():
        print(f"{method:16s}{values['n']!s:>9s}" + "".join(f"{values[k]:22.3f}" for k in metrics))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=("kang", "kang-embed", "papalexi"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.dataset == "kang-embed":
        result = kang_embed(args.seeds, args.epochs or 100)
        for space, means in result["mean"].items():
            _table(f"Kang IFN-beta, held-out cell type (zero-shot), the model in the {space.upper()} space, mean over "
                   f"5 folds x {len(args.seeds)} seeds (energy embedding: in that space)", means)
    elif args.dataset == "kang":
        result = kang(args.seeds, args.epochs or 100)
        folds = f"mean over 5 folds x {len(args.seeds)} seeds"
        _table(f"Kang IFN-beta, held-out cell type (zero-shot), {folds}", result["mean"])
        _table(f"the same, predicted expression not clipped at zero, {folds}", result["mean_unclipped"])
        _table(f"cell-eval on the same cells, {folds}", result["cell_eval_mean"], CELL_EVAL)
        for row in result["rows"]:
            print(f"seed {row['seed']} {row['context']:18s} cell-eval " + "  ".join(
                f"{m}: " + " ".join(f"{k}={row['cell_eval'][m][k]:.3f}" for k in CELL_EVAL if k in row['cell_eval'][m])
                for m in ("model", "other_contexts", "control_mean") if m in row["cell_eval"]))
    else:
        result = papalexi(args.seeds, args.epochs or 40)
        for key, title in (("all", "all held-out targets"), ("measurable_mean", "targets with a measurable effect")):
            means = {m: {k: float(np.mean([s[key][m][k] for s in result["per_seed"]])) for k in METRICS}
                     | {"n": "+".join(str(s[key][m]["n"]) for s in result["per_seed"])}
                     for m in result["per_seed"][0][key]}
            _table(f"Papalexi CRISPRko, 20 % held out, {title}, mean over {len(args.seeds)} seeds", means)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
