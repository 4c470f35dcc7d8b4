"""SATURN-style conditional autoencoder: genes -> macrogenes -> embedding -> genes, one gene vocabulary per
species joined through shared macrogenes (Rosen et al. 2024), with the reference's known defects fixed:
macrogene dropout only in training (eval() turns it off), the decoder conditioned on the true species, and
each species' mean computed over its own genes only (no zero-padded union).

`pretrain --preset saturn` trains it; `align` fine-tunes its encoder half (SaturnMetric).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F

from stagekit.losses.counts import count_nll
from stagekit.losses.saturn import embedding_similarity_loss, weight_l1
from stagekit.models.blocks import Dropout, mlp


class SaturnModel(nn.Module):
    def __init__(self, genes_per_species: list[int], log_weights: torch.Tensor, n_hidden: int = 256,
                 n_embed: int = 256, dropout: float = 0.1, condition_on_species: bool = True,
                 protein: torch.Tensor | None = None) -> None:
        super().__init__()
        if log_weights.shape[0] != sum(genes_per_species):
            raise ValueError("log_weights needs one row per gene of every species, stacked in species order")
        n_macro = log_weights.shape[1]
        self.n_species = len(genes_per_species)
        self.condition_on_species = condition_on_species
        self.register_buffer("offsets", torch.tensor([0, *genes_per_species]).cumsum(0), persistent=False)
        self.log_weights = nn.Parameter(log_weights.clone().float())  # W = exp(.) > 0, genes x macrogenes
        self.macro_norm = nn.LayerNorm(n_macro)
        self.macro_dropout = Dropout(dropout)
        self.encoder = nn.Sequential(mlp([n_macro, n_hidden], dropout), nn.Linear(n_hidden, n_embed))
        n_condition = self.n_species if condition_on_species else 0
        self.decoder = nn.Sequential(mlp([n_embed + n_condition, n_hidden], 0.0), nn.Linear(n_hidden, n_macro))
        self.log_theta = nn.ParameterList([nn.Parameter(torch.zeros(g)) for g in genes_per_species])
        self.zi_heads = nn.ModuleList([nn.Linear(n_macro, g) for g in genes_per_species])
        # protein embeddings of the stacked genes, for the similarity loss; not part of the saved weights
        self.register_buffer("protein", protein, persistent=False)

    def weights(self, species: int, all_weights: torch.Tensor | None = None) -> torch.Tensor:
        """W_s: this species' genes x macrogenes; its rows of `all_weights` (= exp(log_weights), taken once per
        step by forward) when given."""
        rows = slice(self.offsets[species], self.offsets[species + 1])
        return self.log_weights[rows].exp() if all_weights is None else all_weights[rows]

    def gene_products(self, x: torch.Tensor, species: int, all_weights: torch.Tensor | None = None
                      ) -> torch.Tensor:
        """log1p(x) W_s: the gene layer, before the macrogenes' LayerNorm."""
        return torch.log1p(x) @ self.weights(species, all_weights)

    def values_of_products(self, products: torch.Tensor) -> torch.Tensor:
        """ReLU(LayerNorm(.)) of gene_products."""
        return F.relu(self.macro_norm(products))

    def macrogene_values(self, x: torch.Tensor, species: int, all_weights: torch.Tensor | None = None
                         ) -> torch.Tensor:
        """ReLU(LayerNorm(log1p(x) W_s)): macrogene expression without dropout, comparable across species."""
        return self.values_of_products(self.gene_products(x, species, all_weights))

    def macrogenes(self, x: torch.Tensor, species: int) -> torch.Tensor:
        """m = Dropout(ReLU(LayerNorm(log1p(x) W_s))): dropout acts only in training mode."""
        return self.macro_dropout(self.macrogene_values(x, species))

    def embed(self, x: torch.Tensor, species: int) -> torch.Tensor:
        return self.encoder(self.macrogenes(x, species))

    def decoder_hidden(self, z: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        """Decoder output in macrogene space, each cell conditioned on its own species (one-hot)."""
        if self.condition_on_species:
            z = torch.cat([z, F.one_hot(species, self.n_species).to(z.dtype)], dim=-1)
        return self.decoder(z)

    def gene_parameters(self, h: torch.Tensor, species: int, library: torch.Tensor,
                        all_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """ZINB mean (library x softmax over this species' genes only) and zero-inflation logits."""
        mu = library * torch.softmax(h @ self.weights(species, all_weights).T, dim=-1)
        return mu, self.zi_heads[species](h)

    def decode(self, z: torch.Tensor, species: int, library: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """gene_parameters of cells of one species from their embedding."""
        h = self.decoder_hidden(z, torch.full((len(z),), species, device=z.device))
        return self.gene_parameters(h, species, library)

    def forward(self, xs: list[torch.Tensor], partners: torch.Tensor | None = None, l1: bool = False
                ) -> dict[str, torch.Tensor]:
        """One batch per species in one call: the mean NLL of each species (0 for a species without cells in a
        micro-batch), sum |W| (if `l1`), and (given `partners` and protein embeddings) the embedding-similarity
        loss. Encoder and decoder run once on every species' cells together; only the gene layers are per
        species."""
        sizes = [len(x) for x in xs]
        species = torch.repeat_interleave(torch.arange(len(xs), device=xs[0].device),
                                          torch.tensor(sizes, device=xs[0].device))
        weights = self.log_weights.exp()  # once: both gene layers of every species and the regularisers read it
        values = torch.cat([self.macrogene_values(x, s, weights) for s, x in enumerate(xs)])
        hidden = self.decoder_hidden(self.encoder(self.macro_dropout(values)), species)
        out = {}
        for s, (x, h) in enumerate(zip(xs, hidden.split(sizes), strict=True)):
            if not len(x):  # a micro-batch without cells of this species
                out[f"nll_{s}"] = hidden.new_zeros(())
                continue
            mu, zi = self.gene_parameters(h, s, x.sum(-1, keepdim=True).clamp_min(1.0), weights)
            out[f"nll_{s}"] = count_nll(x, mu.float(), self.log_theta[s].exp(), zi.float()).mean()
        if l1:  # exp of every weight: skipped at weight 0 (the preset)
            out["l1"] = weight_l1(weights)
        if partners is not None and self.protein is not None:
            out["protein_similarity"] = embedding_similarity_loss(weights, self.protein, partners)
        return out


class SaturnMetric(nn.Module):
    """The encoder half of a SaturnModel (macrogenes -> embedding), for metric learning in `align`."""

    def __init__(self, pretrained: SaturnModel) -> None:
        super().__init__()
        self.register_buffer("offsets", pretrained.offsets.clone(), persistent=False)
        self.log_weights = nn.Parameter(pretrained.log_weights.detach().clone())
        self.macro_norm = copy.deepcopy(pretrained.macro_norm)
        self.macro_dropout = copy.deepcopy(pretrained.macro_dropout)
        self.encoder = copy.deepcopy(pretrained.encoder)

    weights = SaturnModel.weights
    gene_products = SaturnModel.gene_products
    values_of_products = SaturnModel.values_of_products
    macrogene_values = SaturnModel.macrogene_values
    macrogenes = SaturnModel.macrogenes
    embed = SaturnModel.embed

    def forward(self, xs: list[torch.Tensor] | None = None, products: list[torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Embeddings of one batch per species, concatenated in species order, and each species' macrogene
        values before dropout (what align finds cross-species neighbours in). The batch is the counts `xs`, or
        `products`: each species' gene_products computed beforehand (valid while log_weights are frozen)."""
        if products is None:
            products = [self.gene_products(x, s) for s, x in enumerate(xs)]
        values = [self.values_of_products(p) for p in products]
        return self.encoder(self.macro_dropout(torch.cat(values))), values  # one encoder pass for all species
