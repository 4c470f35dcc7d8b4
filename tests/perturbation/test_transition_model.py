"""The transition model and set distances, groundwork of the perturbation pipeline: shapes, the blocks a
fine-tuning phase addresses, distances that behave like distances, and learning a perturbation on the engine."""

import numpy as np
import pytest
import torch
from torch import nn

from stagekit.losses.sets import set_distance
from stagekit.models.transition import TransitionModel
from stagekit.train import Engine, RunSettings, StepContext, Task


def test_shapes_blocks_and_residual():
    model = TransitionModel(n_embedding=10, n_pert_inputs=3, hidden=16, n_layers=3, n_heads=2, n_genes=40).eval()
    basal, pert = torch.randn(5, 8, 10), torch.eye(3)[[0, 1, 2, 0, 1]]
    out = model(basal, pert)
    assert out["embedding"].shape == (5, 8, 10) and out["genes"].shape == (5, 8, 40)
    assert isinstance(model.blocks, nn.ModuleList) and len(model.blocks) == 3  # bottom -> top, by index
    assert all(isinstance(b, nn.TransformerEncoderLayer) for b in model.blocks)
    for p in model.project_out.parameters():  # with project_out at zero the prediction is the basal input
        nn.init.zeros_(p)
    assert torch.allclose(model(basal, pert)["embedding"], basal)
    basal_genes = torch.rand(5, 8, 40)  # genes predicted as a change too: none here, so the control's own genes
    assert torch.allclose(model(basal, pert, basal_genes)["genes"], basal_genes, atol=1e-6)
    permuted = basal[:, torch.randperm(8)]  # no positional encoding: a set, not a sequence
    a, b = model(basal, pert)["genes"].sort(1).values, model(permuted, pert)["genes"].sort(1).values
    assert torch.allclose(a, b, atol=1e-5)


def test_set_distances():
    torch.manual_seed(0)
    x = torch.randn(2, 64, 5)
    shuffled = x[:, torch.randperm(64)]
    for kind in ("energy", "sinkhorn"):
        assert set_distance(x, shuffled, kind).abs().max() < 1e-4  # the same set in another order
        assert (set_distance(x, x + 1.0, kind) > 0.1).all()
        assert set_distance(x, x + 2.0, kind)[0] > set_distance(x, x + 1.0, kind)[0]
    assert (set_distance(x, shuffled, "mse") > 0.5).all()  # mse compares cell by cell
    with pytest.raises(ValueError, match="energy, sinkhorn, mse"):
        set_distance(x, x, "mmd")


class ShiftTask(Task):
    """Synthetic screen: perturbation k moves cells by its own vector and narrows them; sets of control and
    perturbed cells are sampled anew every step (seeded by epoch and step)."""

    def __init__(self, n_perts=3, dim=6, set_len=32):
        torch.manual_seed(0)
        rng = np.random.default_rng(0)
        self.shift = rng.normal(0, 1.5, (n_perts, dim)).astype(np.float32)
        self.n_perts, self.dim, self.set_len = n_perts, dim, set_len
        self.model = TransitionModel(dim, n_perts, hidden=32, n_layers=2, n_heads=2, dropout=0.0)

    def sample(self, seed):
        rng = np.random.default_rng(seed)
        perts = rng.integers(0, self.n_perts, 8)
        basal = rng.normal(size=(8, self.set_len, self.dim)).astype(np.float32)
        observed = (0.5 * rng.normal(size=basal.shape) + self.shift[perts][:, None]).astype(np.float32)
        return {"basal": torch.from_numpy(basal), "pert": torch.eye(self.n_perts)[perts],
                "observed": torch.from_numpy(observed)}

    def train_plan(self, epoch, rank, world):
        return [(epoch, step) for step in range(10)]

    def val_plan(self, rank, world):
        return [(10_000, 0)]  # one fixed validation batch, never a training seed

    def load(self, item):
        return self.sample(list(item))

    def batch_size_of(self, batch):
        return len(batch["pert"])

    def step(self, model, batch, ctx: StepContext):
        predicted = model(batch["basal"], batch["pert"])["embedding"]
        loss = set_distance(predicted, batch["observed"]).mean()
        return {"loss": loss, "control_baseline": set_distance(batch["basal"], batch["observed"]).mean()}


def test_learns_a_perturbation_on_the_engine():
    task = ShiftTask()
    result = Engine(RunSettings(epochs=12, lr=3e-3)).fit(task)
    h = result.history
    assert h["val_loss"][-1] < 0.5 * h["val_loss"][0]
    assert h["val_loss"][-1] < 0.1 * h["val_control_baseline"][-1]  # far closer than predicting no change
