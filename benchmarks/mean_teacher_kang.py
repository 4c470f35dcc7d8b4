"""Two-stage Mean Teacher on Kang PBMC (8,684 cells, 4 types) against supervised-only baselines on the same
labelled cells, over seeds.

Scored on the cells that are neither labelled nor validation cells (their labels are hidden from training:
the transductive test set of semi-supervised benchmarks), so choosing the kept epoch on the validation cells
does not flatter the figures. Runs:
  multi-class, 1 % and 10 % labels: two-stage Mean Teacher (1 % -> 10 %), Mean Teacher from scratch, the same MLP
  without the teacher (consistency weight 0; the student is scored), logistic regression on PCA-50;
  binary "CD14+ Monocytes vs rest": (a) from scratch at 10 % with stage-1 settings, (b) stage 1 at 1 %,
  (c) two-stage 1 % -> 10 %, (d) the baselines; and (a) at the seed's lr 1e-4 and at 1e-2 and 1e-1, where the
  collapse guard may fire.

    python benchmarks/mean_teacher_kang.py [--seeds 0 1 2] [--epochs 30] [--binary-only|--multi-only] [--only TEXT]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "kang2018_muscat_subset.h5ad"
LABELS = "cluster_id"
POSITIVE = "CD14+ Monocytes"


def run(stage: str, data: Path, out: Path, overrides: list[tuple[str, object]], parent: Path | None = None):
    """One phase through the registry; returns (status, message) so a guard stop is a result, not a crash."""
    from stagekit.errors import UserError
    from stagekit.stages.registry import read_config, run_phase
    from stagekit.stages.spec import PhaseRequest

    config = read_config(stage, "mean-teacher", [(k, v, "bench") for k, v in overrides])
    try:
        run_phase(PhaseRequest(config, out, [data], parent=parent, quiet=True, log=lambda m: None))
        return "complete", ""
    except UserError as exc:
        return "stopped", str(exc)


def test_scores(bundle: Path, data: Path, positive: str, student: bool = False) -> dict[str, float]:
    """Scores of the teacher's (or the student's) predictions on the cells neither labelled nor validation."""
    import anndata
    import torch
    from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

    from stagekit.bundle import read_bundle
    from stagekit.losses.classification import probabilities
    from stagekit.models.classifier import log_normalise
    from stagekit.stages.mean_teacher.train import load_model

    b = read_bundle(bundle)
    adata = anndata.read_h5ad(data)
    model = load_model(b)
    net = model.student if student else model.teacher
    hidden = np.setdiff1d(np.arange(adata.n_obs), np.concatenate([b.results["labelled"], b.results["validation"]]))
    truth = adata.obs[LABELS].astype(str).to_numpy()[hidden]
    with torch.no_grad():
        x = torch.from_numpy(np.asarray(adata.X[hidden].todense(), dtype=np.float32))
        probs = probabilities(net(log_normalise(x))).numpy()
    if positive:
        y = truth == positive
        p = probs[:, 1]
        predicted = p >= 0.5
        scores = {"f1": f1_score(y, predicted), "precision": precision_score(y, predicted, zero_division=0),
                  "recall": recall_score(y, predicted), "auroc": roc_auc_score(y, p), "mean_probability": p.mean()}
        return {k: float(v) for k, v in scores.items()}
    classes = list(b.categories["classes"])
    return {"macro_f1": float(f1_score(np.searchsorted(classes, truth), probs.argmax(1), average="macro"))}


def baselines(data: Path, bundle: Path, positive: str, seed: int) -> dict[str, dict[str, float]]:
    """Logistic regression on PCA-50 of log-normalised counts (PCA on all cells: they are all available),
    trained on the same labelled cells and scored on the same hidden cells."""
    import anndata
    import scipy.sparse as sp
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

    from stagekit.bundle import read_bundle

    b = read_bundle(bundle)
    adata = anndata.read_h5ad(data)
    x = sp.csr_matrix(adata.X, dtype=np.float64)
    x = sp.diags(1e4 / np.maximum(np.asarray(x.sum(1)).ravel(), 1)) @ x
    x.data = np.log1p(x.data)
    z = PCA(50, random_state=seed).fit_transform(x.toarray())
    labelled = b.results["labelled"]
    hidden = np.setdiff1d(np.arange(adata.n_obs), np.concatenate([labelled, b.results["validation"]]))
    truth = adata.obs[LABELS].astype(str).to_numpy()
    y = (truth == positive) if positive else truth
    model = LogisticRegression(max_iter=2000, class_weight="balanced").fit(z[labelled], y[labelled])
    if positive:
        p = model.predict_proba(z[hidden])[:, 1]
        predicted = p >= 0.5
        scores = {"f1": f1_score(y[hidden], predicted), "precision": precision_score(y[hidden], predicted,
                                                                                     zero_division=0),
                  "recall": recall_score(y[hidden], predicted), "auroc": roc_auc_score(y[hidden], p),
                  "mean_probability": p.mean()}
        return {"logreg_pca50": {k: float(v) for k, v in scores.items()}}
    return {"logreg_pca50": {"macro_f1": float(f1_score(y[hidden], model.predict(z[hidden]), average="macro"))}}


def guard_history(bundle: Path) -> dict:
    from stagekit.bundle import read_bundle

    h = read_bundle(bundle, weights=False).history
    keep = ("val_mean_probability", "val_f1", "pred_positive_fraction", "largest_class_share")
    return {k: [round(v, 3) for v in h[k]] for k in keep if k in h}


def task(positive: str, seeds: list[int], epochs: int, folder: Path, only: str = "") -> dict:
    common = [("data.label_key", LABELS), ("data.positive_class", positive), ("training.epochs", epochs)]
    rows: dict[str, list[dict]] = {}
    for seed in seeds:
        s = [("training.seed", seed)]
        stage1 = "mean teacher stage 1 (1 %)"
        runs = {
            stage1: ("pretrain", common + s + [("data.labelled_fraction", 0.01)], None),
            "mean teacher two-stage (1 % -> 10 %)": ("finetune", s + [("data.labelled_fraction", 0.1)], stage1),
            "mean teacher from scratch (10 %)": ("pretrain", common + s + [("data.labelled_fraction", 0.1)], None),
            "MLP without teacher (1 %)": ("pretrain", common + s + [("data.labelled_fraction", 0.01),
                                                                    ("mean_teacher.consistency_weight", 0.0)], None),
            "MLP without teacher (10 %)": ("pretrain", common + s + [("data.labelled_fraction", 0.1),
                                                                     ("mean_teacher.consistency_weight", 0.0)], None),
        }
        if positive:  # the seed's stage-1 lr, and a deliberately high one
            runs["from scratch (10 %), lr 1e-4"] = ("pretrain", common + s + [("data.labelled_fraction", 0.1),
                                                                              ("training.lr", 1e-4)], None)
            for lr in (1e-2, 1e-1):
                runs[f"from scratch (10 %), lr {lr:.0e}"] = ("pretrain", common + s + [
                    ("data.labelled_fraction", 0.1), ("training.lr", lr)], None)
        paths: dict[str, Path] = {}
        for i, (name, (stage, overrides, parent)) in enumerate(runs.items()):
            paths[name] = out = folder / f"{positive or 'multi'}_{seed}_{i}.stk"
            if only and only not in name and name != parent_of(runs, only):
                continue
            status, message = run(stage, DATA, out, overrides, paths[parent] if parent else None)
            row = {"seed": seed, "status": status}
            if status == "complete":  # the MLP without a teacher is scored as itself, the student
                row |= test_scores(out, DATA, positive, student=name.startswith("MLP")) | {"curve": guard_history(out)}
            else:
                row |= {"guard": message[:300], "curve": guard_history(out.with_name(out.name + ".partial"))}
            rows.setdefault(name, []).append(row)
            print(json.dumps({"task": positive or "multi-class", "run": name} | row), flush=True)
        for fraction, source in ((0.01, paths[stage1]), (0.1, paths["MLP without teacher (10 %)"])):
            if source.exists() and not only:
                for name, scores in baselines(DATA, source, positive, seed).items():
                    row = {"seed": seed} | scores
                    rows.setdefault(f"{name} ({fraction:.0%})", []).append(row)
                    print(json.dumps({"task": positive or "multi-class", "run": f"{name} ({fraction:.0%})"} | row),
                          flush=True)
    return rows


def parent_of(runs: dict, only: str) -> str:
    """The stage-1 run a selected stage-2 run needs."""
    return next((parent for name, (_, _, parent) in runs.items() if only in name and parent), "")


def summarise(rows: dict, metric: str) -> None:
    print(f"\n{'run':<42}{metric:>22}   per seed")
    for name, results in rows.items():
        values = [r[metric] for r in results if metric in r]
        stops = sum(r.get("status") == "stopped" for r in results)
        shown = f"{np.mean(values):.3f} ({min(values):.3f}-{max(values):.3f})" if values else "-"
        print(f"{name:<42}{shown:>22}   {' '.join(f'{v:.3f}' for v in values)}"
              + (f"   guard fired {stops}/{len(results)}" if stops else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--binary-only", action="store_true")
    parser.add_argument("--multi-only", action="store_true")
    parser.add_argument("--only", default="", help="run only the runs whose name contains this (and their stage 1)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if not args.binary_only:
            summarise(task("", args.seeds, args.epochs, Path(tmp), args.only), "macro_f1")
        if not args.multi_only:
            binary = task(POSITIVE, args.seeds, args.epochs, Path(tmp), args.only)
            for metric in ("f1", "precision", "recall", "auroc", "mean_probability"):
                summarise(binary, metric)


if __name__ == "__main__":
    main()
