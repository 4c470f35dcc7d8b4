"""The space the transition model works in: log-normalised counts of highly variable genes (the gene space, the
decoder's target) and, by default, their principal components (the embedding), both fitted on the training cells
and stored in the bundle so that every later phase and new data use the same projection. With `data.embed_key` the
embedding is instead one the data already holds (`obsm[KEY]`: STATE's X_state, an scVI latent); the gene space is
then only the decoder's target, absent when the data hold no counts or there is no decoder."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from stagekit.data.anndata_io import CountMatrix, read_obsm
from stagekit.data.hvg import highly_variable_genes
from stagekit.data.normalise import log_normalised
from stagekit.data.pca import blockwise_pca
from stagekit.errors import UserError

EXPRESSION_FLOOR = 0.0  # predicted log-normalised expression is clipped here: a change cannot go below none
_EMBED_BLOCK = 2048  # cells at a time in a pass over the screen: a dense block of 2,000 genes is 16 MB


@dataclass
class ExpressionSpace:
    genes: list[str]  # the gene space, in order
    mean: np.ndarray  # (genes,) of the training cells; empty without PCA
    components: np.ndarray  # (n_components, genes); empty (0, genes) without PCA: the embedding is the genes
    embed_key: str = ""  # obsm key of the data's own embedding the model works in; "": PCA or the genes
    embed_width: int = 0  # that embedding's dimension

    @property
    def n_embedding(self) -> int:
        return self.embed_width if self.embed_key else len(self.components) or len(self.genes)

    @property
    def has_pca(self) -> bool:
        return len(self.components) > 0

    @property
    def decodable(self) -> bool:
        """Whether a gene decoder can map the embedding to genes (an embedding that is the genes needs none)."""
        return bool(self.genes) and (self.has_pca or bool(self.embed_key))

    def gene_columns(self, var_names: list[str], where: str) -> np.ndarray:
        """Where the space's genes are among `var_names` (new data may hold more genes, in any order)."""
        position = {g: i for i, g in enumerate(var_names)}
        missing = [g for g in self.genes if g not in position]
        if missing:
            raise UserError(f"{where}: {len(missing)} of the model's {len(self.genes)} genes are missing (e.g. "
                            f"{', '.join(missing[:3])}); the data must hold every gene the model was fitted on")
        return np.array([position[g] for g in self.genes], np.int64)

    def embed(self, genes: np.ndarray) -> np.ndarray:
        if not self.has_pca:
            return genes.astype(np.float32, copy=False)
        return ((genes - self.mean) @ self.components.T).astype(np.float32)

    def to_genes(self, embedding: np.ndarray) -> np.ndarray:
        """Genes of embedded cells, where the embedding maps back linearly (an obsm embedding does not: its model
        has a gene decoder when it has a gene space at all)."""
        if self.embed_key:
            return np.zeros((*embedding.shape[:-1], len(self.genes)), np.float32)
        if not self.has_pca:
            return embedding
        return (embedding @ self.components + self.mean).astype(np.float32)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"space_mean": self.mean.astype(np.float32), "space_components": self.components.astype(np.float32)}

    @classmethod
    def from_arrays(cls, genes: list[str], arrays: dict[str, np.ndarray], embed_key: str = "", embed_width: int = 0
                    ) -> ExpressionSpace:
        return cls(genes, np.asarray(arrays["space_mean"]), np.asarray(arrays["space_components"]), embed_key,
                   embed_width)


def fit_space(counts: CountMatrix, train_rows: np.ndarray, n_genes: int, n_components: int, embed_key: str = "",
              gene_space: bool = True) -> ExpressionSpace:
    """The space fitted on the cells `train_rows` (sorted), read block by block whether in memory or on disk:
    highly variable genes from two passes, the PCA from more (`stagekit.data.pca.blockwise_pca`: exact, one pass,
    up to 4,096 genes). With `embed_key` no PCA: the embedding is the data's own, and the genes (only if
    `gene_space` and the data hold counts) are the decoder's target."""
    if embed_key:
        width = obsm_embedding(counts, embed_key, 0).shape[1]
        names = ([counts.var_names[i] for i in highly_variable_genes(counts, n_genes, rows=train_rows)]
                 if gene_space and counts.n_vars else [])
        return ExpressionSpace(names, np.zeros(0, np.float32), np.zeros((0, len(names)), np.float32), embed_key,
                               width)
    columns = highly_variable_genes(counts, n_genes, rows=train_rows)
    names = [counts.var_names[i] for i in columns]
    if n_components == 0:
        return ExpressionSpace(names, np.zeros(0, np.float32), np.zeros((0, len(names)), np.float32))
    def blocks():
        return (log_normalised(block, columns) for block in counts.row_blocks(train_rows, _EMBED_BLOCK))

    pcs = blockwise_pca(blocks, len(names), min(n_components, len(train_rows) - 1, len(names)))
    return ExpressionSpace(names, pcs.mean.astype(np.float32), pcs.components.astype(np.float32))


class SpaceGenes:
    """Every cell's log-normalised genes of the space (the gene decoder's targets), as rows on demand: computed
    once for cells in memory, read for each step's cells from disk."""

    def __init__(self, counts: CountMatrix, columns: np.ndarray) -> None:
        self.counts, self.columns = counts, columns
        self.matrix = log_normalised(counts.matrix, columns) if counts.matrix is not None else None

    def rows(self, index: np.ndarray) -> np.ndarray:
        """Dense float32 rows of `index` (any order, repeats allowed)."""
        if self.matrix is not None:
            return self.matrix[index].toarray()
        unique, inverse = np.unique(index, return_inverse=True)
        return self.sparse(unique).toarray()[inverse]

    def sparse(self, rows: np.ndarray) -> sp.csr_matrix:
        """CSR rows of sorted `rows` (on disk: one read per run of nearby rows)."""
        if not len(self.columns):  # no gene space: nothing to read
            return sp.csr_matrix((len(rows), 0), dtype=np.float32)
        if self.matrix is not None:
            return self.matrix[rows]
        return log_normalised(self.counts.sparse_rows(rows), self.columns)

    def label_means(self, rows: np.ndarray, labels: np.ndarray, n_labels: int) -> np.ndarray:
        """(n_labels, genes) float64 mean of the cells `rows` (sorted) of each label (`labels`, one per row, in
        0..n_labels-1), summed over blocks of cells: never more than a block in memory."""
        sums = np.zeros((n_labels, len(self.columns)))
        for start in range(0, len(rows), _EMBED_BLOCK):
            block, of = self.sparse(rows[start:start + _EMBED_BLOCK]), labels[start:start + _EMBED_BLOCK]
            indicator = sp.csr_matrix((np.ones(len(of)), (of, np.arange(len(of)))), shape=(n_labels, len(of)))
            sums += (indicator @ block.astype(np.float64)).toarray()
        counts = np.bincount(labels, minlength=n_labels)
        return sums / np.maximum(counts, 1)[:, None]


def screen_in_space(space: ExpressionSpace, counts: CountMatrix) -> tuple[SpaceGenes, np.ndarray]:
    """The cells' genes of the space (on demand) and every cell's embedding, from one pass over blocks of cells:
    the same values from memory or disk."""
    genes = SpaceGenes(counts, space.gene_columns(counts.var_names, counts.where))
    if space.embed_key:
        return genes, obsm_embedding(counts, space.embed_key, space.embed_width)
    if genes.matrix is not None:
        return genes, embed_all(space, genes.matrix)
    blocks = counts.row_blocks(np.arange(counts.n_obs), _EMBED_BLOCK)
    return genes, _filled(space, counts.n_obs, (log_normalised(b, genes.columns) for b in blocks))


def embed_all(space: ExpressionSpace, genes: sp.csr_matrix) -> np.ndarray:
    return _filled(space, genes.shape[0], (genes[i:i + _EMBED_BLOCK] for i in range(0, genes.shape[0], _EMBED_BLOCK)))


def _filled(space: ExpressionSpace, n_cells: int, blocks: Iterable[sp.csr_matrix]) -> np.ndarray:
    """(n_cells, embedding) float32 of consecutive blocks of cells, written into one array as they come (a list of
    parts joined at the end would hold the embedding twice: 400 MB at 1,000,000 cells in 50 components)."""
    out = np.empty((n_cells, space.n_embedding), np.float32)
    start = 0
    for block in blocks:
        out[start:start + block.shape[0]] = space.embed(block.toarray())
        start += block.shape[0]
    return out


def obsm_embedding(counts: CountMatrix, key: str, width: int) -> np.ndarray:
    """float32 obsm[key] of every cell of the file(s) `counts` came from, in order; `width` (0: any) is the
    dimension a trained model works in."""
    files = [Path(p) for p, _, _ in counts.sources] or [counts.path]
    parts = [read_obsm(path, key) for path in files]
    for path, part in zip(files, parts, strict=True):
        if part.shape[1] != parts[0].shape[1]:
            raise UserError(f"{path}: obsm['{key}'] has {part.shape[1]} dimensions where {files[0]} has "
                            f"{parts[0].shape[1]}; every file of one screen needs the same embedding")
        if width and part.shape[1] != width:
            raise UserError(f"{path}: obsm['{key}'] has {part.shape[1]} dimensions; the model works in a "
                            f"{width}-dimensional embedding: give the embedding it was trained in (--embed-key)")
    return np.concatenate(parts)
