"""Prediction-time refinement of the link scores: the profile evidence checked against a plain loop, and the
refinement shown to fix assignments a geometry-only score gets wrong."""

from __future__ import annotations

import numpy as np
import pytest

from stagekit.data.spatial import read_sample
from stagekit.stages.segmentation.graph import build_graph
from stagekit.stages.segmentation.predict import assign, predict_settings, refined_probabilities
from stagekit.stages.segmentation.refine import farther_than_nearest, profile_evidence
from stagekit.stages.segmentation.report import is_in


@pytest.fixture(scope="module")
def sample_and_graph(xenium_small):
    sample = read_sample(xenium_small, log=lambda m: None)
    graph = build_graph(sample, sample.gene_codes + 1, k_tx=8, dist_tx=5.0, dist_bd=10.0,
                        max_tile_transcripts=500, tile_margin=10.0)
    return sample, graph


def test_profile_evidence_is_the_log_ratio_of_own_and_neighbours_genes(sample_and_graph):
    _, graph = sample_and_graph
    rng = np.random.default_rng(0)
    n_nuclei = len(graph.nucleus_xy)
    nucleus_of = np.where(rng.uniform(size=len(graph.xy)) < 0.8, rng.integers(0, n_nuclei, len(graph.xy)), -1)
    prior = 20.0
    got = profile_evidence(graph, nucleus_of, n_nuclei, prior, chunk=97)  # chunks must not change anything
    genes = graph.genes
    frequency = np.bincount(genes) / len(genes)

    def log_ratio(c: int, g: int) -> float:
        mine = genes[nucleus_of == c]
        return np.log(((mine == g).sum() + prior * frequency[g]) / (len(mine) + prior)) - np.log(frequency[g])

    for p in range(0, len(graph.cand_tx), 53):
        t, c = graph.cand_tx[p], graph.cand_bd[p]
        around = [log_ratio(c, genes[u]) for u in graph.knn[t] if u >= 0]
        want = log_ratio(c, genes[t]) + (np.mean(around) if around else 0.0)
        assert got[p] == pytest.approx(want, abs=1e-4)


def test_farther_than_nearest_is_zero_for_each_transcripts_nearest_candidate(sample_and_graph):
    _, graph = sample_and_graph
    extra = farther_than_nearest(graph)
    starts = graph.cand_start[:-1][np.diff(graph.cand_start) > 0]
    assert (extra >= 0).all() and (extra[starts] == 0).all()


def test_refinement_fixes_what_geometry_alone_gets_wrong(sample_and_graph):
    """Stand-in network scores that know only geometry (the nearest candidate 0.9, the others 0.2): the profile
    rounds keep cells of another type whose nucleus is missing out of their neighbours, and little else moves."""
    sample, graph = sample_and_graph
    nearest = np.zeros(len(graph.cand_tx), bool)
    nearest[graph.cand_start[:-1][np.diff(graph.cand_start) > 0]] = True
    probability = np.where(nearest, 0.9, 0.2).astype(np.float32)
    ids = list(sample.nuclei.ids)
    truth_nucleus = is_in(sample.truth, ids)

    def correct(settings: dict) -> float:
        refined = refined_probabilities(graph, probability, settings)
        cell = assign(graph, refined, ids, settings["score_cut"], settings["min_transcripts"]).cell
        return float(np.where(truth_nucleus, cell == sample.truth, ~is_in(cell, ids)).mean())

    off = predict_settings({}) | {"profile_rounds": 0, "farther_penalty": 0.0, "max_distance": graph.dist_bd}
    unrefined = refined_probabilities(graph, probability, off)
    np.testing.assert_allclose(unrefined, probability, atol=1e-5)  # all off: the network's scores
    assert correct(off | {"profile_rounds": 2}) > correct(off) + 0.015
    assert correct(predict_settings({})) > correct(off) + 0.015
