"""A cell classifier (MLP on log-normalised counts) and the student/teacher pair of Mean Teacher."""

from __future__ import annotations

import copy

import torch
from torch import nn

from stagekit.models.blocks import Dropout, mlp


def log_normalise(x: torch.Tensor) -> torch.Tensor:
    """log1p of counts per 10k, the input of the encoders (as the VAE's)."""
    return torch.log1p(x * (1e4 / x.sum(-1, keepdim=True).clamp_min(1.0)))


def fixed(module: nn.Module) -> nn.Module:
    """The module with its parameters turned into buffers: saved with the weights, never trained, and copied
    unchanged into an EMA teacher."""
    for sub in module.modules():
        for name, param in list(sub.named_parameters(recurse=False)):
            delattr(sub, name)
            sub.register_buffer(name, param.detach())
    return module


class LatentEncoder(nn.Module):
    """A VAE encoder's posterior mean (`stagekit.models.vae.VAE`: `body` = its `encoder`, `mean` = its `z_mean`)
    as a fixed input transform of log-normalised genes, centred and divided by the largest latent standard
    deviation of the data (`set_scale`)."""

    def __init__(self, n_genes: int, n_hidden: list[int], n_latent: int) -> None:
        super().__init__()
        self.body = mlp([n_genes, *n_hidden], 0.0)
        self.mean = nn.Linear(n_hidden[-1], n_latent)
        fixed(self)
        self.register_buffer("centre", torch.zeros(n_latent))
        self.register_buffer("scale", torch.ones(()))

    def raw(self, h: torch.Tensor) -> torch.Tensor:
        """The posterior mean before centring and scaling."""
        return self.mean(self.body(h))

    @torch.no_grad()
    def set_scale(self, centre: torch.Tensor, scale: float) -> None:
        self.centre.copy_(centre)
        self.scale.fill_(scale)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return (self.raw(h) - self.centre) / self.scale


class CellClassifier(nn.Module):
    """Hidden layers (Linear -> norm -> ReLU -> dropout) and a linear head with `n_outputs` logits (1: a binary
    task with a sigmoid). `norm = "layer"` gives exactly the VAE encoder's layers (`body` loads from `encoder`).

    With `n_pcs` > 0 the layers read `n_pcs` principal components of the log-normalised genes instead of the genes:
    a fixed projection (buffers `pca_mean`, `pca_components`, `pca_scale`, set once from the data with
    `set_projection` and never trained), divided by the first component's standard deviation so that input noise
    has one scale whatever the data. With `latent` = (hidden sizes, latent size) they read a VAE encoder's
    posterior mean instead (`LatentEncoder`, as fixed)."""

    def __init__(self, n_genes: int, n_outputs: int, n_hidden: list[int], dropout: float = 0.2,
                 norm: str = "batch", n_pcs: int = 0, latent: tuple[list[int], int] | None = None) -> None:
        super().__init__()
        self.n_pcs = n_pcs
        if n_pcs:
            self.register_buffer("pca_mean", torch.zeros(n_genes))
            self.register_buffer("pca_components", torch.zeros(n_pcs, n_genes))
            self.register_buffer("pca_scale", torch.ones(()))
        self.latent = LatentEncoder(n_genes, *latent) if latent else None
        sizes = [n_pcs or (latent[1] if latent else n_genes), *n_hidden]
        if norm == "layer":
            self.body = mlp(sizes, dropout)
        else:
            layers: list[nn.Module] = []
            for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
                layers += [nn.Linear(n_in, n_out), nn.BatchNorm1d(n_out), nn.ReLU(), Dropout(dropout)]
            self.body = nn.Sequential(*layers)
        self.head = nn.Linear(sizes[-1], n_outputs)

    @torch.no_grad()
    def set_projection(self, mean: torch.Tensor, components: torch.Tensor, scale: float) -> None:
        self.pca_mean.copy_(mean)
        self.pca_components.copy_(components)
        self.pca_scale.fill_(scale)

    def project(self, h: torch.Tensor) -> torch.Tensor:
        """What the layers read of log-normalised genes: the scaled principal components or latent, or the genes."""
        if self.latent is not None:
            return self.latent(h)
        if not self.n_pcs:
            return h
        return (h - self.pca_mean) @ self.pca_components.T / self.pca_scale

    def classify(self, z: torch.Tensor) -> torch.Tensor:
        """Logits from projected input (`project`)."""
        return self.head(self.body(z))

    def embed(self, h: torch.Tensor) -> torch.Tensor:
        """The last hidden layer from log-normalised input."""
        return self.body(self.project(h))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.classify(self.project(h))


class MeanTeacher(nn.Module):
    """Student and teacher (an exponential moving average of the student, never trained by gradients). One
    forward for both, so DDP sees every gradient of the student through its wrapper."""

    def __init__(self, student: CellClassifier) -> None:
        super().__init__()
        self.student = student
        self.teacher = copy.deepcopy(student).requires_grad_(False)

    def forward(self, student_input: torch.Tensor, teacher_input: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits of projected inputs (the student's `project`: the augmentations act on what the layers read)."""
        student = self.student.classify(student_input)
        if teacher_input is None:
            return student, None
        self.teacher.train(self.training)  # same mode as the student (dropout noise on both, as in the paper)
        # the teacher's norm statistics change only through the EMA (copied or averaged from the student), not
        # through its own forward pass in training mode
        buffers = [b.clone() for b in self.teacher.buffers()]
        with torch.no_grad():
            teacher = self.teacher.classify(teacher_input)
            for kept, b in zip(buffers, self.teacher.buffers(), strict=True):
                b.copy_(kept)
        return student, teacher
