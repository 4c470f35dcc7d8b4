"""Mean Teacher stage 1 at few labels on six real labelled sets, side by side with supervised and graph baselines
trained on the same labelled cells, over seeds.

Sets: scDCC worm neurons (4,186 cells, 10 types), human kidney (5,685, 11), CITE-seq cord blood (8,617, 15),
Kang's 13-type IFN-beta PBMC subset (2,800), Kang PBMC (8,684, 4 types) and muscat's 5-type Kang example (1,556
cells; no setting was chosen on it). For each set, seed and labelled fraction, `pretrain --preset mean-teacher`
runs as a user runs it (its validation cells, 10 % of each class, choose the kept epoch); every method is then
scored by macro-F1 on the cells that are neither labelled nor validation cells. Baselines, trained on exactly the
labelled cells the run drew:
  - logistic regression on PCA-50 of log-normalised counts (PCA on all cells: as transductive as Mean Teacher's
    unlabelled term), class-balanced;
  - label spreading on the 15-nearest-neighbour graph of the same PCA (scikit-learn), and a kNN classifier;
  - the same network without the teacher (consistency weight 0; the student scored);
  - with --vae: logistic regression on the latent of `pretrain --preset vae` (one per set, seed 0), and Mean Teacher
    and the network without its teacher reading that latent (`--latent-from`).
With --binary, each class under 5 % of cells is a task against the rest (`--positive-class`), scored by the F1 of
that class. A run the collapse guard stops is scored by the last good state it kept (`OUT.partial`, what a user
has) and listed with the guard's metric, value and epoch.

    python benchmarks/mean_teacher_sets.py [--sets worm kidney cite ifnb kang] [--fractions 0.01 0.02 0.05]
        [--seeds 0 1 2] [--vae] [--binary] [--set KEY=VALUE ...] [--workdir DIR]

`--set` passes preset overrides to the Mean Teacher runs (the variants tried); the baselines do not change.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import tempfile
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SETS = {"worm": ("scdcc_worm_neuron_top2000.h5ad", "label"), "kidney": ("scdcc_human_kidney_top2000.h5ad", "label"),
        "cite": ("scdcc_cite_cbmc_top2000.h5ad", "label"), "ifnb": ("kang2018_ifnb_2800.h5ad", "label"),
        "kang": ("kang2018_muscat_subset.h5ad", "cluster_id"),
        "kang5": ("kang2018_muscat_example_sce.h5ad", "cluster_id")}


STOPPED = re.compile(r"(\w+) = ([0-9.e+-]+) went (?:above|below) [0-9.e+-]+ at epoch (\d+)")


def run(*args: object) -> tuple[int, str]:
    """`stagekit ARGS` in this process: (exit code, the error line); a collapse guard's stop is a result."""
    from stagekit.cli import main

    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
    if code not in (0, 2) or (code == 2 and not STOPPED.search(err.getvalue())):
        raise SystemExit(f"stagekit {' '.join(map(str, args))} failed ({code}): {err.getvalue().strip()[-400:]}")
    return code, err.getvalue().strip()


def trained(out: Path, *args: object) -> tuple[Path, str]:
    """Train (unless `out` exists from an earlier run in the same --workdir); returns the bundle to score and, when
    a guard stopped the run, "metric=value@epoch" (the bundle is then the last good state it kept, OUT.partial,
    which is what a user has)."""
    partial, stop = out.with_name(out.name + ".partial"), out.with_name(out.name + ".stopped")
    if out.exists():
        return out, ""
    if not (partial.exists() and stop.exists()):
        partial.unlink(missing_ok=True)
        code, message = run(*args, "-o", out)
        if code == 0:
            return out, ""
        stop.write_text(message)
    metric, value, epoch = STOPPED.search(stop.read_text()).groups()
    return partial, f"{metric}={float(value):.3g}@{epoch}"


def pca50(path: Path, seed: int) -> np.ndarray:
    import anndata
    from sklearn.decomposition import PCA

    from stagekit.data.normalise import log_normalised

    x = log_normalised(anndata.read_h5ad(path).X)
    return PCA(50, random_state=seed).fit_transform(np.asarray(x.todense() if hasattr(x, "todense") else x))


def macro_f1(truth: np.ndarray, predicted: np.ndarray, classes: list[str]) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(truth, predicted, labels=classes, average="macro", zero_division=0.0))


def network_predictions(bundle: Path, path: Path, cells: np.ndarray, student: bool) -> np.ndarray:
    """Class names the teacher (or the student) predicts for `cells` (binary: [not C, C] at probability 0.5)."""
    import anndata
    import torch

    from stagekit.bundle import read_bundle
    from stagekit.losses.classification import probabilities
    from stagekit.models.classifier import log_normalise
    from stagekit.stages.mean_teacher.train import load_model

    b = read_bundle(bundle, resume=bundle.suffix == ".partial")
    model = load_model(b)
    net = model.student if student else model.teacher
    x = anndata.read_h5ad(path).X[cells]
    with torch.no_grad():
        logits = net(log_normalise(torch.from_numpy(np.asarray(x.todense() if hasattr(x, "todense") else x,
                                                               dtype=np.float32))))
    return np.asarray(b.categories["classes"])[probabilities(logits).argmax(1).numpy()]


def baselines(z: np.ndarray, labels: np.ndarray, labelled: np.ndarray, test: np.ndarray, seed: int
              ) -> dict[str, np.ndarray]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.semi_supervised import LabelSpreading

    y = labels[labelled]
    out = {"logreg_pca50": LogisticRegression(max_iter=3000, class_weight="balanced", random_state=seed)
           .fit(z[labelled], y).predict(z[test])}
    classes, codes = np.unique(y, return_inverse=True)
    target = np.full(len(z), -1)
    target[labelled] = codes
    spread = LabelSpreading(kernel="knn", n_neighbors=15, alpha=0.2, max_iter=100).fit(z, target)
    out["label_spreading_pca50"] = classes[spread.transduction_[test]]
    out["knn_pca50"] = KNeighborsClassifier(n_neighbors=min(5, len(labelled))).fit(z[labelled], y).predict(z[test])
    return out


def rare_classes(name: str, below: float = 0.05) -> list[str]:
    import anndata

    file, label_key = SETS[name]
    shares = anndata.read_h5ad(SHARED / file, backed="r").obs[label_key].astype(str).value_counts(normalize=True)
    return [str(c) for c, share in shares.items() if share < below]


def run_one(name: str, seed: int, fraction: float, work: Path, overrides: list[str], vae: bool,
            cache: dict, positive: str = "") -> dict:
    """One task: multi-class, or `positive` against the rest (F1 of the positive class)."""
    import anndata

    from stagekit.bundle import read_bundle

    file, label_key = SETS[name]
    path = SHARED / file
    out = work / f"{name}_s{seed}_f{fraction}" / (f"binary_{positive}".replace(" ", "_") if positive else "multi")
    out.mkdir(parents=True, exist_ok=True)
    common = [path, "--label-key", label_key, "--seed", seed, "--set", f"data.labelled_fraction={fraction}", "-q"]
    if positive:
        common += ["--positive-class", positive]
    mt, stop = trained(out / "mt.stk", "pretrain", "--preset", "mean-teacher", *common, *overrides)
    mlp, mlp_stop = trained(out / "mlp.stk", "pretrain", "--preset", "mean-teacher", *common,
                            "--set", "mean_teacher.consistency_weight=0", *overrides)
    mt_stopped, mlp_stopped = {"mean_teacher": stop}, {"mlp_without_teacher": mlp_stop}
    b = read_bundle(mt, weights=False, resume=bool(stop))
    labelled, validation = b.results["labelled"], b.results["validation"]
    labels = anndata.read_h5ad(path, backed="r").obs[label_key].astype(str).to_numpy()
    if positive:
        labels = np.where(labels == positive, positive, f"not {positive}")
    test = np.setdiff1d(np.arange(len(labels)), np.concatenate([labelled, validation]))
    classes = list(b.categories["classes"])
    predictions = {"mean_teacher": network_predictions(mt, path, test, student=False),
                   "mlp_without_teacher": network_predictions(mlp, path, test, student=True)}
    if (name, seed) not in cache:
        cache[(name, seed)] = pca50(path, seed)
    predictions |= baselines(cache[(name, seed)], labels, labelled, test, seed)
    if vae:
        latent = vae_latent(path, work / f"{name}_vae", cache)
        from_latent = ["--latent-from", work / f"{name}_vae" / "vae.stk"]
        on_latent, on_latent_stopped = trained(out / "mt_latent.stk", "pretrain", "--preset", "mean-teacher",
                                               *common, *from_latent, *overrides)
        mlp_latent, mlp_latent_stopped = trained(out / "mlp_latent.stk", "pretrain", "--preset", "mean-teacher",
                                                 *common, *from_latent, "--set", "mean_teacher.consistency_weight=0",
                                                 *overrides)
        predictions["mean_teacher_latent"] = network_predictions(on_latent, path, test, student=False)
        predictions["mlp_latent"] = network_predictions(mlp_latent, path, test, student=True)
        mt_stopped |= {"mean_teacher_latent": on_latent_stopped}
        mlp_stopped |= {"mlp_latent": mlp_latent_stopped}
        from sklearn.linear_model import LogisticRegression

        predictions["logreg_vae_latent"] = LogisticRegression(max_iter=3000, class_weight="balanced").fit(
            latent[labelled], labels[labelled]).predict(latent[test])
    if positive:
        scores = {method: positive_f1(labels[test], p, positive) for method, p in predictions.items()}
    else:
        scores = {method: macro_f1(labels[test], p, classes) for method, p in predictions.items()}
    stopped = {k: v for k, v in (mt_stopped | mlp_stopped).items() if v}
    return {"set": name, "task": positive or "multi-class", "seed": seed, "fraction": fraction,
            "labelled": int(len(labelled)), "epochs": len(b.history.get("val_f1", [])), "scores": scores,
            "stopped": stopped}


def positive_f1(truth: np.ndarray, predicted: np.ndarray, positive: str) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(truth == positive, predicted == positive, zero_division=0.0))


def vae_latent(path: Path, folder: Path, cache: dict) -> np.ndarray:
    """The latent of one `pretrain --preset vae` of the set (seed 0), shared by every seed's labelled cells."""
    import anndata

    key = (str(path), "vae")
    if key not in cache:
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / "latent.h5ad").exists():
            run("pretrain", "--preset", "vae", path, "--seed", 0, "-q", "-o", folder / "vae.stk")
            run("extract", folder / "vae.stk", path, "-o", folder / "latent.h5ad", "-q")
        cache[key] = np.asarray(anndata.read_h5ad(folder / "latent.h5ad").obsm["X_stagekit"])
    return cache[key]


def summarise(results: list[dict]) -> None:
    methods = list(results[0]["scores"])
    for fraction in sorted({r["fraction"] for r in results}):
        print(f"\nat {fraction:.0%} labels: macro-F1 (multi-class) or the positive class's F1 (binary), mean over "
              "seeds, on the cells neither labelled nor validation")
        variants = [m for m in methods if m.startswith("mean_teacher")]
        print(f"{'set':<8}{'task':<14}" + "".join(f"{m:>24}" for m in methods)
              + "".join(f"{m.replace('mean_teacher', 'MT') + ' - best':>22}" for m in variants))
        for name, task in dict.fromkeys((r["set"], r["task"]) for r in results):
            rows = [r for r in results if (r["set"], r["task"], r["fraction"]) == (name, task, fraction)]
            if not rows:
                continue
            means = {m: float(np.mean([r["scores"][m] for r in rows])) for m in methods}
            best = max(v for m, v in means.items() if m not in variants)
            stops = sum(bool(r.get("stopped")) for r in rows)
            print(f"{name:<8}{task[:13]:<14}" + "".join(f"{means[m]:>24.3f}" for m in methods)
                  + "".join(f"{means[m] - best:>+22.3f}" for m in variants)
                  + (f"  ({stops} run(s) stopped)" if stops else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", choices=list(SETS), default=list(SETS))
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.02, 0.05])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--vae", action="store_true", help="also logistic regression on a VAE latent")
    parser.add_argument("--binary", action="store_true", help="each class under 5 %% of cells against the rest, "
                        "instead of the multi-class task")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="stagekit-mt-sets-"))
    overrides = [a for value in args.overrides for a in ("--set", value)]
    results, cache = [], {}
    for name in args.sets:
        for positive in rare_classes(name) if args.binary else [""]:
            for fraction in args.fractions:
                for seed in args.seeds:
                    result = run_one(name, seed, fraction, work, overrides, args.vae, cache, positive)
                    print(json.dumps(result), flush=True)
                    results.append(result)
    summarise(results)


if __name__ == "__main__":
    main()
