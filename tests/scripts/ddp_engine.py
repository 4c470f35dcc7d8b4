"""Run by tests/test_engine_ddp.py: the engine under 2-process CPU DDP (gloo). Fabric relaunches this script once
per process; rank 0 prints one JSON line with what the test checks."""

import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from stagekit.train import Engine, RunSettings  # noqa: E402
from stagekit.train.state import from_storable  # noqa: E402
from tests.test_engine import Classifier  # noqa: E402


class Counting(Classifier):
    def val_metrics(self, outputs):
        return super().val_metrics(outputs) | {"n": float(len(outputs["target"]))}


def main() -> None:
    engine = Engine(RunSettings(epochs=4, lr=5e-2, devices=2, strategy="ddp"))
    engine.launch()
    task = Counting()
    result = engine.fit(task)
    if engine.is_global_zero:
        from sklearn.metrics import roc_auc_score

        with torch.no_grad():
            score = task.model(torch.from_numpy(task.X[task.val_idx])).squeeze(-1).numpy()
        rng = from_storable(result.resume_state["rng"])["torch"].numpy()
        print(json.dumps({"val_n": result.history["val_n"], "val_auroc": result.history["val_auroc"][-1],
                          "recomputed_auroc": float(roc_auc_score(task.y[task.val_idx], score)),
                          "n_val": int(len(task.val_idx)), "rng_rows": int(np.asarray(rng).shape[0]),
                          "rng_rows_differ": bool(not np.array_equal(np.asarray(rng)[0], np.asarray(rng)[1]))}))


if __name__ == "__main__":
    main()
