"""The segmentation model's description in a bundle: the network, how the sample is read and turned into a graph,
how links become cells, and the gene vocabulary's size."""

from __future__ import annotations

from dataclasses import dataclass

from stagekit.bundle.model_config import ModelConfig
from stagekit.models.segger import SeggerGNN
from stagekit.stages.segmentation.graph import NUCLEUS_FEATURES, PAIR_FEATURES, TRANSCRIPT_FEATURES
from stagekit.stages.segmentation.schema import SEGMENT_PREDICT

_PREDICT = {k: key.default for k, key in SEGMENT_PREDICT.items()}


@dataclass(frozen=True)
class SeggerArchitecture:
    hidden: int
    layers: int
    heads: int
    dropout: float


@dataclass(frozen=True)
class SampleReading:
    format: str
    min_qv: float
    control_prefixes: list[str]
    region: list[float]  # [x0, y0, x1, y1] the model was trained on; empty: the whole sample
    micron_per_unit: float = 0.0  # 0: the format's own unit (bundles written before the key)


@dataclass(frozen=True)
class GraphSettings:
    k_tx: int
    dist_tx: float
    dist_bd: float
    max_tile_transcripts: int
    tile_margin: float


@dataclass(frozen=True)
class PredictSettings:
    """Keys added after a bundle was written take their defaults."""

    score_cut: float = _PREDICT["score_cut"]
    min_transcripts: int = _PREDICT["min_transcripts"]
    max_distance: float = _PREDICT["max_distance"]
    farther_penalty: float = _PREDICT["farther_penalty"]
    profile_rounds: int = _PREDICT["profile_rounds"]
    profile_groups: int = _PREDICT["profile_groups"]
    profile_weight: float = _PREDICT["profile_weight"]
    profile_context_weight: float = _PREDICT["profile_context_weight"]


@dataclass(frozen=True)
class Vocabulary:
    n: int  # genes with an embedding, the unknown-gene token included


@dataclass(frozen=True)
class SeggerConfig(ModelConfig):
    model: SeggerArchitecture
    data: SampleReading
    graph: GraphSettings
    genes: Vocabulary
    predict: PredictSettings = PredictSettings()

    def build(self) -> SeggerGNN:
        m = self.model
        return SeggerGNN(self.genes.n, len(TRANSCRIPT_FEATURES), len(NUCLEUS_FEATURES), len(PAIR_FEATURES),
                         m.hidden, m.layers, m.heads, m.dropout)
