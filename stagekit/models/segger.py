"""A Segger-style link predictor: a heterogeneous GATv2 network over transcripts and nuclei, built from PyG parts.

Transcripts start from a gene embedding plus their local density and exchange messages with their nearest
transcripts; nuclei start from their polygon shape and receive messages from the transcripts inside them. Each
nucleus embedding is also decoded into an expression profile (a distribution over genes), trained to predict the
genes of the inside transcripts it did not hear from. The logit of a (transcript, nucleus) pair is the sum of: how
likely that profile makes the transcript's gene and its neighbours' genes (pointwise mutual information, per-gene
offsets learned), a small MLP of the two embeddings, and a small MLP of the pair's geometry.
"""

from __future__ import annotations

import torch
from torch import nn
from torch_geometric.nn import GATv2Conv, HeteroConv, Linear
from torch_geometric.utils import to_dense_batch


class SeggerGNN(nn.Module):
    def __init__(self, n_genes: int, n_tx_features: int, n_bd_features: int, n_pair_features: int,
                 hidden: int = 64, layers: int = 2, heads: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden ({hidden}) must be a multiple of heads ({heads})")
        self.gene_embedding = nn.Embedding(n_genes, hidden)
        self.tx_in = Linear(n_tx_features, hidden)
        self.bd_in = Linear(n_bd_features, hidden)
        self.convs = nn.ModuleList()
        self.skips = nn.ModuleList()
        for _ in range(layers):
            self.convs.append(HeteroConv({
                ("tx", "near", "tx"): GATv2Conv(hidden, hidden // heads, heads=heads, dropout=dropout),
                ("tx", "inside", "bd"): GATv2Conv((hidden, hidden), hidden // heads, heads=heads, dropout=dropout,
                                                  add_self_loops=False),
            }, aggr="sum"))
            self.skips.append(nn.ModuleDict({"tx": Linear(hidden, hidden), "bd": Linear(hidden, hidden)}))
        self.norms = nn.ModuleList(nn.ModuleDict({"tx": nn.LayerNorm(hidden), "bd": nn.LayerNorm(hidden)})
                                   for _ in range(layers))
        # logit = expression match + geometry, added: a mismatch lowers the score at any distance. The match reads
        # the transcript's context embedding and its own gene (a transcript on a cell border has a mixed
        # neighbourhood; its own gene still says which cell type it came from)
        self.match = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.GELU(), nn.Linear(hidden, 1))
        self.geometry = nn.Sequential(nn.Linear(n_pair_features, 16), nn.GELU(), nn.Linear(16, 1))
        # the profile term is a likelihood over every gene, learned from every labelled transcript's gene: it
        # tells apart pairs of cell types that rarely touch in the training sample, where the pair MLP only ever
        # saw a few negatives
        self.profile = Linear(hidden, n_genes)
        self.gene_offset = nn.Embedding(n_genes, 1)
        nn.init.zeros_(self.gene_offset.weight)
        self.profile_weight = nn.Parameter(torch.ones(2))  # own gene, neighbourhood

    def embed(self, data) -> dict[str, torch.Tensor]:
        """Embeddings after message passing, and each transcript's own gene embedding under "gene"."""
        gene = self.gene_embedding(data["tx"].gene)
        h = {"tx": gene + self.tx_in(data["tx"].x), "bd": self.bd_in(data["bd"].x)}
        edges = {key: data[key].edge_index for key in (("tx", "near", "tx"), ("tx", "inside", "bd"))}
        for conv, skip, norm in zip(self.convs, self.skips, self.norms, strict=True):
            messages = conv(h, edges)
            h = {kind: norm[kind](torch.nn.functional.gelu(skip[kind](h[kind]) + messages.get(kind, 0)))
                 for kind in h}
        return h | {"gene": gene}

    def forward(self, data) -> torch.Tensor:
        """Logits of the ('tx', 'candidate', 'bd') pairs."""
        return self.scores(data)[0]

    def scores(self, data) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits of the candidate pairs, each nucleus' log-profile over genes)."""
        h = self.embed(data)
        pairs = data["tx", "candidate", "bd"]
        tx, bd = pairs.edge_index
        nucleus = h["bd"][bd]
        match = self.match(torch.cat([h["tx"][tx] * nucleus, h["gene"][tx] * nucleus], 1)).squeeze(1)
        log_profile = torch.log_softmax(self.profile(h["bd"]), 1)
        pmi = log_profile + self.gene_offset.weight.T  # (nuclei, genes)
        genes = data["tx"].gene
        own = pmi[bd, genes[tx]]
        neighbourhood = self._neighbourhood_mean(data, pmi, genes, tx, bd)
        profile = self.profile_weight[0] * own + self.profile_weight[1] * neighbourhood
        return match + profile + self.geometry(pairs.edge_attr).squeeze(1), log_profile

    @staticmethod
    def _neighbourhood_mean(data, pmi: torch.Tensor, genes: torch.Tensor, tx: torch.Tensor,
                            bd: torch.Tensor) -> torch.Tensor:
        """Per pair: the mean PMI of the transcript's neighbours' genes under the nucleus' profile."""
        source, target = data["tx", "near", "tx"].edge_index
        if source.numel() == 0:
            return pmi.new_zeros(tx.shape)
        order = torch.argsort(target, stable=True)  # to_dense_batch groups a sorted index
        padded, _ = to_dense_batch(genes[source[order]], target[order], fill_value=-1, batch_size=genes.numel())
        around = padded[tx]
        values = pmi[bd[:, None], around.clamp(min=0)] * (around >= 0)
        return values.sum(1) / (around >= 0).sum(1).clamp(min=1)
