"""The expression-profile term of the Segger model and the context-noise augmentation, checked against plain
loops on a small sample."""

from __future__ import annotations

import numpy as np
import torch

from stagekit.data.spatial import read_sample
from stagekit.models.segger import SeggerGNN
from stagekit.stages.segmentation.graph import NOISE_HOPS, PAIR_FEATURES, TileRoles, build_graph, tile_data


def _graph(sample_dir):
    sample = read_sample(sample_dir, log=lambda m: None)
    return build_graph(sample, sample.gene_codes + 1, k_tx=8, dist_tx=5.0, dist_bd=10.0, max_tile_transcripts=500,
                       tile_margin=10.0)


def test_neighbourhood_term_is_the_mean_pmi_of_the_neighbours_genes(xenium_small):
    graph = _graph(xenium_small)
    data = tile_data(graph, 0)
    torch.manual_seed(0)
    n_genes = int(graph.genes.max()) + 1
    pmi = torch.randn(data["bd"].num_nodes, n_genes)
    tx, bd = data["tx", "candidate", "bd"].edge_index
    got = SeggerGNN._neighbourhood_mean(data, pmi, data["tx"].gene, tx, bd)
    source, target = data["tx", "near", "tx"].edge_index.tolist()
    genes = data["tx"].gene.tolist()
    for p in range(0, len(tx), 7):
        around = [genes[s] for s, t in zip(source, target, strict=True) if t == tx[p]]
        want = float(np.mean([pmi[bd[p], g] for g in around])) if around else 0.0
        assert abs(float(got[p]) - want) < 1e-5


def test_profile_logits_and_log_profile_shapes(xenium_small):
    graph = _graph(xenium_small)
    data = tile_data(graph, 0)
    model = SeggerGNN(int(graph.genes.max()) + 1, 1, 4, len(PAIR_FEATURES), hidden=16, layers=1, heads=2)
    logits, log_profile = model.scores(data)
    assert logits.shape == (data["tx", "candidate", "bd"].edge_index.shape[1],)
    assert torch.allclose(log_profile.exp().sum(1), torch.ones(data["bd"].num_nodes), atol=1e-5)
    assert torch.equal(model(data), logits)


def test_context_noise_keeps_labelled_genes_and_draws_others_from_nearby(xenium_small):
    graph = _graph(xenium_small)
    tile = 0
    members = graph.tiles[tile][1]
    inside = graph.inside[members] >= 0
    rng = np.random.default_rng(0)
    supervised = inside & (rng.random(len(members)) < 0.5)
    roles = TileRoles(inside & ~supervised, supervised, context_noise=0.5)
    data = tile_data(graph, tile, roles, np.random.default_rng(1))
    genes = data["tx"].gene.numpy()
    assert np.array_equal(genes[supervised], graph.genes[members][supervised])
    changed = (genes != graph.genes[members])[~supervised].mean()
    assert 0.1 < changed < 0.5  # half are redrawn, some of those draw their own gene back
    # every redrawn gene is one found within NOISE_HOPS kNN steps
    reach = [set([i]) for i in members]
    for r in range(len(members)):
        frontier = {members[r]}
        for _ in range(NOISE_HOPS):
            frontier = {int(k) for i in frontier for k in graph.knn[i] if k >= 0} | frontier
        reach[r] = {int(graph.genes[k]) for k in frontier}
    assert all(int(genes[r]) in reach[r] for r in np.flatnonzero(~supervised))
