"""The training engine on a small regression task with dropout (so RNG state matters)."""

import os
import signal

import numpy as np
import pytest
import torch
from torch import nn

from stagekit.data.batching import epoch_plan, eval_plan, split_train_val
from stagekit.errors import TrainingStopped
from stagekit.train import Engine, RunSettings, Task
from stagekit.train.optim import FreezePlan, lr_lambda, param_groups


class Regression(Task):
    def __init__(self, seed=0, interrupt_at=None, nan_at=None):
        torch.manual_seed(seed)
        rng = np.random.default_rng(0)
        self.X = rng.normal(size=(512, 8)).astype(np.float32)
        self.y = (self.X @ rng.normal(size=8) + 0.1 * rng.normal(size=512)).astype(np.float32)
        self.model = nn.Sequential(nn.Linear(8, 32), nn.LayerNorm(32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 1))
        self.train_idx, self.val_idx = split_train_val(512, 0.2, seed)
        self.seed, self.interrupt_at, self.nan_at, self.steps = seed, interrupt_at, nan_at, 0

    def train_plan(self, epoch, rank, world):
        return epoch_plan(self.train_idx, 32, self.seed, epoch, rank, world)

    def val_plan(self, rank, world):
        return eval_plan(self.val_idx, 64, rank, world)

    def load(self, rows):
        return {"x": torch.from_numpy(self.X[rows]), "y": torch.from_numpy(self.y[rows])}

    def step(self, model, batch, epoch, train):
        loss = ((model(batch["x"]).squeeze(-1) - batch["y"]) ** 2).mean()
        if train and self.nan_at is not None and self.steps == self.nan_at:
            loss = loss * float("nan")
        return {"loss": loss}

    def after_optimizer_step(self, model):
        self.steps += 1
        if self.steps == self.interrupt_at:
            os.kill(os.getpid(), signal.SIGINT)


SETTINGS = dict(epochs=6, lr=2e-2, weight_decay=1e-2, scheduler="cosine", warmup_ratio=0.1, min_lr_ratio=0.1,
                grad_clip=1.0)


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_loss_falls_and_history_is_recorded():
    task = Regression()
    result = Engine(RunSettings(**SETTINGS)).fit(task)
    h = result.history
    assert result.status == "complete" and result.epochs_done == 6
    assert h["val_loss"][-1] < 0.5 * h["val_loss"][0]
    assert len(h["train_loss"]) == 6 and h["lr"][-1] < h["lr"][0]


def test_interrupt_then_resume_gives_the_same_weights():
    straight = Regression()
    reference = Engine(RunSettings(**SETTINGS)).fit(straight)

    interrupted = Regression(interrupt_at=17)  # mid-epoch (13 steps per epoch)
    first = Engine(RunSettings(**SETTINGS)).fit(interrupted)
    assert first.status == "interrupted" and first.resume_state["loop"]["step_in_epoch"] == 4

    resumed = Regression(seed=0)
    torch.manual_seed(123)  # a different RNG state before resume must not matter
    second = Engine(RunSettings(**SETTINGS)).fit(resumed, resume=first.resume_state)
    assert second.status == "complete"
    for name, value in _weights(straight.model).items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    assert second.history["val_loss"] == reference.history["val_loss"]


def test_non_finite_loss_stops_and_keeps_last_good_state():
    task = Regression(nan_at=30)  # during epoch 3
    result = Engine(RunSettings(**SETTINGS)).fit(task)
    assert result.status == "stopped" and "non-finite" in result.message and "training.lr" in result.message
    assert result.epochs_done == 2
    assert all(torch.isfinite(v).all() for v in task.model.state_dict().values())
    good = {k: torch.as_tensor(v["__tensor__"]) for k, v in result.resume_state["model"].items()}
    for name, value in task.model.state_dict().items():
        assert torch.equal(value, good[name])


def test_task_can_stop_training_and_keep_last_good_state():
    class Collapsing(Regression):
        def after_optimizer_step(self, model):
            super().after_optimizer_step(model)
            if self.steps == 20:
                raise TrainingStopped("clusters collapsed")

    task = Collapsing()
    result = Engine(RunSettings(**SETTINGS)).fit(task)
    assert result.status == "stopped" and result.message == "clusters collapsed" and result.epochs_done == 1
    good = {k: torch.as_tensor(v["__tensor__"]) for k, v in result.resume_state["model"].items()}
    assert all(torch.equal(v, good[k]) for k, v in task.model.state_dict().items())


def test_task_can_finish_early():
    class Converging(Regression):
        def after_optimizer_step(self, model):
            super().after_optimizer_step(model)
            if self.steps == 30:
                self.finish_reason = "converged"

    result = Engine(RunSettings(**SETTINGS)).fit(Converging())
    assert result.status == "complete" and result.epochs_done == 3


def test_early_stopping_restores_best_weights():
    task = Regression()
    settings = RunSettings(**(SETTINGS | {"epochs": 40, "lr": 3e-2, "early_stopping_patience": 2}))
    result = Engine(settings).fit(task)
    assert result.epochs_done < 40
    assert min(result.history["val_loss"]) == pytest.approx(result.resume_state["loop"]["best"])


def test_param_groups_no_decay_and_freeze_plan():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Embedding(3, 4), nn.Linear(4, 2))
    groups = param_groups(model, lr=1e-3, weight_decay=0.1, plan=FreezePlan(frozen=("0",), lr_scales={"3": 0.5}))
    assert not model[0].weight.requires_grad
    decayed = [p for g in groups if g["weight_decay"] > 0 for p in g["params"]]
    assert decayed == [model[3].weight]  # biases, norms and embeddings never decay
    assert {g["lr"] for g in groups} == {1e-3, 5e-4}


def test_lr_schedule_warmup_then_cosine_to_min():
    f = lr_lambda("cosine", total_steps=100, warmup_ratio=0.1, min_lr_ratio=0.2)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(100) == pytest.approx(0.2) and f(55) == pytest.approx(0.6)
    assert lr_lambda("constant", 100, 0.0, 0.0)(50) == 1.0
