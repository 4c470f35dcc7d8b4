"""The training engine on a small regression task with dropout (so RNG state matters)."""

import os
import signal

import numpy as np
import pytest
import torch
from torch import nn

from stagekit.data.batching import epoch_plan, eval_plan, split_train_val
from stagekit.errors import TrainingFinished, TrainingStopped, UserError
from stagekit.train import EMA, Engine, FreezePlan, Guard, Phase, RunSettings, Task, layer_decay_scales
from stagekit.train.optim import lr_lambda, param_groups
from stagekit.train.state import from_storable


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

    def step(self, model, batch, ctx):
        loss = ((model(batch["x"]).squeeze(-1) - batch["y"]) ** 2).mean()
        if ctx.train and self.nan_at is not None and self.steps == self.nan_at:
            loss = loss * float("nan")
        return {"loss": loss}

    def after_optimizer_step(self, model, ctx, values):
        self.steps += 1
        if self.steps == self.interrupt_at:
            os.kill(os.getpid(), signal.SIGINT)

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state):
        if state:
            self.steps = int(state["steps"])


SETTINGS = dict(epochs=6, lr=2e-2, weight_decay=1e-2, scheduler="cosine", warmup_ratio=0.1, min_lr_ratio=0.1,
                grad_clip=1.0)


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return all(torch.equal(v, b[k]) for k, v in a.items())


def test_loss_falls_and_history_is_recorded():
    task = Regression()
    result = Engine(RunSettings(**SETTINGS)).fit(task)
    h = result.history
    assert result.status == "complete" and result.epochs_done == 6
    assert h["val_loss"][-1] < 0.5 * h["val_loss"][0]
    assert len(h["train_loss"]) == 6 and h["lr"][-1] < h["lr"][0]
    assert result.final_metrics["val_loss"] == h["val_loss"][-1]  # nothing monitored: the last state is kept


def test_max_steps_ends_the_run_inside_an_epoch_that_is_still_validated():
    task = Regression()
    steps_per_epoch = len(task.train_plan(0, 0, 1))
    result = Engine(RunSettings(**SETTINGS | {"max_steps": steps_per_epoch + 3})).fit(task)
    assert result.status == "complete" and task.steps == steps_per_epoch + 3 and result.epochs_done == 2
    assert len(result.history["val_loss"]) == 2 and result.history["val_loss"][1] < result.history["val_loss"][0]


@pytest.mark.parametrize("kind", ["adam", "sgd"])
def test_the_optimizer_is_a_setting(kind, monkeypatch):
    import stagekit.train.engine as engine_module

    built = []
    original = engine_module.build_optimizer
    monkeypatch.setattr(engine_module, "build_optimizer", lambda *a: built.append(original(*a)) or built[-1])
    result = Engine(RunSettings(**(SETTINGS | {"optimizer": kind, "lr": 1e-2 if kind == "adam" else 5e-2}))).fit(
        Regression())
    assert result.history["val_loss"][-1] < 0.5 * result.history["val_loss"][0]
    assert [type(o).__name__.lower() for o in built] == [kind]


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
    assert _same(_weights(straight.model), resumed.model.state_dict())
    assert second.history["val_loss"] == reference.history["val_loss"]


def test_non_finite_loss_stops_and_keeps_last_good_state_of_model_and_task():
    task = Regression(nan_at=30)  # during epoch 3
    result = Engine(RunSettings(**SETTINGS)).fit(task)
    assert result.status == "stopped" and "non-finite" in result.message and "training.lr" in result.message
    assert result.epochs_done == 2
    good = from_storable(result.resume_state["model"])
    assert _same(task.model.state_dict(), good)
    assert task.steps == 26  # the task's own state is the end of epoch 2 too, not step 30


def test_a_large_last_good_state_waits_on_disk_and_comes_back_the_same(tmp_path, monkeypatch):
    from stagekit.train import held_state

    in_memory = Engine(RunSettings(**SETTINGS)).fit(Regression())
    monkeypatch.setattr(held_state, "SPILL_BYTES", 0)  # every state counts as large
    made, temporary_file = [], held_state.tempfile.TemporaryFile
    monkeypatch.setattr(held_state.tempfile, "TemporaryFile", lambda **k: made.append(k["dir"]) or temporary_file(**k))
    on_disk = Engine(RunSettings(**SETTINGS), spill_dir=tmp_path).fit(Regression())
    assert len(made) == 7 and set(made) == {tmp_path}  # the state before training and after each of 6 epochs
    assert list(tmp_path.iterdir()) == []  # the held file is unlinked from the start
    a, b = from_storable(in_memory.resume_state), from_storable(on_disk.resume_state)
    assert _same(a["model"], b["model"]) and a["loop"]["history"]["val_loss"] == b["loop"]["history"]["val_loss"]
    assert a["loop"]["epoch"] == b["loop"]["epoch"] == 6
    assert torch.equal(a["optimizer"]["state"][0]["exp_avg_sq"], b["optimizer"]["state"][0]["exp_avg_sq"])

    task = Regression(nan_at=30)  # a stop returns to the state read back from disk
    stopped = Engine(RunSettings(**SETTINGS), spill_dir=tmp_path).fit(task)
    assert stopped.status == "stopped" and stopped.epochs_done == 2 and task.steps == 26
    assert _same(task.model.state_dict(), from_storable(stopped.resume_state["model"]))


def test_a_spilled_state_reads_back_as_to_storable_gives_it(tmp_path):
    from stagekit.train.held_state import HeldState
    from stagekit.train.state import to_storable

    state = {"loop": {"epoch": 3, "history": {"loss": [1.0, 0.5]}},
             "model": {"w": torch.randn(4, 3), "scalar": torch.tensor(2.5), "half": torch.randn(5).bfloat16(),
                       "empty": torch.zeros(0, 7), "strided": torch.arange(12.0).reshape(3, 4).T},
             "task": {"rows": np.arange(6).reshape(2, 3), "names": np.array(["a", None], dtype=object),
                      "flags": np.array([True, False]), "rng": {"seed": 7}}}
    want = to_storable(state)  # a copy
    held = HeldState(tmp_path, spill_bytes=0)
    held.hold(state)
    state["model"]["w"].add_(1.0)  # later training must not change what is held
    state["task"]["rows"][0, 0] = 99
    got = held.get()
    assert list(tmp_path.iterdir()) == [] and held.loop == {"epoch": 3, "history": {"loss": [1.0, 0.5]}}

    def same(a, b):
        if isinstance(a, np.ndarray):
            return a.dtype == b.dtype and a.shape == b.shape and (a == b).all()
        if isinstance(a, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        return a == b

    assert same(got, want)
    held.release()


class Collapsing(Regression):
    """Publishes a number a Guard watches; it leaves its bounds at step 20."""

    def after_optimizer_step(self, model, ctx, values):
        super().after_optimizer_step(model, ctx, values)
        values["share"] = 0.99 if self.steps >= 20 else 0.5


def test_guard_hook_stops_with_the_last_good_state():
    task = Collapsing()
    task.hooks = lambda: [Guard("share", maximum=0.9, at="step", hint="lower training.lr")]
    result = Engine(RunSettings(**SETTINGS)).fit(task)
    assert result.status == "stopped" and result.epochs_done == 1
    assert result.message == "share = 0.99 went above 0.9 at epoch 2, step 20; lower training.lr"
    assert _same(task.model.state_dict(), from_storable(result.resume_state["model"]))
    assert task.steps == 13  # restored with the model


def test_guard_on_validation_metrics_respects_min_epochs():
    task = Regression()
    task.hooks = lambda: [Guard("val_loss", minimum=10.0, at="validation", min_epochs=3)]
    result = Engine(RunSettings(**SETTINGS)).fit(task)
    assert result.status == "stopped" and result.epochs_done == 3 and "val_loss" in result.message


def test_a_hook_can_finish_training_as_a_success():
    class Converging(Regression):
        def after_optimizer_step(self, model, ctx, values):
            super().after_optimizer_step(model, ctx, values)
            if self.steps == 30:
                raise TrainingFinished("converged")

    result = Engine(RunSettings(**SETTINGS)).fit(Converging())
    assert result.status == "complete" and result.epochs_done == 3
    assert len(result.history["val_loss"]) == 3  # the last epoch was completed and validated


def test_early_stopping_keeps_the_best_weights_and_their_metrics():
    task = Regression()
    settings = RunSettings(**(SETTINGS | {"epochs": 40, "lr": 3e-2, "early_stopping_patience": 2}))
    result = Engine(settings).fit(task)
    h = result.history
    best = int(np.argmin(h["val_loss"]))
    assert result.epochs_done < 40 and best < result.epochs_done - 1  # the last epoch was not the best
    assert result.final_metrics["val_loss"] == h["val_loss"][best] and result.final_metrics["epoch"] == best + 1
    # the kept weights give the best epoch's validation loss, not the last one's
    task.model.eval()
    with torch.no_grad():
        x, y = torch.from_numpy(task.X[task.val_idx]), torch.from_numpy(task.y[task.val_idx])
        loss = float(((task.model(x).squeeze(-1) - y) ** 2).mean())
    assert loss == pytest.approx(h["val_loss"][best], rel=1e-5)


class Classifier(Task):
    """Binary classification with per-sample validation outputs scored over the whole set (AUROC, max mode)."""

    monitor, monitor_mode = "auroc", "max"

    def __init__(self):
        torch.manual_seed(0)
        rng = np.random.default_rng(1)
        self.X = rng.normal(size=(600, 6)).astype(np.float32)
        self.y = (self.X[:, 0] + 0.8 * rng.normal(size=600) > 0).astype(np.float32)
        self.model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 1))
        self.train_idx, self.val_idx = split_train_val(600, 0.3, 0)

    def train_plan(self, epoch, rank, world):
        return epoch_plan(self.train_idx, 64, 0, epoch, rank, world)

    def val_plan(self, rank, world):
        return eval_plan(self.val_idx, 50, rank, world)

    def load(self, rows):
        return {"x": torch.from_numpy(self.X[rows]), "y": torch.from_numpy(self.y[rows])}

    def step(self, model, batch, ctx):
        logit = model(batch["x"]).squeeze(-1)
        loss = nn.functional.binary_cross_entropy_with_logits(logit, batch["y"])
        return {"loss": loss, "probability": torch.sigmoid(logit), "target": batch["y"]}

    def val_metrics(self, outputs):
        from stagekit.train.metrics import binary_scores

        return binary_scores(outputs["probability"], outputs["target"])


def test_whole_set_validation_metrics_and_max_mode_top_k():
    from sklearn.metrics import roc_auc_score

    task = Classifier()
    result = Engine(RunSettings(epochs=8, lr=5e-2, save_top_k=3)).fit(task)
    h = result.history
    assert h["val_auroc"][-1] > 0.75  # learned, scored over the whole validation set
    assert {"val_f1", "val_positive_share", "val_mean_probability"} <= set(h)
    ranked = sorted(range(8), key=lambda e: -h["val_auroc"][e])[:3]
    assert [s["epoch"] for s in result.top_k] == [e + 1 for e in ranked]
    assert [s["name"] for s in result.top_k] == ["top1", "top2", "top3"]
    assert result.top_k[0]["metric"] == "val_auroc" and result.final_metrics["val_auroc"] == max(h["val_auroc"])
    with torch.no_grad():  # the kept weights are the best state: recompute its AUROC
        score = task.model(torch.from_numpy(task.X[task.val_idx])).squeeze(-1).numpy()
    assert roc_auc_score(task.y[task.val_idx], score) == pytest.approx(max(h["val_auroc"]), abs=1e-6)


class TwoPhase(Regression):
    """Phase 1 trains only the head (the first layer frozen); phase 2 also unfreezes the first layer at a lower,
    layer-decayed lr."""

    def phases(self):
        return [Phase("head", epochs=3, freeze=FreezePlan(frozen=("0",))),
                Phase("all", epochs=3, lr=1e-2, freeze=FreezePlan(trainable=("0",),
                                                                  lr_scales=layer_decay_scales(["0", "4"], 0.5)))]


def test_phases_freeze_bit_identically_and_rebuild_the_optimizer():
    task = TwoPhase()
    before = task.model[0].weight.detach().clone()
    settings = RunSettings(**SETTINGS)

    class Probe(Regression):  # stop after phase 1 to look at the weights there
        phases = TwoPhase.phases

    probe = Probe()
    probe.phases = lambda: TwoPhase.phases(probe)[:1]
    Engine(settings).fit(probe)
    assert torch.equal(probe.model[0].weight, before) and torch.equal(probe.model[0].bias, task.model[0].bias)
    assert not torch.equal(probe.model[4].weight, task.model[4].weight)

    result = Engine(settings).fit(task)
    h = result.history
    assert h["phase"] == [0, 0, 0, 1, 1, 1] and not torch.equal(task.model[0].weight, before)
    assert np.isnan(h["lr_0"][0]) and h["lr_0"][3] == pytest.approx(0.5 * h["lr_4"][3])  # per-group lr, phase 2
    assert h["lr"][3] <= 1e-2 and h["lr"][0] > 1e-2 * 0.5  # phase 2 has its own peak lr and schedule


def test_resume_in_the_middle_of_phase_two_equals_an_uninterrupted_run():
    straight = TwoPhase()
    reference = Engine(RunSettings(**SETTINGS)).fit(straight)
    interrupted = TwoPhase(interrupt_at=13 * 4 + 5)  # epoch 5 = phase 2, mid-epoch
    first = Engine(RunSettings(**SETTINGS)).fit(interrupted)
    assert first.status == "interrupted" and first.resume_state["loop"]["phase"] == 1
    resumed = TwoPhase()
    torch.manual_seed(7)
    second = Engine(RunSettings(**SETTINGS)).fit(resumed, resume=first.resume_state)
    assert second.status == "complete" and _same(_weights(straight.model), resumed.model.state_dict())
    assert second.history["val_loss"] == reference.history["val_loss"]


def test_a_parameter_the_plan_does_not_mention_keeps_its_state():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2))
    model[1].weight.requires_grad_(False)  # frozen by hand
    FreezePlan(frozen=("0",)).apply(model)
    assert not model[0].weight.requires_grad and not model[1].weight.requires_grad and model[2].weight.requires_grad
    FreezePlan(frozen=("0",), trainable=("0.bias",)).apply(model)  # the longer prefix wins
    assert model[0].bias.requires_grad and not model[0].weight.requires_grad


def test_ema_hook_averages_and_resumes_exactly():
    def task_with_ema(**kwargs):
        task = Regression(**kwargs)
        ema = EMA(task.model, decay=0.9)
        task.hooks = lambda: [ema]
        return task, ema

    task, ema = task_with_ema()
    start = _weights(ema.teacher)
    Engine(RunSettings(**SETTINGS)).fit(task)
    assert ema.updates == 13 * 6 and not _same(start, ema.teacher.state_dict())
    assert not _same(ema.teacher.state_dict(), task.model.state_dict())  # an average, not a copy
    assert all(not p.requires_grad for p in ema.teacher.parameters())

    first_task, _ = task_with_ema(interrupt_at=20)
    first = Engine(RunSettings(**SETTINGS)).fit(first_task)
    resumed, resumed_ema = task_with_ema()
    Engine(RunSettings(**SETTINGS)).fit(resumed, resume=first.resume_state)
    assert _same(ema.teacher.state_dict(), resumed_ema.teacher.state_dict())


def test_ema_update_rule():
    model = nn.Linear(2, 1)
    ema = EMA(model, decay=0.5)
    teacher0 = ema.teacher.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    values = {}
    ema.after_optimizer_step(model, None, values)  # first update: decay min(0.5, 0) = 0, a copy
    assert torch.equal(ema.teacher.weight, model.weight) and values["ema_decay"] == 0.0
    with torch.no_grad():
        model.weight.add_(2.0)
    ema.after_optimizer_step(model, None, values)  # decay min(0.5, 1/2) = 0.5
    assert torch.allclose(ema.teacher.weight, teacher0 + 1.0 + 1.0)


def test_workers_load_ahead_with_the_same_result():
    a = Regression()  # each built just before its run: the task seeds the RNG that dropout draws from
    Engine(RunSettings(**SETTINGS | {"epochs": 2})).fit(a)
    b = Regression()
    Engine(RunSettings(**SETTINGS | {"epochs": 2, "num_workers": 2})).fit(b)
    assert _same(a.model.state_dict(), b.model.state_dict())


def test_hetero_graph_batches():
    """PyG HeteroData tiles batched with Batch.from_data_list: moved to the device, counted as graphs."""
    from torch_geometric.data import Batch, HeteroData
    from torch_geometric.nn import to_hetero

    rng = np.random.default_rng(0)

    def tile(i):
        data = HeteroData()
        n_tx, n_bd = 30, 4
        owner = rng.integers(0, n_bd, n_tx)
        data["bd"].x = torch.from_numpy(rng.normal(size=(n_bd, 3)).astype(np.float32))
        data["tx"].x = data["bd"].x[owner] + 0.3 * torch.randn(n_tx, 3)
        src = torch.arange(n_tx).repeat_interleave(n_bd)
        dst = torch.arange(n_bd).repeat(n_tx)
        data["tx", "near", "bd"].edge_index = torch.stack([src, dst])
        data["bd", "rev_near", "tx"].edge_index = torch.stack([dst, src])
        data["tx", "near", "bd"].label = torch.from_numpy(owner).repeat_interleave(n_bd).eq(dst).float()
        return data

    class Linker(Task):
        monitor, monitor_mode = "auroc", "max"

        def __init__(self):
            torch.manual_seed(0)
            self.tiles = [tile(i) for i in range(12)]
            self.model = to_hetero(_Encoder(), (["tx", "bd"], [("tx", "near", "bd"), ("bd", "rev_near", "tx")]))

        def train_plan(self, epoch, rank, world):
            order = np.random.default_rng(epoch).permutation(8)
            return [order[i:i + 4] for i in range(0, 8, 4)]

        def val_plan(self, rank, world):
            return [np.arange(8, 12)]

        def load(self, ids):
            return Batch.from_data_list([self.tiles[i] for i in ids])

        def step(self, model, batch, ctx):
            h = model(batch.x_dict, batch.edge_index_dict)
            src, dst = batch["tx", "near", "bd"].edge_index
            logit = (h["tx"][src] * h["bd"][dst]).sum(-1)
            label = batch["tx", "near", "bd"].label
            loss = nn.functional.binary_cross_entropy_with_logits(logit, label)
            return {"loss": loss, "probability": torch.sigmoid(logit), "target": label}

        def val_metrics(self, outputs):
            from stagekit.train.metrics import binary_scores

            return binary_scores(outputs["probability"], outputs["target"])

    task = Linker()
    assert task.batch_size_of(task.load([0, 1, 2])) == 3
    result = Engine(RunSettings(epochs=15, lr=1e-2, save_top_k=1)).fit(task)
    h = result.history
    assert h["val_auroc"][-1] > 0.8 and result.final_metrics["val_auroc"] == max(h["val_auroc"])


class _Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        from torch_geometric.nn import SAGEConv

        self.conv = SAGEConv((3, 3), 8)

    def forward(self, x, edge_index):
        return self.conv(x, edge_index)


def test_param_groups_no_decay_declared_and_freeze_plan():
    class WithToken(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Embedding(3, 4), nn.Linear(4, 2))
            self.token = nn.Parameter(torch.zeros(2, 4))

        def no_weight_decay(self):
            return {"token"}

    model = WithToken()
    groups = param_groups(model, lr=1e-3, weight_decay=0.1, plan=FreezePlan(frozen=("body.0",),
                                                                            lr_scales={"body.3": 0.5}))
    assert not model.body[0].weight.requires_grad
    decayed = [p for g in groups if g["weight_decay"] > 0 for p in g["params"]]
    assert decayed == [model.body[3].weight]  # biases, norms, embeddings and declared names never decay
    assert {g["lr"] for g in groups} == {1e-3, 5e-4} and {g["name"] for g in groups} == {"base", "body.3"}


def test_layer_decay_follows_timm():
    assert layer_decay_scales(["embed", "blocks.0", "blocks.1", "head"], 0.5) == {
        "embed": 0.125, "blocks.0": 0.25, "blocks.1": 0.5, "head": 1.0}


def test_lr_schedule_warmup_then_cosine_to_min():
    f = lr_lambda("cosine", total_steps=100, warmup_ratio=0.1, min_lr_ratio=0.2)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(100) == pytest.approx(0.2) and f(55) == pytest.approx(0.6)
    assert lr_lambda("constant", 100, 0.0, 0.0)(50) == 1.0
    assert lr_lambda("constant", 100, 0.1, 0.0)(4) == pytest.approx(0.5)  # warm-up applies to constant too


def test_stopped_task_raising_directly_keeps_last_good_state():
    class Stopping(Regression):
        def after_optimizer_step(self, model, ctx, values):
            super().after_optimizer_step(model, ctx, values)
            if self.steps == 20:
                raise TrainingStopped("clusters collapsed")

    task = Stopping()
    result = Engine(RunSettings(**SETTINGS)).fit(task)
    assert result.status == "stopped" and result.message == "clusters collapsed" and result.epochs_done == 1
    assert _same(task.model.state_dict(), from_storable(result.resume_state["model"])) and task.steps == 13


def test_finish_from_epoch_end_completes_and_later_hooks_still_run():
    class FinishAtEpochTwo(Regression):
        def on_epoch_end(self, model, ctx, row):
            if ctx.epoch == 1:
                raise TrainingFinished("enough")

    task = FinishAtEpochTwo()
    ema = EMA(task.model)
    task.hooks = lambda: [ema]
    result = Engine(RunSettings(**SETTINGS)).fit(task)
    assert result.status == "complete" and result.epochs_done == 2

    class FinishAtStep(Regression):
        def after_optimizer_step(self, model, ctx, values):
            super().after_optimizer_step(model, ctx, values)
            if self.steps == 5:
                raise TrainingFinished("converged")

    task = FinishAtStep()
    ema = EMA(task.model)
    task.hooks = lambda: [ema]
    result = Engine(RunSettings(**SETTINGS)).fit(task)
    assert ema.updates == 5  # the hook after the finishing one still took that step
    assert result.epochs_done == 1 and len(result.history["val_loss"]) == 1  # the cut epoch was validated


def test_numpy_hook_state_is_snapshotted_not_shared():
    class Counter(Regression):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.seen = np.zeros(1)

        def after_optimizer_step(self, model, ctx, values):
            super().after_optimizer_step(model, ctx, values)
            self.seen += 1  # in place

        def state_dict(self):
            return super().state_dict() | {"seen": self.seen}

        def load_state_dict(self, state):
            super().load_state_dict(state)
            self.seen = np.array(state["seen"])

    task = Counter(nan_at=30)
    Engine(RunSettings(**SETTINGS)).fit(task)
    assert task.steps == 26 and task.seen[0] == 26


def test_a_monitored_metric_the_phase_lacks_is_a_user_error():
    from stagekit.errors import UserError

    task = Classifier()
    task.val_plan = lambda rank, world: []
    with pytest.raises(UserError, match="monitored metric 'auroc'"):
        Engine(RunSettings(epochs=2, save_top_k=1)).fit(task)


def test_resuming_a_run_with_nothing_left_returns_its_state():
    first = Engine(RunSettings(**SETTINGS)).fit(Regression(interrupt_at=13 * 4 + 2))
    assert first.status == "interrupted"
    again = Engine(RunSettings(**SETTINGS | {"epochs": 3})).fit(Regression(), resume=first.resume_state)
    assert again.status == "complete" and again.epochs_done == 4


def test_early_stopping_ends_a_phase_not_the_run():
    class Plateau(TwoPhase):
        def phases(self):
            return [Phase("head", epochs=8, freeze=FreezePlan(frozen=("0",)), lr=1e-4),
                    Phase("all", epochs=3, freeze=FreezePlan(trainable=("0",)))]

        def step(self, model, batch, ctx):
            out = super().step(model, batch, ctx)
            flat = ctx.phase == "head" and not ctx.train  # phase 1 validates at a constant, high loss
            return out | ({"loss": torch.tensor(1e3)} if flat else {})

    result = Engine(RunSettings(**SETTINGS | {"early_stopping_patience": 2})).fit(Plateau())
    phases = result.history["phase"]
    assert phases.count(0) == 3 and phases.count(1) == 3  # phase 1 stopped after 1 + 2 flat epochs


def test_phase_log_records_group_tables_and_frozen_checksums():
    """Each phase entered leaves its parameter-group table and the sha256 of its frozen tensors at start and end;
    a resumed run keeps the first entry's record and still closes it."""
    from stagekit.bundle.records import frozen_check

    task = TwoPhase()
    result = Engine(RunSettings(**SETTINGS)).fit(task)
    head, everything = result.phases
    assert (head["name"], everything["name"]) == ("head", "all")
    assert set(head["frozen_before"]) == {"0.weight", "0.bias"} and head["frozen_after"] == head["frozen_before"]
    assert "bit-identical" in frozen_check(head) and everything["frozen_before"] == {}
    rows = {r["group"]: r for r in head["groups"]}
    assert rows["frozen"]["total"] == 8 * 32 + 32 and rows["frozen"]["modules"] == "0"
    assert rows["base"]["trainable"] == sum(p.numel() for p in task.model.parameters()) - rows["frozen"]["total"]
    rows = {r["group"]: r for r in everything["groups"]}
    assert rows["0"]["lr"] == pytest.approx(0.5 * rows["4"]["lr"]) and "frozen" not in rows
    # a frozen tensor that changes is named
    tampered = dict(head, frozen_after=dict(head["frozen_after"], **{"0.bias": "0" * 64}))
    assert "1 of 2 frozen tensors CHANGED: 0.bias" in frozen_check(tampered)

    interrupted = TwoPhase(interrupt_at=13 * 4 + 5)  # in phase 2
    first = Engine(RunSettings(**SETTINGS)).fit(interrupted)
    resumed = Engine(RunSettings(**SETTINGS)).fit(TwoPhase(), resume=first.resume_state)
    assert [p["name"] for p in resumed.phases] == ["head", "all"]
    assert resumed.phases[0]["frozen_after"] == head["frozen_after"]


def test_load_by_name_regrows_an_input_axis_and_reports_every_kind():
    from stagekit.train.transfer import Regrow, load_by_name

    torch.manual_seed(0)
    old = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    weights = {k: v.numpy().copy() for k, v in old.state_dict().items()} | {"extra": np.zeros(2, np.float32)}
    new = nn.Sequential(nn.Linear(5, 4), nn.Linear(4, 2), nn.Linear(2, 2))  # two new inputs, one new layer
    before = new[0].weight.detach().clone()
    report = load_by_name(new, weights, new=("2",), regrow={"0.weight": Regrow(1, np.array([0, 1, 2, -1, -1]),
                                                                              ["a", "b", "c", "d", "e"])})
    assert torch.equal(new[0].weight[:, :3], old[0].weight) and torch.equal(new[0].weight[:, 3:], before[:, 3:])
    assert report.new == ["0.weight[d]", "0.weight[e]", "2.weight", "2.bias"]
    assert report.unexpected == ["extra"] and report.partial == ["extra"]
    report = load_by_name(nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 3)), weights)
    assert report.mismatched == ["1.weight", "1.bias"] and not report.missing
    report = load_by_name(nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2), nn.Linear(2, 2)), weights)
    assert report.missing == ["2.weight", "2.bias"] and report.partial == ["2.weight", "2.bias", "extra"]


class SplitRegression(Regression):
    """Regression without dropout (the same arithmetic either way) whose batches split into micro-batches."""

    def __init__(self):
        super().__init__()
        self.model = nn.Sequential(nn.Linear(8, 32), nn.LayerNorm(32), nn.ReLU(), nn.Linear(32, 1))
        self.parts_seen = 0

    def micro_batches(self, batch, size):
        n = len(batch["x"])
        return [{"x": batch["x"][i:i + size], "y": batch["y"][i:i + size], "share": len(batch["x"][i:i + size]) / n}
                for i in range(0, n, size)]

    def step(self, model, batch, ctx):
        self.parts_seen += ctx.train
        return {"loss": super().step(model, batch, ctx)["loss"] * batch.get("share", 1.0)}


def test_micro_batches_accumulate_to_the_whole_batch_step():
    whole, parts = SplitRegression(), SplitRegression()
    first = Engine(RunSettings(**SETTINGS)).fit(whole)
    second = Engine(RunSettings(**SETTINGS, micro_batch_size=10)).fit(parts)
    # 13 steps an epoch: twelve of 32 rows (parts of 10, 10, 10, 2) and one of 25 (10, 10, 5)
    assert whole.parts_seen == 6 * 13 and parts.parts_seen == 6 * (12 * 4 + 3)
    for name, value in _weights(whole.model).items():
        assert torch.allclose(value, _weights(parts.model)[name], atol=1e-5), name
    assert np.allclose(first.history["train_loss"], second.history["train_loss"], rtol=1e-5)


def test_micro_batches_need_a_task_that_splits():
    with pytest.raises(UserError, match="micro_batch_size"):
        Engine(RunSettings(**SETTINGS, micro_batch_size=10)).fit(Regression())


def test_progress_names_what_the_task_counts(capsys):
    """The progress line's rate is in the unit the task's batch_size_of counts (cells by default)."""
    from stagekit.train.progress import ProgressReporter

    class Links(Regression):
        batch_unit = "links"

    for task, unit in ((Regression(), "cells/s"), (Links(), "links/s")):
        Engine(RunSettings(**(SETTINGS | {"epochs": 1})), reporter=ProgressReporter(interval_s=0.0)).fit(task)
        lines = [line for line in capsys.readouterr().err.splitlines() if " step " in line]
        assert lines and all(line.endswith(unit) for line in lines)
