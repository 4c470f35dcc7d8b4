"""The transition model's description in a bundle: its shape, and the screen design it reads."""

from __future__ import annotations

from dataclasses import dataclass

from stagekit.bundle.model_config import ModelConfig
from stagekit.models.transition import TransitionModel


@dataclass(frozen=True)
class TransitionArchitecture:
    hidden: int
    n_layers: int
    n_heads: int
    dropout: float
    block_dropout: float
    predict_residual: bool
    n_embedding: int  # the expression space's dimension
    n_pert_inputs: int  # one-hot width or perturbation-feature dimension
    n_genes: int  # outputs of the gene decoder; 0: none


@dataclass(frozen=True)
class TransitionData:
    layer: str
    pert_key: str
    control: str
    context_key: str
    batch_key: str
    # the target screen of a fine-tuned model; a pretrained one keeps them in its config
    exclude: list[str] | None = None
    test_fraction: float | None = None
    embed_key: str = ""  # obsm key of the embedding the model works in; "": PCA of the genes


@dataclass(frozen=True)
class TransitionConfig(ModelConfig):
    model: TransitionArchitecture
    data: TransitionData

    def build(self) -> TransitionModel:
        m = self.model
        return TransitionModel(n_embedding=m.n_embedding, n_pert_inputs=m.n_pert_inputs, hidden=m.hidden,
                               n_layers=m.n_layers, n_heads=m.n_heads, dropout=m.dropout, n_genes=m.n_genes,
                               predict_residual=m.predict_residual, block_dropout=m.block_dropout)
