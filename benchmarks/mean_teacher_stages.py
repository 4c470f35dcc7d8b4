"""Two stages against one: Mean Teacher at a final 10 % of labels reached from a 1 % stage 1 (`pretrain` then
`finetune`) or trained from scratch at 10 % (`pretrain` alone), at several learning rates; whether the collapse
guard stops a run, at which epoch and at what predicted share.

For every task (each set's multi-class task, or with --binary each class under 5 % of cells against the rest) and
learning rate L:
  - stage 1: `pretrain --preset mean-teacher` at 1 % labels, lr L (a model trained from scratch at few labels);
  - stage 2: `finetune --preset mean-teacher` from it at 10 %, lr L x (stage 2's preset lr / stage 1's);
  - one stage: `pretrain --preset mean-teacher` from scratch at 10 %, lr L.
Each run that finishes is scored on the cells that neither 10 % run labelled and that no run validated on: macro-F1
(multi-class) or the positive class's F1 (binary). A run the guard stops is reported with the guard's metric and
value, the epoch, and nothing else (it wrote no bundle; stage 2 then cannot run).

`--recipe genes` runs the earlier recipe instead of the shipped preset: an MLP 256-64 with BatchNorm on the
log-normalised genes, focal + Dice loss, consistency of probabilities (weight 10), input noise and dropout 0.5.
`--latent`: stage 1 and one stage read the latent of one `pretrain --preset vae` per set (seed 0, `--latent-from`);
stage 2 inherits it from stage 1's bundle.

    python benchmarks/mean_teacher_stages.py [--sets ...] [--binary] [--lrs 1e-4 1e-3 1e-2] [--seeds 0 1 2]
        [--recipe shipped|genes] [--latent] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from mean_teacher_sets import (
    SETS,
    SHARED,
    STOPPED,
    macro_f1,
    network_predictions,
    positive_f1,
    rare_classes,
    run,
    vae_latent,
)

GENES_RECIPE = ['model.input="genes"', "model.n_hidden=[256, 64]", 'model.norm="batch"', "model.dropout=0.2",
                'mean_teacher.supervised="focal_dice"', 'mean_teacher.consistency="mse"',
                "mean_teacher.consistency_weight=10", "mean_teacher.input_noise=0.5", "mean_teacher.input_dropout=0.5"]


def reused(out: Path, *args: object) -> tuple[int, str]:
    """Run `stagekit ARGS -o OUT`, or read the outcome of the run an earlier call left in the same --workdir."""
    stop = out.with_name(out.name + ".stopped")
    if out.exists():
        return 0, ""
    if stop.exists():
        return 2, stop.read_text()
    code, message = run(*args, "-o", out)
    if code:
        stop.write_text(message)
    return code, message


def outcome(code: int, message: str, bundle: Path) -> dict:
    """What a run did: finished (kept epoch, last predicted share) or stopped by a guard (metric, value, epoch)."""
    from stagekit.bundle import read_bundle

    if code == 2:
        metric, value, epoch = STOPPED.search(message).groups()
        return {"stopped": True, "guard": metric, "value": float(value), "epoch": int(epoch)}
    h = read_bundle(bundle, weights=False).history
    share = "pred_positive_fraction" if "pred_positive_fraction" in h else "largest_class_share"
    return {"stopped": False, "epochs": len(h["val_f1"]), share: float(h[share][-1])}


def stage_two_lr_ratio() -> float:
    import tomllib

    presets = Path(__file__).resolve().parents[1] / "presets"
    lr = {f: tomllib.loads((presets / f).read_text())["training"]["lr"]
          for f in ("mean-teacher.toml", "mean-teacher.finetune.toml")}
    return lr["mean-teacher.finetune.toml"] / lr["mean-teacher.toml"]


def one_task(name: str, positive: str, seed: int, lr: float, recipe: list[str], work: Path, latent: bool = False
             ) -> dict:
    import anndata

    from stagekit.bundle import read_bundle

    file, label_key = SETS[name]
    path = SHARED / file
    out = work / f"{name}_{positive or 'multi'}_s{seed}_lr{lr:g}{'_latent' if latent else ''}".replace(" ", "_")
    out.mkdir(parents=True, exist_ok=True)
    task = [path, "--label-key", label_key, "--seed", seed, "-q", *(["--positive-class", positive] if positive else []),
            *[a for kv in recipe for a in ("--set", kv)]]
    if latent:
        vae_latent(path, work / f"{name}_vae", {})
        task += ["--latent-from", work / f"{name}_vae" / "vae.stk"]
    runs = {"stage_1": reused(out / "stage1.stk", "pretrain", "--preset", "mean-teacher", *task,
                              "--set", "data.labelled_fraction=0.01", "--set", f"training.lr={lr}")}
    if runs["stage_1"][0] == 0:
        objective = [a for kv in recipe if not kv.startswith("model.") for a in ("--set", kv)]  # model: stage 1's
        runs["stage_2"] = reused(out / "stage2.stk", "finetune", "--preset", "mean-teacher", out / "stage1.stk", path,
                                 "-q", *objective, "--set", "data.labelled_fraction=0.1",
                                 "--set", f"training.lr={lr * stage_two_lr_ratio():g}")
    runs["one_stage"] = reused(out / "scratch.stk", "pretrain", "--preset", "mean-teacher", *task,
                               "--set", "data.labelled_fraction=0.1", "--set", f"training.lr={lr}")
    files = {"stage_1": "stage1.stk", "stage_2": "stage2.stk", "one_stage": "scratch.stk"}
    result = {"set": name, "task": positive or "multi-class", "seed": seed, "lr": lr, "latent": latent}
    result |= {k: outcome(*runs[k], out / files[k]) for k in runs}
    finished = [k for k in runs if runs[k][0] == 0]
    labels = anndata.read_h5ad(path, backed="r").obs[label_key].astype(str).to_numpy()
    used = [read_bundle(out / files[k], weights=False).results for k in finished]
    held = np.unique(np.concatenate([np.concatenate([r["labelled"], r["validation"]]) for r in used]))
    test = np.setdiff1d(np.arange(len(labels)), held)
    if positive:
        labels = np.where(labels == positive, positive, f"not {positive}")
    for k in finished:
        predicted = network_predictions(out / files[k], path, test, student=False)
        classes = list(read_bundle(out / files[k], weights=False).categories["classes"])
        result[k]["f1"] = (positive_f1(labels[test], predicted, positive) if positive
                           else macro_f1(labels[test], predicted, classes))
    return result


def summarise(results: list[dict]) -> None:
    def cell(r: dict, k: str) -> str:
        if k not in r:
            return "-"
        o = r[k]
        return f"stop {o['guard'][:14]}={o['value']:.2f}@{o['epoch']}" if o["stopped"] else f"{o['f1']:.3f}"

    print(f"\n{'set':<8}{'task':<14}{'lr':>8}{'seed':>6}{'stage 1 (1 %)':>30}{'stage 2 (10 %)':>30}"
          f"{'one stage (10 %)':>30}")
    for r in results:
        print(f"{r['set']:<8}{r['task'][:13]:<14}{r['lr']:>8g}{r['seed']:>6}"
              + "".join(f"{cell(r, k):>30}" for k in ("stage_1", "stage_2", "one_stage")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", choices=list(SETS), default=list(SETS))
    parser.add_argument("--binary", action="store_true")
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 1e-3, 1e-2])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--recipe", choices=["shipped", "genes"], default="shipped")
    parser.add_argument("--latent", action="store_true", help="the classifier reads a VAE latent (--latent-from)")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="stagekit-mt-stages-"))
    recipe = GENES_RECIPE if args.recipe == "genes" else []
    results = []
    for name in args.sets:
        for positive in rare_classes(name) if args.binary else [""]:
            for lr in args.lrs:
                for seed in args.seeds:
                    results.append(one_task(name, positive, seed, lr, recipe, work, args.latent))
                    print(json.dumps(results[-1]), flush=True)
    summarise(results)


if __name__ == "__main__":
    main()
