"""The SATURN model's description in a bundle: its architecture, the data keys it read and its species."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stagekit.bundle.model_config import ModelConfig
from stagekit.models.saturn import SaturnModel


@dataclass(frozen=True)
class SaturnArchitecture:
    n_macrogenes: int
    kmeans_seeding_dims: int
    n_hidden: int
    n_embed: int
    dropout: float
    scoring: str
    condition_on_species: bool
    lambda_l1: float
    lambda_pe: float


@dataclass(frozen=True)
class SpeciesFiles:
    layer: str
    species_key: str
    label_key: str
    hv_genes: int
    min_matched_genes: int
    backed: bool = False


@dataclass(frozen=True)
class Species:
    names: list[str]
    genes: list[int]  # genes kept per species, in the order of `names`


@dataclass(frozen=True)
class SaturnConfig(ModelConfig):
    model: SaturnArchitecture
    data: SpeciesFiles
    species: Species

    def build(self, log_weights: torch.Tensor | None = None, protein: torch.Tensor | None = None) -> SaturnModel:
        """A model over the species' genes; without `log_weights` (genes x macrogenes, from the protein
        embeddings' macrogenes) they start at zero, for weights loaded from a bundle."""
        m, genes = self.model, self.species.genes
        if log_weights is None:
            log_weights = torch.zeros(sum(genes), m.n_macrogenes)
        return SaturnModel(genes, log_weights, m.n_hidden, m.n_embed, m.dropout, m.condition_on_species,
                           protein=protein)
