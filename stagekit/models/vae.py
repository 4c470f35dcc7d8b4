"""Variational autoencoder for cells: log-normalised counts in, NB/ZINB likelihood on raw counts out."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from stagekit.losses.counts import count_nll
from stagekit.models.blocks import mlp


class VAE(nn.Module):
    """Encoder q(z|x, batch), decoder p(x|z, batch); gene-wise dispersion, as scVI's default."""

    def __init__(self, n_genes: int, n_latent: int = 10, n_hidden: list[int] | None = None,
                 dropout: float = 0.1, n_batches: int = 0, likelihood: str = "nb") -> None:
        super().__init__()
        hidden = list(n_hidden or [128])
        self.n_batches = n_batches
        self.encoder = mlp([n_genes + n_batches, *hidden], dropout)
        self.z_mean = nn.Linear(hidden[-1], n_latent)
        self.z_logvar = nn.Linear(hidden[-1], n_latent)
        self.decoder = mlp([n_latent + n_batches, *reversed(hidden)], 0.0)
        self.scale = nn.Linear(hidden[0], n_genes)
        self.zi_logits = nn.Linear(hidden[0], n_genes) if likelihood == "zinb" else None
        self.log_theta = nn.Parameter(torch.zeros(n_genes))

    def _with_batch(self, h: torch.Tensor, batch_index: torch.Tensor | None) -> torch.Tensor:
        if not self.n_batches:
            return h
        return torch.cat([h, F.one_hot(batch_index, self.n_batches).to(h.dtype)], dim=-1)

    def encode(self, x: torch.Tensor, batch_index: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance of z, and the library size of each cell."""
        library = x.sum(-1, keepdim=True).clamp_min(1.0)
        h = self.encoder(self._with_batch(torch.log1p(x * (1e4 / library)), batch_index))
        return self.z_mean(h), self.z_logvar(h).clamp(-15, 15), library

    def decode(self, z: torch.Tensor, library: torch.Tensor, batch_index: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Expected counts and (for ZINB) zero-inflation logits."""
        h = self.decoder(self._with_batch(z, batch_index))
        mu = library * torch.softmax(self.scale(h), dim=-1)
        return mu, (self.zi_logits(h) if self.zi_logits is not None else None)

    def forward(self, x: torch.Tensor, batch_index: torch.Tensor | None = None,
                kl_weight: float = 1.0) -> dict[str, torch.Tensor]:
        """Per-cell means of the loss terms: loss = reconstruction NLL + kl_weight * KL(q(z|x) || N(0, I))."""
        mean, logvar, library = self.encode(x, batch_index)
        z = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar)
        mu, zi = self.decode(z, library, batch_index)
        reconstruction = count_nll(x, mu.float(), self.log_theta.exp(), None if zi is None else zi.float())
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)
        return {"loss": (reconstruction + kl_weight * kl).mean(), "reconstruction": reconstruction.mean(),
                "kl": kl.mean()}
