"""Does the fine-tuning recipe hold? Transfer of a pretrained transition model to a few-shot target task, arm by arm,
side by side on the same split and seed (issue "Perturbation transfer II"):

  scratch   `pretrain --preset transition` on the target task's few-shot cells alone, the arms' largest epoch budget
  A         `finetune --preset frozen-backbone` from the pretrained model
  A+B       then `finetune --preset frozen-backbone-polish`
  A+B+CDE   then `unfreeze --preset progressive` (C -> D -> E, layer-wise lr decay)
  A+B+full  then `unfreeze --preset full-unfreeze` (everything at 3e-4 at once: the naive recipe)

Each arm is scored by `stagekit evaluate` on the target task's held-out cells (with the baselines: control mean,
mean training shift, and the few-shot cells' own mean shift), and, for forgetting, on the pretraining task's
held-out cells with `evaluate --held-out-of` (the pretrained model's own scores there are the "before").

  papalexi: CRISPR knockouts in THP-1; pretrain on 17 targets, the target task is the other 8 (every third target
            in alphabetical order from the second), 30 % of their cells for training (test_fraction 0.7).
  kang:     IFN-beta PBMCs; pretrain with one cell type's stimulated cells left out; the target task is that cell
            type with 30 % of its stimulated cells for training.

Gene-space figures (energy distance on genes, top-50 Pearson delta) compare across arms: scratch fits its own PCA.

    python benchmarks/perturbation_transfer.py papalexi [--seeds 0 1 2] [--json out.json]
    python benchmarks/perturbation_transfer.py kang [--context "CD14+ Monocytes"] [--epoch-scale 10]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
PAPALEXI = SHARED / "papalexi2021_sceptre_lowmoi.h5ad"
KANG = SHARED / "kang2018_muscat_example_sce.h5ad"
METRICS = ("energy_genes", "pearson_delta_top50", "energy_embedding")
ARMS = ("scratch", "A", "A+B", "A+B+CDE", "A+B+full")
BASELINES = ("control_mean", "training_shift", "own_shift")


def phase(stage: str, preset: str, out: Path, overrides: list[tuple[str, object]], data: list[Path] | None = None,
          parent: Path | None = None) -> Path:
    from stagekit.stages.registry import read_config, run_phase
    from stagekit.stages.spec import PhaseRequest

    config = read_config(stage, preset, [(k, v, "bench") for k, v in overrides])
    return run_phase(PhaseRequest(config, out, list(data or []), parent, quiet=True, log=lambda m: None))


def scores(bundle: Path, out: Path, held_out_of: Path | None = None) -> dict:
    """Means over the held-out groups, all of them and those with a measurable effect, per method (model and
    baselines): {method: {"all": {metric: value}, "measurable": {...}}}."""
    from stagekit.stages import evaluate

    report = evaluate.run(bundle, out, umap=False, options={"held_out_of": held_out_of}).metrics["perturbation"]
    found = {}
    for method, values in report["mean"].items():
        found[method] = {"all": {k: values[k] for k in METRICS}, "measurable": {
            k: report["mean_measurable"][method][k] for k in METRICS} if method in report["mean_measurable"]
            else {k: float("nan") for k in METRICS}}
    found["_measurable"] = sorted(f"{g['perturbation']} / {g['context']}" for g in report["groups"]
                                  if g["measurable"])
    return found


def run_arms(pretrain_args: dict, target_args: dict, seed: int, folder: Path, scale: int = 1) -> dict:
    """Pretrain, then every arm from the same pretrained model; scores on the target and the pretraining task.
    `scale` multiplies every fine-tuning phase's epochs (and scratch's budget): on a target of a few dozen cells
    an epoch is one optimizer step."""
    t0 = time.time()
    tx = phase("pretrain", "transition", folder / "tx.stk", [*pretrain_args["overrides"], ("training.seed", seed)],
               data=pretrain_args["data"])
    seeded = [("training.seed", seed)]
    a = phase("finetune", "frozen-backbone", folder / "A.stk",
              [*target_args["overrides"], *seeded, ("training.epochs", 20 * scale)], target_args["data"], tx)
    b = phase("finetune", "frozen-backbone-polish", folder / "B.stk", [*seeded, ("training.epochs", 10 * scale)],
              parent=a)
    cde = phase("unfreeze", "progressive", folder / "CDE.stk",
                [*seeded, *((f"phase_{x}.epochs", 10 * scale) for x in "cde")], parent=b)
    full = phase("unfreeze", "full-unfreeze", folder / "full.stk", [*seeded, ("phase_e.epochs", 30 * scale)],
                 parent=b)
    budget = (20 + 10 + 30) * scale  # A + B + C/D/E (or full-unfreeze) epochs of the shipped presets
    scratch = phase("pretrain", "transition", folder / "scratch.stk",
                    [*target_args["scratch_overrides"], ("training.seed", seed), ("training.epochs", budget)],
                    data=target_args["data"])
    arms = {"scratch": scratch, "A": a, "A+B": b, "A+B+CDE": cde, "A+B+full": full}
    before = scores(tx, folder / "r_tx")
    result = {"target": {}, "forgetting": {"before": before["model"]},
              "measurable_pretraining": before["_measurable"]}
    for name, bundle in arms.items():
        found = scores(bundle, folder / f"r_{name}")
        result["target"][name] = found["model"]
        if name == "A":  # the baselines are the same cells for every arm that shares the split
            result["target"] |= {m: found[m] for m in BASELINES if m in found}
            result["measurable_target"] = found["_measurable"]
        if name != "scratch":
            result["forgetting"][name] = scores(bundle, folder / f"f_{name}", held_out_of=tx)["model"]
    result["seconds"] = time.time() - t0
    return result


def papalexi(seed: int, folder: Path, scale: int) -> dict:
    import anndata

    perts = sorted(set(anndata.read_h5ad(PAPALEXI, backed="r").obs["perturbation"].astype(str)))
    targets = [p for p in perts if p not in ("control", "unassigned")]
    new = targets[1::3]
    seen = [t for t in targets if t not in new]
    design = [("data.pert_key", "perturbation"), ("data.control", "control")]
    pretrain = {"data": [PAPALEXI], "overrides": [*design, ("data.exclude", ["unassigned", *new])]}
    target = {"data": [PAPALEXI], "overrides": [("data.exclude", ["unassigned", *seen]), ("data.test_fraction", 0.7)],
              "scratch_overrides": [*design, ("data.exclude", ["unassigned", *seen]), ("data.test_fraction", 0.7)]}
    return run_arms(pretrain, target, seed, folder, scale) | {"target_perturbations": new}


def kang(seed: int, folder: Path, context: str, scale: int) -> dict:
    import anndata

    adata = anndata.read_h5ad(KANG)
    adata.obs["donor"] = adata.obs["sample_id"].astype(str).str[-3:]
    held = (adata.obs["cluster_id"] == context) & (adata.obs["group_id"] == "stim")
    # pretraining never sees the target cell type's stimulated cells; the target task is that cell type alone
    pretrain_cells = adata[~held.to_numpy()].copy()
    target_cells = adata[(adata.obs["cluster_id"] == context).to_numpy()].copy()
    pretrain_path, target_path = folder / "kang_pretrain.h5ad", folder / "kang_target.h5ad"
    pretrain_cells.write_h5ad(pretrain_path)
    target_cells.write_h5ad(target_path)
    design = [("data.pert_key", "group_id"), ("data.control", "ctrl"), ("data.context_key", "cluster_id"),
              ("data.batch_key", "donor")]
    pretrain = {"data": [pretrain_path], "overrides": [*design, ("training.epochs", 100)]}
    target = {"data": [target_path], "overrides": [("data.test_fraction", 0.7)],
              "scratch_overrides": [*design, ("data.test_fraction", 0.7)]}
    return run_arms(pretrain, target, seed, folder, scale) | {"target_context": context}


def table(title: str, rows: dict[str, list[dict]]) -> None:
    for subset in ("all", "measurable"):
        print(f"\n{title}, {subset} groups")
        print(f"{'arm':18s}" + "".join(f"{k:>22s}" for k in METRICS))
        for name, values in rows.items():
            print(f"{name:18s}" + "".join(
                f"{np.nanmean([v[subset][k] for v in values]):>15.3f} ± {np.nanstd([v[subset][k] for v in values]):.3f}"
                for k in METRICS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=("papalexi", "kang"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--context", default="CD14+ Monocytes", help="kang: the target cell type")
    parser.add_argument("--epoch-scale", type=int, default=1, help="multiply every fine-tuning phase's epochs "
                        "(the presets' 20/10/3x10/30) and scratch's budget: a few dozen target cells make an "
                        "epoch one optimizer step")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            found = (papalexi(seed, Path(tmp), args.epoch_scale) if args.dataset == "papalexi"
                     else kang(seed, Path(tmp), args.context, args.epoch_scale))
        results.append(found | {"seed": seed})
        print(f"seed {seed}: {found['seconds']:.0f} s; measurable: target {found['measurable_target']}, "
              f"pretraining {found['measurable_pretraining']}; target (all groups) energy genes / r50: " + "  ".join(
                  f"{arm} {found['target'][arm]['all']['energy_genes']:.3f}/"
                  f"{found['target'][arm]['all']['pearson_delta_top50']:.3f}" for arm in found["target"]), flush=True)
    target = {arm: [r["target"][arm] for r in results] for arm in results[0]["target"]}
    forgetting = {arm: [r["forgetting"][arm] for r in results] for arm in results[0]["forgetting"]}
    table(f"{args.dataset}: target task, held-out cells, mean ± sd over seeds {args.seeds}", target)
    table(f"{args.dataset}: pretraining task's held-out cells (forgetting; 'before' = the pretrained model)",
          forgetting)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
