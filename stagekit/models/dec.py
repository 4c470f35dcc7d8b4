"""Deep embedded clustering on top of a pretrained VAE encoder (IDEC-style: the decoder stays on)."""

from __future__ import annotations

import torch
from torch import nn

from stagekit.losses.clustering import student_t_assignment
from stagekit.models.vae import VAE


class DEC(nn.Module):
    def __init__(self, vae: VAE, centres: torch.Tensor, alpha: float = 1.0) -> None:
        super().__init__()
        self.vae = vae
        self.centres = nn.Parameter(centres.clone().float())
        self.alpha = alpha

    def assign(self, z: torch.Tensor) -> torch.Tensor:
        return student_t_assignment(z, self.centres, self.alpha)

    def forward(self, x: torch.Tensor, batch_index: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Per cell: latent mean z, soft assignment q, reconstruction NLL and latent KL."""
        z, reconstruction, kl = self.vae.terms(x, batch_index)
        return {"z": z, "q": self.assign(z), "reconstruction": reconstruction, "kl": kl}
