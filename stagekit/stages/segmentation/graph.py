"""The transcript-nucleus graph of a sample, computed once, and the tiles it is cut into.

Nodes: transcripts (gene token, local density) and nuclei (polygon shape). Edges: transcript-transcript k nearest
neighbours within `dist_tx`; transcript -> candidate nucleus for every nucleus whose outline lies within `dist_bd`
(each candidate pair carries its geometry relative to the transcript's nearest candidate); transcript -> nucleus
"inside" edges for transcripts within a nucleus polygon, which either carry messages into that nucleus or serve as
labels, never both (see `TileRoles`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree

from stagekit.data.polygons import centroids, point_distances, shape_features
from stagekit.data.spatial import Sample
from stagekit.errors import UserError

NOISE_HOPS = 3  # context noise draws genes from a few kNN steps away: mostly the cell itself, some its neighbours
TRANSCRIPT_FEATURES = ("density",)  # of each transcript besides its gene: neighbours within dist_tx
NUCLEUS_FEATURES = ("log_area", "log_perimeter", "log_elongation", "circularity")  # of each nucleus outline
PAIR_FEATURES = ("extra_distance",)  # geometry of a candidate pair: how much farther than the nearest candidate


@dataclass
class SampleGraph:
    xy: np.ndarray  # (n, 2)
    genes: np.ndarray  # (n,) int64 codes into the model's gene vocabulary
    density: np.ndarray  # (n, len(TRANSCRIPT_FEATURES)) float32
    knn: np.ndarray  # (n, k) neighbour index, -1 where none within dist_tx
    nucleus_features: np.ndarray  # (m, len(NUCLEUS_FEATURES)) float32
    nucleus_xy: np.ndarray  # (m, 2) centroids
    cand_tx: np.ndarray  # (p,) transcript of each candidate pair, sorted
    cand_bd: np.ndarray  # (p,) nucleus
    cand_distance: np.ndarray  # (p,) distance to the nucleus outline, 0 inside
    dist_bd: float
    cand_features: np.ndarray  # (p, len(PAIR_FEATURES)) float32
    cand_start: np.ndarray  # (n + 1,) pairs of transcript i are cand_start[i]:cand_start[i+1]
    inside: np.ndarray  # (n,) nucleus whose polygon holds the transcript, -1 if none
    tiles: list[tuple[np.ndarray, np.ndarray]]  # (core transcripts, all transcripts incl. the margin)


def candidate_links(xy: np.ndarray, vertices: np.ndarray, centre: np.ndarray, dist_bd: float, chunk: int = 200_000):
    """Pairs (transcript, nucleus) whose outline is within dist_bd, with the distance and the inside flag."""
    reach = np.hypot(*(vertices - centre[:, None]).transpose(2, 0, 1)).max(1)
    tree = cKDTree(centre)
    tx, bd, dist, inside = [], [], [], []
    for start in range(0, len(xy), chunk):
        part = xy[start:start + chunk]
        near = cKDTree(part).sparse_distance_matrix(tree, dist_bd + reach.max(), output_type="coo_matrix")
        rows, cols = near.row, near.col
        close = near.data <= dist_bd + reach[cols]
        rows, cols = rows[close], cols[close]
        d, ins = np.empty(len(rows)), np.empty(len(rows), bool)
        for s in range(0, len(rows), chunk):
            d[s:s + chunk], ins[s:s + chunk] = point_distances(part[rows[s:s + chunk]], vertices[cols[s:s + chunk]])
        keep = ins | (d <= dist_bd)  # inside: distance 0, however far the outline
        tx.append(rows[keep] + start)
        bd.append(cols[keep])
        dist.append(np.where(ins[keep], 0.0, d[keep]))
        inside.append(ins[keep])
    tx, bd, dist, inside = (np.concatenate(v) for v in (tx, bd, dist, inside))
    order = np.lexsort((dist, tx))  # by transcript, nearest candidate first
    return tx[order], bd[order], dist[order], inside[order]


def _tiles(xy: np.ndarray, max_tx: int, margin: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Quadtree tiles of at most `max_tx` core transcripts; each transcript is the core of exactly one tile and
    the tile also holds every transcript within `margin` of its box, so cells on an edge see their neighbours."""
    tree = cKDTree(xy)
    out = []
    stack = [(xy.min(0), xy.max(0) + 1e-6, np.arange(len(xy)))]
    while stack:
        lo, hi, idx = stack.pop()
        if len(idx) <= max_tx or np.all(hi - lo < 1e-3):
            if len(idx):
                centre, half = (lo + hi) / 2, (hi - lo) / 2 + margin
                around = np.asarray(tree.query_ball_point(centre, np.hypot(*half)), dtype=np.int64)
                around = around[np.all(np.abs(xy[around] - centre) <= half, 1)]
                out.append((np.sort(idx), np.union1d(around, idx)))
            continue
        mid = (lo + hi) / 2
        right, top = xy[idx, 0] >= mid[0], xy[idx, 1] >= mid[1]
        for r in (False, True):
            for t in (False, True):
                sub = idx[(right == r) & (top == t)]
                sub_lo = np.where([r, t], mid, lo)
                sub_hi = np.where([r, t], hi, mid)
                stack.append((sub_lo, sub_hi, sub))
    return out


def nucleus_feature_matrix(sample: Sample) -> np.ndarray:
    shape = shape_features(sample.nuclei.vertices, sample.nuclei.n_vertices)
    return np.stack([np.log1p(shape["area"]), np.log1p(shape["perimeter"]), np.log(shape["elongation"]),
                     shape["circularity"]], 1).astype(np.float32)


def build_graph(sample: Sample, gene_codes: np.ndarray, k_tx: int, dist_tx: float, dist_bd: float,
                max_tile_transcripts: int, tile_margin: float) -> SampleGraph:
    if dist_bd <= 0 or dist_tx <= 0:
        raise UserError(f"graph.dist_bd ({dist_bd}) and graph.dist_tx ({dist_tx}) must be > 0 microns")
    xy = sample.xy
    tree = cKDTree(xy)
    k = min(k_tx + 1, len(xy))
    dist, knn = tree.query(xy, k=k, distance_upper_bound=dist_tx)
    dist, knn = np.atleast_2d(dist)[:, 1:], np.atleast_2d(knn)[:, 1:]  # drop the point itself
    knn = np.where(np.isfinite(dist), knn, -1)
    # local density: neighbours within dist_tx, scaled to [0, 1] (log of a count, not absolute units)
    density = (np.log1p((knn >= 0).sum(1)) / np.log1p(max(k_tx, 1)))[:, None].astype(np.float32)
    vertices = sample.nuclei.vertices
    centre = centroids(vertices)
    tx, bd, d, ins = candidate_links(xy, vertices, centre, dist_bd)
    start = np.searchsorted(tx, np.arange(len(xy) + 1))
    features = pair_geometry(tx, d, dist_bd)
    first = np.diff(tx, prepend=-1) != 0  # pairs are sorted by transcript, nearest first
    inside = np.full(len(xy), -1, np.int64)
    inside[tx[ins & first]] = bd[ins & first]
    return SampleGraph(xy, gene_codes, density, knn, nucleus_feature_matrix(sample), centre, tx, bd, d, dist_bd,
                       features, start, inside, _tiles(xy, max_tile_transcripts, tile_margin))


def pair_geometry(owner: np.ndarray, distance: np.ndarray, dist_bd: float) -> np.ndarray:
    """PAIR_FEATURES of candidate pairs grouped by transcript, nearest first: how much farther than the
    transcript's nearest candidate the nucleus is (in dist_bd). Relative, not absolute: the labelled transcripts all
    lie inside a nucleus, so an absolute distance would never be seen above zero on a positive link in training.
    No "is the nearest" flag or rank: in training the positive is always the nearest, so such a flag jumped the
    logit by 3.2 between two candidates 1 um apart, and at a cell border the nearest nucleus is often not the
    cell's own (synthetic tissue: mean correct 0.861 with them, 0.861 without, over three samples)."""
    if len(owner) == 0:
        return np.zeros((0, len(PAIR_FEATURES)), np.float32)
    first = np.diff(owner, prepend=-1) != 0
    group_start = np.maximum.accumulate(np.where(first, np.arange(len(owner)), 0))
    return ((distance - distance[group_start]) / dist_bd)[:, None].astype(np.float32)


@dataclass
class TileRoles:
    """What each transcript of one tile (`members`, in the tile's order) does in one load. Inside transcripts are
    split: `message` ones carry messages into their nucleus, `supervised` ones (core transcripts only) give the
    labelled candidate pairs; a transcript is never both, so no label reaches the nucleus it labels. At
    prediction (no roles) every inside transcript carries messages and every core transcript is scored."""

    message: np.ndarray  # bool over the tile's members
    supervised: np.ndarray  # bool over the tile's members
    swap_geometry: float = 0.0  # probability that a supervised transcript's pair features are shuffled
    neg_ratio: int = 0  # negatives kept per labelled transcript (0: every candidate)
    hidden: np.ndarray | None = None  # bool over all nuclei: left out of this load, as if the stain had missed them
    weak: np.ndarray | None = None  # over the members: nucleus the vendor assigned an outside transcript to, or -1
    weak_weight: float = 0.0  # the loss weight of those weaker labels
    unknown_gene: float = 0.0  # share of transcripts read as the unknown-gene token (so that token is trained)
    context_noise: float = 0.0  # share of the unsupervised transcripts given the gene of one NOISE_HOPS steps away


def _position(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Position of each id in `sorted_ids`, -1 where absent (a lookup that costs the tile, not the sample)."""
    if len(sorted_ids) == 0:
        return np.full(len(ids), -1, np.int64)
    pos = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    return np.where(sorted_ids[pos] == ids, pos, -1)


def tile_data(graph: SampleGraph, tile: int, roles: TileRoles | None = None, rng: np.random.Generator | None = None):
    """One tile as a PyG `HeteroData`. Candidate pairs are in ('tx', 'candidate', 'bd') with `edge_attr`
    (geometry), `y` (1 = the transcript lies in that nucleus, 0 not; -1 unlabelled), `weight` and `pair` (their
    index in the sample's candidate list); only core transcripts' pairs are there."""
    from torch_geometric.data import HeteroData

    core, members = graph.tiles[tile]  # both sorted
    counts = np.diff(graph.cand_start)[members]
    pair = np.repeat(graph.cand_start[members], counts) + (np.arange(counts.sum())
                                                          - np.repeat(np.cumsum(counts) - counts, counts))
    hidden = roles.hidden if roles is not None and roles.hidden is not None else None
    features = graph.cand_features[pair]
    if hidden is not None:  # a hidden nucleus is no candidate: the geometry is taken among the others
        pair = pair[~hidden[graph.cand_bd[pair]]]
        features = pair_geometry(graph.cand_tx[pair], graph.cand_distance[pair], graph.dist_bd)
    inside_members = graph.inside[members]
    sends = inside_members >= 0
    if hidden is not None:
        sends &= ~hidden[np.maximum(inside_members, 0)]
    if roles is not None:
        sends &= roles.message
    nuclei = np.union1d(graph.cand_bd[pair], inside_members[sends])

    data = HeteroData()
    genes = graph.genes[members]
    if roles is not None and roles.context_noise > 0:
        mixed = np.flatnonzero(~roles.supervised & (rng.random(len(genes)) < roles.context_noise))
        genes = genes.copy()
        genes[mixed] = graph.genes[_random_walk(graph.knn, members[mixed], NOISE_HOPS, rng)]
    if roles is not None and roles.unknown_gene > 0:
        genes = np.where(rng.random(len(genes)) < roles.unknown_gene, 0, genes)
    data["tx"].gene = torch.from_numpy(genes)
    data["tx"].x = torch.from_numpy(graph.density[members])
    data["tx"].index = torch.from_numpy(members)
    data["bd"].x = torch.from_numpy(graph.nucleus_features[nuclei])
    data["bd"].index = torch.from_numpy(nuclei)
    neighbour = _position(members, graph.knn[members].ravel()).reshape(graph.knn[members].shape)
    ok = (graph.knn[members] >= 0) & (neighbour >= 0)
    data["tx", "near", "tx"].edge_index = torch.from_numpy(
        np.stack([neighbour[ok], np.repeat(np.arange(len(members)), ok.sum(1))]))
    senders = np.flatnonzero(sends)
    data["tx", "inside", "bd"].edge_index = torch.from_numpy(
        np.stack([senders, _position(nuclei, inside_members[senders])]))

    owner = graph.cand_tx[pair]
    owner_local = _position(members, owner)
    is_core = _position(core, owner) >= 0
    labels = (graph.inside[owner] == graph.cand_bd[pair]).astype(np.int64)
    weight = np.ones(len(pair), np.float32)
    if roles is None:
        keep = is_core
        labels = np.where(graph.inside[owner] >= 0, labels, -1)
    else:
        supervised = is_core & roles.supervised[owner_local]
        keep = supervised & (graph.inside[owner] >= 0)  # those of a hidden nucleus: negatives only
        if roles.weak is not None and roles.weak_weight > 0:
            target = roles.weak[owner_local]
            weak = supervised & (graph.inside[owner] < 0) & (target >= 0)
            weak &= _has_positive(owner, target == graph.cand_bd[pair])
            labels = np.where(weak, target == graph.cand_bd[pair], labels).astype(np.int64)
            weight[weak] = roles.weak_weight
            keep |= weak
        if roles.neg_ratio and keep.any():
            keep &= _negatives_kept(labels, owner, keep, roles.neg_ratio, rng)
        if roles.swap_geometry > 0 and keep.any():
            features = _swapped(features, owner, keep, roles.swap_geometry, rng)
    pair = pair[keep]
    data["tx", "candidate", "bd"].edge_index = torch.from_numpy(
        np.stack([owner_local[keep], _position(nuclei, graph.cand_bd[pair])]))
    data["tx", "candidate", "bd"].edge_attr = torch.from_numpy(features[keep])
    data["tx", "candidate", "bd"].y = torch.from_numpy(labels[keep])
    data["tx", "candidate", "bd"].weight = torch.from_numpy(weight[keep])
    data["tx", "candidate", "bd"].pair = torch.from_numpy(pair)
    return data


def _random_walk(knn: np.ndarray, start: np.ndarray, hops: int, rng: np.random.Generator) -> np.ndarray:
    """Where `hops` steps to a random neighbour lead from each start (a transcript without neighbours stays)."""
    at = start
    for _ in range(hops):
        step = knn[at, rng.integers(0, knn.shape[1], len(at))]
        at = np.where(step >= 0, step, at)
    return at


def _has_positive(owner: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Per pair: whether its transcript has a positive pair among its candidates (a vendor's cell may lie
    beyond dist_bd; such a transcript is left out rather than given only negatives)."""
    return np.isin(owner, np.unique(owner[positive]))


def _negatives_kept(labels: np.ndarray, owner: np.ndarray, keep: np.ndarray, ratio: int,
                    rng: np.random.Generator) -> np.ndarray:
    """At most `ratio` negatives per supervised transcript (and its positive, if present), drawn at random."""
    score = rng.random(len(labels))
    score[labels == 1] = -1.0  # positives first
    order = np.lexsort((score, owner))
    first = np.r_[True, owner[order][1:] != owner[order][:-1]]
    group_start = np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))
    position = np.arange(len(order)) - group_start
    has_positive = np.isin(owner[order], owner[labels == 1])
    allowed = np.empty(len(labels), bool)
    allowed[order] = (labels[order] == 1) | (position < ratio + has_positive)
    return allowed | ~keep


def _swapped(features: np.ndarray, owner: np.ndarray, keep: np.ndarray, probability: float,
             rng: np.random.Generator) -> np.ndarray:
    """Shuffle the pair geometry among the candidates of a random share of supervised transcripts, so that the
    label of those pairs can only be told from what the transcript's neighbourhood and the nucleus express."""
    rows = np.flatnonzero(keep)
    transcripts = np.unique(owner[rows])
    chosen = transcripts[rng.random(len(transcripts)) < probability]
    rows = rows[np.isin(owner[rows], chosen)]
    order = np.lexsort((rng.random(len(rows)), owner[rows]))
    out = features.copy()  # rows are grouped by transcript: each group gets a permutation of its own features
    out[np.sort(rows)] = features[rows[order]]
    return out
