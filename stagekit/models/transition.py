"""The STATE-style transition model: a set of control cells and a perturbation in, the perturbed set out.

Basal encoder (MLP on each control cell's embedding) + perturbation encoder (MLP on a one-hot or a feature
vector), summed per cell; a bidirectional transformer over the set (torch's TransformerEncoderLayer blocks, an
ordered list from bottom to top so fine-tuning can freeze and unfreeze them by index); `project_out` back to the
embedding, plus the basal input when `predict_residual`; an optional gene decoder (embedding -> genes). With
`predict_residual` and the control cells' genes given, the genes are predicted as a change too: the control cell's
genes plus decoder(predicted) - decoder(control), so each predicted cell keeps the gene-level variation of the
cell it starts from (what the embedding does not hold) instead of the decoder's smooth average.
"""

from __future__ import annotations

import torch
from torch import nn


def _mlp(n_in: int, n_hidden: int, n_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, n_hidden), nn.LayerNorm(n_hidden), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(n_hidden, n_out))


class TransitionModel(nn.Module):
    def __init__(self, n_embedding: int, n_pert_inputs: int, hidden: int = 128, n_layers: int = 4, n_heads: int = 4,
                 dropout: float = 0.1, n_genes: int = 0, predict_residual: bool = True, block_dropout: float = 0.0
                 ) -> None:
        super().__init__()
        self.predict_residual = predict_residual
        self.basal_encoder = _mlp(n_embedding, hidden, hidden, dropout)
        self.pert_encoder = _mlp(n_pert_inputs, hidden, hidden, dropout)
        self.blocks = nn.ModuleList([
            nn.TransformerEncoderLayer(hidden, n_heads, 4 * hidden, block_dropout, activation="gelu",
                                       batch_first=True, norm_first=True)
            for _ in range(n_layers)])
        self.norm = nn.LayerNorm(hidden)
        self.project_out = _mlp(hidden, hidden, n_embedding, dropout)
        self.gene_decoder = _mlp(n_embedding, 2 * hidden, n_genes, dropout) if n_genes else None

    def forward(self, basal: torch.Tensor, pert: torch.Tensor, basal_genes: torch.Tensor | None = None
                ) -> dict[str, torch.Tensor]:
        """`basal`: (sets, cells, embedding) control cells; `pert`: (sets, perturbation inputs); `basal_genes`:
        (sets, cells, genes) of the same control cells, optional. Returns the predicted perturbed cells' embedding
        (sets, cells, embedding) and, with a decoder, genes."""
        h = self.basal_encoder(basal) + self.pert_encoder(pert)[:, None, :]
        for block in self.blocks:  # every cell attends to every cell of its set, both ways
            h = block(h)
        out = self.project_out(self.norm(h))
        if self.predict_residual:
            out = out + basal
        result = {"embedding": out}
        if self.gene_decoder is not None:
            result["genes"] = self.gene_decoder(out)
            if self.predict_residual and basal_genes is not None:
                result["genes"] = basal_genes + result["genes"] - self.gene_decoder(basal)
        return result
