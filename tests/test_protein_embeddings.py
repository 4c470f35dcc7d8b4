"""Groundwork for cross-species integration: embedding files, gene matching, macrogene initialisation."""

import h5py
import numpy as np
import pytest
import torch

from stagekit.data.protein_embeddings import load_gene_embeddings, match_genes
from stagekit.errors import UserError
from stagekit.models.macrogenes import initial_log_weights, log_weights_from_centroids, rank_weights

GENES = ["Ins1", "Gcg", "Sst", "Ppy", "Actb"]


def _vectors():
    return np.random.default_rng(0).normal(size=(len(GENES), 8)).astype(np.float32)


@pytest.mark.parametrize("kind", ["h5", "npz", "pt", "h5-per-gene"])
def test_every_format_loads_the_same(tmp_path, kind):
    vectors = _vectors()
    path = tmp_path / f"emb.{kind.split('-')[0]}"
    if kind == "h5":
        with h5py.File(path, "w") as f:
            f["genes"] = np.array(GENES, dtype=object).astype("S")
            f["embeddings"] = vectors
    elif kind == "h5-per-gene":
        with h5py.File(path, "w") as f:
            for g, v in zip(GENES, vectors, strict=True):
                f[g] = v
    elif kind == "npz":
        np.savez(path, genes=np.array(GENES), embeddings=vectors)
    else:
        torch.save({g: torch.from_numpy(v) for g, v in zip(GENES, vectors, strict=True)}, path)
    emb = load_gene_embeddings(path)
    order = [emb.symbols.index(g) for g in GENES]
    assert emb.dim == 8 and np.allclose(emb.vectors[order], vectors)


def test_matching_is_case_insensitive_and_names_unmatched(tmp_path):
    path = tmp_path / "emb.npz"
    np.savez(path, genes=np.array(GENES), embeddings=_vectors())
    emb = load_gene_embeddings(path)
    index, vectors = match_genes(["INS1", "GCG", "Foo", "sst"], emb, "human", min_matched=3)
    assert index.tolist() == [0, 1, 3] and vectors.shape == (3, 8)
    with pytest.raises(UserError, match=r"species 'mouse': only 1 of 3 genes .* unmatched e.g. Bar, Baz"):
        match_genes(["Ins1", "Bar", "Baz"], emb, "mouse", min_matched=3)


def test_bad_embedding_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_gene_embeddings(tmp_path / "none.h5")
    ragged = tmp_path / "ragged.npz"
    np.savez(ragged, A=np.ones(3), B=np.ones(4))
    with pytest.raises(UserError, match="one length"):
        load_gene_embeddings(ragged)
    unsafe = tmp_path / "code.pt"
    torch.save({"A": object()}, unsafe)  # needs unpickling of arbitrary objects: refused
    with pytest.raises(UserError, match="holds pickled Python objects, which stagekit never loads"):
        load_gene_embeddings(unsafe)
    other = tmp_path / "emb.csv"
    other.write_text("A,1\n")
    with pytest.raises(UserError, match="unknown embedding format"):
        load_gene_embeddings(other)


def test_macrogene_weights_follow_rank():
    ranks = np.array([[1.0, 2.0, 3.0]])
    assert rank_weights(ranks, "default")[0, 0] == pytest.approx(2 * np.log(2) ** 2)
    assert rank_weights(ranks, "one_hot").tolist() == [[1.0, 0.0, 0.0]]
    assert rank_weights(ranks, "smoothed").tolist() == [[1.0, 0.5, 1 / 3]]
    rng = np.random.default_rng(0)
    genes = np.concatenate([rng.normal(0, 0.1, (20, 4)), rng.normal(5, 0.1, (20, 4))])
    log_w, centroids = initial_log_weights(genes, 2, seed=0)
    assert log_w.shape == (40, 2) and centroids.shape == (2, 4) and np.isfinite(log_w).all()
    nearest = log_w.argmax(1)  # each gene weighs most on its own cluster's macrogene
    assert len(set(nearest[:20])) == 1 and len(set(nearest[20:])) == 1 and nearest[0] != nearest[20]
    again, _ = initial_log_weights(genes, 2, seed=0)
    assert np.array_equal(log_w, again)  # seeded


def test_weights_from_centroids_match_brute_force_ranks_in_blocks():
    rng = np.random.default_rng(1)
    genes, centroids = rng.normal(size=(50, 8)), rng.normal(size=(7, 8))
    brute = ((genes[:, None, :] - centroids[None]) ** 2).sum(-1).argsort(1).argsort(1) + 1.0
    expected = np.log(rank_weights(brute, "smoothed") + 1e-6).astype(np.float32)
    assert np.array_equal(log_weights_from_centroids(genes, centroids, "smoothed", block=16), expected)


def test_seeding_on_principal_components_reaches_the_same_clustering():
    """Seeding on a few principal components, then Lloyd on every dimension, against seeding on all of them (the
    reference's way, `seeding_dims=0`): gene clusters along a low-dimensional structure, as protein embeddings."""
    from sklearn.cluster import KMeans, kmeans_plusplus

    from stagekit.models.macrogenes import macrogene_centroids

    rng = np.random.default_rng(2)
    centres = rng.normal(size=(30, 6)) @ rng.normal(size=(6, 256))  # 30 families in a 6-d subspace of 256
    genes = (centres[rng.integers(0, 30, 900)] + 0.3 * rng.normal(size=(900, 256))).astype(np.float32)

    def inertia(c):
        return float(((genes[:, None, :] - c[None]) ** 2).sum(-1).min(1).sum())

    full = macrogene_centroids(genes, 30, seed=0, seeding_dims=0)
    _, rows = kmeans_plusplus(genes.astype(np.float64), 30, random_state=0)  # unchanged from before the setting
    reference = KMeans(30, init=genes[rows], n_init=1, random_state=0).fit(genes).cluster_centers_
    np.testing.assert_allclose(full, reference, rtol=1e-5, atol=1e-5)
    reduced = [inertia(macrogene_centroids(genes, 30, seed=s, seeding_dims=8)) for s in range(3)]
    everything = [inertia(macrogene_centroids(genes, 30, seed=s, seeding_dims=0)) for s in range(3)]
    assert np.mean(reduced) < 1.02 * np.mean(everything)
    assert macrogene_centroids(genes, 30, seed=0, seeding_dims=4096).tolist() == full.tolist()  # >= dim: all
