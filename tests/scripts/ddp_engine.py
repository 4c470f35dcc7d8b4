"""Run by tests/test_engine_ddp.py: the engine under 2-process CPU DDP (gloo). Fabric relaunches this script once
per process; rank 0 prints one JSON line with what the test checks."""

import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from stagekit.errors import TrainingStopped  # noqa: E402
from stagekit.train import Engine, RunSettings  # noqa: E402
from stagekit.train.state import from_storable  # noqa: E402
from tests.test_engine import Classifier, TwoPhase  # noqa: E402


class Counting(Classifier):
    """Counts the validation cells it scores; optionally signals rank 0, or stops on rank 1, at a step."""

    def __init__(self, rank, interrupt_at=None, stop_at=None):
        super().__init__()
        self.rank, self.interrupt_at, self.stop_at, self.steps = rank, interrupt_at, stop_at, 0

    def val_metrics(self, outputs):
        return super().val_metrics(outputs) | {"n": float(len(outputs["target"]))}

    def after_optimizer_step(self, model, ctx, values):
        self.steps += 1
        if self.rank == 0 and self.steps == self.interrupt_at:
            os.kill(os.getpid(), signal.SIGINT)  # this process only
        if self.rank == 1 and self.steps == self.stop_at:
            raise TrainingStopped("rank 1 saw a collapse")


def main() -> None:
    log_dir = os.environ["LIVE_LOG_DIR"]  # the same folder in both processes; rank 0 writes
    engine = Engine(RunSettings(epochs=4, lr=5e-2, devices=2, strategy="ddp", logger="csv", log_dir=log_dir))
    engine.launch()
    rank = engine.fabric.global_rank
    straight = Counting(rank)
    result = engine.fit(straight)
    interrupted = engine.fit(Counting(rank, interrupt_at=9))  # mid-epoch 2 (7 steps an epoch)
    resumed = Counting(rank)
    torch.manual_seed(99 + rank)
    engine.fit(resumed, resume=interrupted.resume_state)
    stopped = engine.fit(Counting(rank, stop_at=10))
    two_phase = TwoPhase()  # unfreezing at the phase boundary: DDP is set up again for the new parameters
    engine.fit(two_phase)
    flat = torch.cat([p.detach().reshape(-1) for p in two_phase.model.parameters()])
    both = engine.fabric.all_gather(flat)
    phases_in_step = bool(torch.equal(both[0], both[1]))
    if engine.is_global_zero:
        from sklearn.metrics import roc_auc_score

        with torch.no_grad():
            score = straight.model(torch.from_numpy(straight.X[straight.val_idx])).squeeze(-1).numpy()
        rng = from_storable(result.resume_state["rng"])["torch"].numpy()
        same = all(torch.equal(v, resumed.model.state_dict()[k]) for k, v in straight.model.state_dict().items())
        import pandas as pd

        logged = pd.read_csv(Path(log_dir) / "version_0" / "metrics.csv")
        print(json.dumps({"val_n": result.history["val_n"], "val_auroc": result.history["val_auroc"][-1],
                          "recomputed_auroc": float(roc_auc_score(straight.y[straight.val_idx], score)),
                          "n_val": int(len(straight.val_idx)), "rng_rows": int(rng.shape[0]),
                          "rng_rows_differ": bool(not np.array_equal(rng[0], rng[1])),
                          "interrupted": interrupted.status, "resumed_equal": same,
                          "stopped": stopped.status, "stop_message": stopped.message,
                          "stopped_epochs": stopped.epochs_done, "two_phase_ranks_equal": phases_in_step,
                          "log_folders": sorted(p.name for p in Path(log_dir).iterdir()),
                          "logged_val_n": logged["epoch/val_n"].dropna().tolist()[:4]}))


if __name__ == "__main__":
    main()
