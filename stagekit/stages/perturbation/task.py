"""Training the transition model on the engine: each step predicts `training.batch_size` perturbed cell sets from
their paired control sets and scores them with a set distance in the embedding (and, with a decoder, gene) space.

The optimised `loss` is logged beside its two parts (`embedding_loss`, `gene_loss`); validation also scores
predicting no change (`control_distance`), the baseline the model must beat."""

from __future__ import annotations

import numpy as np
import torch

from stagekit.data.cell_sets import CellGroups, CellSet, epoch_sets
from stagekit.losses.sets import set_distance
from stagekit.models.transition import TransitionModel
from stagekit.stages.perturbation.space import SpaceGenes
from stagekit.train import StepContext, Task
from stagekit.train.phases import Phase

VAL_EPOCH = 1_000_003  # validation sets are drawn once, from a seed no training epoch uses


class TransitionTask(Task):
    def __init__(self, model: TransitionModel, embedding: np.ndarray, genes: SpaceGenes | None,
                 pert_inputs: np.ndarray, train: CellGroups, val: CellGroups | None, set_len: int,
                 sets_per_step: int, loss: dict, seed: int, phases: list[Phase] | None = None) -> None:
        self.model, self.embedding, self.genes = model, embedding, genes
        self._phases = phases
        self.pert_inputs = torch.from_numpy(pert_inputs)
        self.train_groups, self.val_groups = train, val
        self.set_len, self.sets_per_step, self.seed = set_len, sets_per_step, seed
        self.kind, self.blur, self.decoder_weight = loss["kind"], loss["blur"], loss["decoder_weight"]

    def phases(self) -> list[Phase]:
        """Fine-tuning phases (frozen backbone, progressive unfreezing) when given, else one plain phase."""
        return self._phases or super().phases()

    def _steps(self, groups: CellGroups, epoch: int, rank: int, world: int) -> list[list[CellSet]]:
        steps = epoch_sets(groups, self.set_len, self.sets_per_step, self.seed, epoch)  # global steps
        steps = [s for s in steps if len(s) >= world]  # every process takes the same steps, each with a set
        return [s[rank::world] for s in steps]

    def train_plan(self, epoch: int, rank: int, world: int) -> list[list[CellSet]]:
        return self._steps(self.train_groups, epoch, rank, world)

    def val_plan(self, rank: int, world: int) -> list[list[CellSet]]:
        return self._steps(self.val_groups, VAL_EPOCH, rank, world) if self.val_groups else []

    def load(self, sets: list[CellSet]) -> dict[str, torch.Tensor]:
        perturbed = np.stack([s.perturbed for s in sets])
        controls = np.stack([s.controls for s in sets])
        batch = {"basal": torch.from_numpy(self.embedding[controls]),
                 "observed": torch.from_numpy(self.embedding[perturbed]),
                 "pert": self.pert_inputs[[s.pert for s in sets]]}
        if self.genes is not None and self.decoder_weight > 0:
            for key, cells in (("observed_genes", perturbed), ("basal_genes", controls)):
                rows = self.genes.rows(cells.ravel())
                batch[key] = torch.from_numpy(rows.reshape(*cells.shape, -1))
        return batch

    def batch_size_of(self, batch: dict[str, torch.Tensor]) -> int:
        """Perturbed cells in the step (sets x set length): the history's cells_per_s counts cells."""
        return batch["observed"].shape[0] * batch["observed"].shape[1]

    def step(self, model: TransitionModel, batch: dict[str, torch.Tensor], ctx: StepContext
             ) -> dict[str, torch.Tensor]:
        predicted = model(batch["basal"], batch["pert"], batch.get("basal_genes"))
        embedding_loss = set_distance(predicted["embedding"], batch["observed"], self.kind, self.blur).mean()
        out = {"embedding_loss": embedding_loss}
        loss = embedding_loss
        if "observed_genes" in batch:
            gene_loss = set_distance(predicted["genes"], batch["observed_genes"], self.kind, self.blur).mean()
            loss = loss + self.decoder_weight * gene_loss
            out["gene_loss"] = gene_loss
        if not ctx.train:
            out["control_distance"] = set_distance(batch["basal"], batch["observed"], self.kind, self.blur).mean()
        return {"loss": loss} | out
