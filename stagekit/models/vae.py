"""Variational autoencoder for cells or any tabular phenotype data.

Counts: log1p of counts per 10k in, NB/ZINB likelihood (scvi-tools) on the raw counts out.
Other features (`likelihood="gaussian"`): standardised features in and out, unit-variance Gaussian.
`variational=False` makes it a plain autoencoder (z is the encoder mean, no KL).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from stagekit.losses.counts import count_nll
from stagekit.models.blocks import mlp

COUNT_LIKELIHOODS = ("nb", "zinb")


class VAE(nn.Module):
    """Encoder q(z|x, batch), decoder p(x|z, batch); gene-wise dispersion, as scVI's default."""

    def __init__(self, n_genes: int, n_latent: int = 10, n_hidden: list[int] | None = None,
                 dropout: float = 0.1, n_batches: int = 0, likelihood: str = "nb", variational: bool = True,
                 input_dropout: float = 0.0) -> None:
        super().__init__()
        hidden = list(n_hidden or [128])
        self.n_batches, self.likelihood, self.variational = n_batches, likelihood, variational
        self.input_dropout = nn.Dropout(input_dropout)  # masking noise: a denoising autoencoder when > 0
        self.encoder = mlp([n_genes + n_batches, *hidden], dropout)
        self.z_mean = nn.Linear(hidden[-1], n_latent)
        self.z_logvar = nn.Linear(hidden[-1], n_latent)
        self.decoder = mlp([n_latent + n_batches, *reversed(hidden)], 0.0)
        self.scale = nn.Linear(hidden[0], n_genes)
        self.zi_logits = nn.Linear(hidden[0], n_genes) if likelihood == "zinb" else None
        self.log_theta = nn.Parameter(torch.zeros(n_genes))
        # standardisation of non-count features; set from training data by the stage, saved with the weights
        self.register_buffer("feature_mean", torch.zeros(n_genes))
        self.register_buffer("feature_std", torch.ones(n_genes))

    @property
    def counts(self) -> bool:
        return self.likelihood in COUNT_LIKELIHOODS

    def _with_batch(self, h: torch.Tensor, batch_index: torch.Tensor | None) -> torch.Tensor:
        if not self.n_batches:
            return h
        return torch.cat([h, F.one_hot(batch_index, self.n_batches).to(h.dtype)], dim=-1)

    def transform(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder input and library size (ones for non-count features)."""
        if not self.counts:
            return (x - self.feature_mean) / self.feature_std, torch.ones_like(x[:, :1])
        library = x.sum(-1, keepdim=True).clamp_min(1.0)
        return torch.log1p(x * (1e4 / library)), library

    def encode(self, x: torch.Tensor, batch_index: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance of z, and the library size of each cell."""
        h_in, library = self.transform(x)
        h = self.encoder(self._with_batch(self.input_dropout(h_in), batch_index))
        return self.z_mean(h), self.z_logvar(h).clamp(-15, 15), library

    def decode(self, z: torch.Tensor, library: torch.Tensor, batch_index: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Expected counts (or standardised features) and, for ZINB, zero-inflation logits."""
        h = self.decoder(self._with_batch(z, batch_index))
        if not self.counts:
            return self.scale(h), None
        mu = library * torch.softmax(self.scale(h), dim=-1)
        return mu, (self.zi_logits(h) if self.zi_logits is not None else None)

    def reconstruction_nll(self, x: torch.Tensor, mu: torch.Tensor, zi: torch.Tensor | None) -> torch.Tensor:
        """Per-cell negative log-likelihood (up to a constant for the Gaussian)."""
        if not self.counts:
            return 0.5 * ((self.transform(x)[0] - mu.float()) ** 2).sum(-1)
        return count_nll(x, mu.float(), self.log_theta.exp(), None if zi is None else zi.float())

    def terms(self, x: torch.Tensor, batch_index: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Posterior mean, per-cell reconstruction NLL and per-cell KL (zero for an autoencoder)."""
        mean, logvar, library = self.encode(x, batch_index)
        if self.variational:
            z = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar)
            kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)
        else:
            z, kl = mean, torch.zeros_like(mean[:, 0])
        mu, zi = self.decode(z, library, batch_index)
        return mean, self.reconstruction_nll(x, mu, zi), kl

    def forward(self, x: torch.Tensor, batch_index: torch.Tensor | None = None,
                kl_weight: float = 1.0) -> dict[str, torch.Tensor]:
        """Means over cells of the loss terms, loss = reconstruction NLL + kl_weight * KL(q(z|x) || N(0, I)),
        and each cell's posterior mean `z`."""
        z, reconstruction, kl = self.terms(x, batch_index)
        return {"loss": (reconstruction + kl_weight * kl).mean(), "reconstruction": reconstruction.mean(),
                "kl": kl.mean(), "z": z}
