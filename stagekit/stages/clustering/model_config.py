"""The VAE's description in a bundle: its architecture and objective, and the data keys it reads."""

from __future__ import annotations

from dataclasses import dataclass

from stagekit.bundle.model_config import ModelConfig
from stagekit.models.vae import VAE


@dataclass(frozen=True)
class VAEArchitecture:
    n_hidden: list[int]
    n_latent: int
    dropout: float
    likelihood: str
    standardize: bool
    variational: bool
    beta: float
    kl_warmup_epochs: int
    input_dropout: float = 0.0


@dataclass(frozen=True)
class VAEData:
    layer: str
    batch_key: str
    label_key: str
    backed: bool
    n_top_genes: int = 0  # 0: every gene of the file; else the bundle's var_names are the selection


@dataclass(frozen=True)
class VAEConfig(ModelConfig):
    model: VAEArchitecture
    data: VAEData

    def build(self, n_genes: int, n_batches: int) -> VAE:
        """An untrained VAE over `n_genes`, conditioned on `n_batches` batches (0: none)."""
        m = self.model
        return VAE(n_genes, m.n_latent, m.n_hidden, m.dropout, n_batches=n_batches, likelihood=m.likelihood,
                   variational=m.variational, input_dropout=m.input_dropout)
