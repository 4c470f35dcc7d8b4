"""Prediction-time refinement of the link scores: the profile evidence checked against a plain loop, and the
refinement shown to fix assignments a geometry-only score gets wrong."""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from stagekit.data.spatial import read_sample
from stagekit.stages.segmentation.graph import build_graph
from stagekit.stages.segmentation.model_config import PredictSettings
from stagekit.stages.segmentation.predict import assign, refined_probabilities
from stagekit.stages.segmentation.refine import expression_groups, farther_than_nearest, profile_evidence
from stagekit.stages.segmentation.report import is_in
from tests.conftest import synthetic_xenium


@pytest.fixture(scope="module")
def sample_and_graph(xenium_small):
    sample = read_sample(xenium_small, log=lambda m: None)
    graph = build_graph(sample, sample.gene_codes + 1, k_tx=8, dist_tx=5.0, dist_bd=10.0,
                        max_tile_transcripts=500, tile_margin=10.0)
    return sample, graph


def test_profile_evidence_is_the_log_ratio_of_own_and_neighbours_genes_in_the_cells_group(sample_and_graph):
    _, graph = sample_and_graph
    rng = np.random.default_rng(0)
    n_nuclei = len(graph.nucleus_xy)
    nucleus_of = np.where(rng.uniform(size=len(graph.xy)) < 0.8, rng.integers(0, n_nuclei, len(graph.xy)), -1)
    nucleus_of[nucleus_of == 0] = -1  # nucleus 0's cell has no transcripts: no group, no evidence
    got = profile_evidence(graph, nucleus_of, n_nuclei, 4, 3.0, 0.5, chunk=97)  # chunks must not change anything
    genes = graph.genes
    frequency = np.bincount(genes) / len(genes)
    group = expression_groups(genes, nucleus_of, n_nuclei, 4)
    assert group.max() >= 1 and group[0] == -1

    def log_ratio(c: int, t: int) -> float:
        if group[c] < 0:
            return 0.0
        members = np.flatnonzero((nucleus_of >= 0) & (group[np.maximum(nucleus_of, 0)] == group[c]))
        members = members[members != t]  # the transcript scored is left out of its own group
        g = genes[t]
        return np.log(((genes[members] == g).sum() + 1.0) / (len(members) * frequency[g] + 1.0))

    checked_zero = False
    for p in range(0, len(graph.cand_tx), 53):
        t, c = graph.cand_tx[p], graph.cand_bd[p]
        around = [log_ratio(c, u) for u in graph.knn[t] if u >= 0]
        want = 3.0 * log_ratio(c, t) + 0.5 * (np.mean(around) if around else 0.0)
        assert got[p] == pytest.approx(want, abs=1e-4)
    for p in np.flatnonzero(graph.cand_bd == 0)[:5]:
        assert got[p] == 0.0
        checked_zero = True
    assert checked_zero


def test_a_gene_seen_only_in_the_transcript_scored_does_not_vouch_for_its_cell(sample_and_graph):
    """A gene seen only in the transcript scored, expected less than once in any group, weighs at most log 2 and
    never for the cell the transcript is already in: it does not vouch for itself (without leaving it out, its
    own group would score log(2 / (1 + E)) > 0 and every other -log(1 + E))."""
    _, graph = sample_and_graph
    genes = graph.genes.copy()
    rare = int(genes.max()) + 1
    t = int(graph.cand_tx[0])
    genes[t] = rare
    rare_graph = copy.copy(graph)
    rare_graph.genes = genes
    n_nuclei = len(graph.nucleus_xy)
    nucleus_of = np.full(len(genes), -1)
    nucleus_of[graph.cand_tx] = graph.cand_bd  # every transcript in one of its candidates' cells
    own = profile_evidence(rare_graph, nucleus_of, n_nuclei, 4, 1.0, 0.0)
    pairs = np.arange(graph.cand_start[t], graph.cand_start[t + 1])
    assert (own[pairs] <= 0).all() and (own[pairs] > -np.log(2)).all()  # log(1 / (1 + n_G / N)), n_G < N


def test_expression_groups_find_the_cell_types(tmp_path):
    """The true cells of a 160 x 160 micron sample (~100 cells, 5 types) fall into groups that split the
    generator's cell types rather than mix them."""
    sample = read_sample(synthetic_xenium(tmp_path / "s", seed=2, size=160), log=lambda m: None)
    ids = list(sample.nuclei.ids)
    position = {cell: i for i, cell in enumerate(ids)}
    nucleus_of = np.array([position.get(t, -1) for t in sample.truth])
    group = expression_groups(sample.gene_codes, nucleus_of, len(ids), 10)
    types = json.loads((sample.folder / "truth.json").read_text())["cell_types"]
    has = group >= 0
    truth = np.array([types[c] for c in np.asarray(ids)[has]])
    assert adjusted_rand_score(truth, group[has]) > 0.5  # more groups than types: split, not mixed
    mixed = [len(set(truth[group[has] == g])) for g in np.unique(group[has])]
    assert np.mean(np.array(mixed) == 1) >= 0.8


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

    def correct(settings: PredictSettings) -> float:
        refined = refined_probabilities(graph, probability, settings)
        cell = assign(graph, refined, ids, settings.score_cut, settings.min_transcripts).cell
        return float(np.where(truth_nucleus, cell == sample.truth, ~is_in(cell, ids)).mean())

    off = PredictSettings(profile_rounds=0, farther_penalty=0.0, max_distance=graph.dist_bd)
    unrefined = refined_probabilities(graph, probability, off)
    np.testing.assert_allclose(unrefined, probability, atol=1e-5)  # all off: the network's scores
    assert correct(dataclasses.replace(off, profile_rounds=2)) > correct(off) + 0.015
    assert correct(PredictSettings()) > correct(off) + 0.015
