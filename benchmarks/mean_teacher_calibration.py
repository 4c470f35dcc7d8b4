"""Calibration of Mean Teacher's probabilities on the cells it never saw labelled: expected calibration error of
the teacher's softmax as trained and after the temperature the bundle fitted on its validation cells, for every
Mean Teacher bundle a `mean_teacher_sets.py --workdir DIR` run left (`DIR/<set>_s<seed>_f<fraction>/<task>/mt.stk`).

    python benchmarks/mean_teacher_calibration.py DIR
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
from mean_teacher_sets import SETS, SHARED


def calibration(bundle_path: Path) -> dict:
    import anndata
    import torch

    from stagekit.bundle import read_bundle
    from stagekit.metrics.calibration import expected_calibration_error, fit_temperature, log_probabilities
    from stagekit.models.classifier import log_normalise
    from stagekit.stages.mean_teacher.model_config import MeanTeacherConfig
    from stagekit.stages.mean_teacher.train import load_model

    name = re.match(r"(\w+?)_s\d+_f", bundle_path.parent.parent.name).group(1)
    file, label_key = SETS[name]
    b = read_bundle(bundle_path)
    positive = MeanTeacherConfig.of(b).data.positive_class
    labels = anndata.read_h5ad(SHARED / file).obs[label_key].astype(str).to_numpy()
    target = ((labels == positive).astype(np.int64) if positive
              else np.searchsorted(b.categories["classes"], labels))
    x = anndata.read_h5ad(SHARED / file).X
    with torch.no_grad():
        logits = load_model(b).teacher(log_normalise(torch.from_numpy(
            np.asarray(x.todense() if hasattr(x, "todense") else x, dtype=np.float32)))).numpy()
    validation = b.results["validation"]
    test = np.setdiff1d(np.arange(len(target)), np.concatenate([b.results["labelled"], validation]))
    # bundles written before calibration: the same fit stagekit now makes when a stage ends
    t = float(b.results["temperature"]) if "temperature" in b.results else fit_temperature(logits[validation],
                                                                                            target[validation])
    p_raw, p_cal = (np.exp(log_probabilities(logits[test], temp)) for temp in (1.0, t))
    row = {"set": name, "task": positive or "multi-class", "temperature": t,
           "ece": expected_calibration_error(p_raw, target[test]),
           "ece_calibrated": expected_calibration_error(p_cal, target[test])}
    if positive:
        row |= {"share": float(target[test].mean()), "mean_p": float(p_raw[:, 1].mean()),
                "mean_p_calibrated": float(p_cal[:, 1].mean())}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    args = parser.parse_args()
    rows = [calibration(path) for path in sorted(args.workdir.glob("*_s*_f*/*/mt.stk"))]
    print(f"{'set':<8}{'task':<14}{'bundles':>8}{'T':>8}{'ECE':>8}{'ECE at T':>10}{'share':>8}{'mean p':>8}"
          f"{'at T':>8}")
    for name, task in dict.fromkeys((r["set"], r["task"]) for r in rows):
        group = [r for r in rows if (r["set"], r["task"]) == (name, task)]
        mean = {k: float(np.mean([r[k] for r in group])) for k in group[0] if k not in ("set", "task")}
        extra = (f"{mean['share']:>8.3f}{mean['mean_p']:>8.3f}{mean['mean_p_calibrated']:>8.3f}"
                 if "share" in mean else "")
        print(f"{name:<8}{task[:13]:<14}{len(group):>8}{mean['temperature']:>8.2f}{mean['ece']:>8.3f}"
              f"{mean['ece_calibrated']:>10.3f}" + extra)


if __name__ == "__main__":
    main()
