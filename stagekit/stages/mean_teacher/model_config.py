"""The Mean Teacher classifier's description in a bundle: its layers, the label task and the classes."""

from __future__ import annotations

from dataclasses import dataclass, field

from stagekit.bundle.model_config import ModelConfig
from stagekit.models.classifier import CellClassifier, MeanTeacher


@dataclass(frozen=True)
class ClassifierArchitecture:
    n_hidden: list[int]
    dropout: float
    norm: str
    input: str = "genes"  # bundles written before principal-component input read the genes
    n_pcs: int = 50
    # input = "latent": the shape of the VAE encoder the layers read (taken from the VAE bundle, not set by hand)
    latent_hidden: list[int] = field(default_factory=list)
    n_latent: int = 0

    @property
    def projected(self) -> int:
        """Principal components the layers read (0: the genes)."""
        return self.n_pcs if self.input == "pca" else 0

    @property
    def latent(self) -> tuple[list[int], int] | None:
        """(hidden sizes, latent size) of the VAE encoder the layers read, or None."""
        return (self.latent_hidden, self.n_latent) if self.input == "latent" else None


@dataclass(frozen=True)
class LabelTask:
    layer: str
    label_key: str
    positive_class: str  # binary task: this label against the others; empty: one class per label


@dataclass(frozen=True)
class Classes:
    names: list[str]


@dataclass(frozen=True)
class MeanTeacherConfig(ModelConfig):
    model: ClassifierArchitecture
    data: LabelTask
    classes: Classes

    def build(self, n_genes: int) -> MeanTeacher:
        """Student and teacher over `n_genes`: one output for a binary task, else one per class."""
        outputs = 1 if self.data.positive_class else len(self.classes.names)
        m = self.model
        return MeanTeacher(CellClassifier(n_genes, outputs, m.n_hidden, m.dropout, m.norm, m.projected,
                                          m.latent))
