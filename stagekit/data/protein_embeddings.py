"""Protein embeddings of genes (gene symbol -> vector) and case-insensitive matching to a species' genes.

Read by `pretrain --preset saturn` (`--protein-emb SPECIES=PATH`) for SATURN-style macrogenes.
Accepted files: `.h5` (datasets `genes` + `embeddings`, or one dataset per gene), `.npz` (the same two
layouts), `.pt` (a dict symbol -> tensor, loaded with `weights_only=True`: a file that pickles other objects is refused,
never unpickled).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stagekit.errors import UserError


@dataclass
class GeneEmbeddings:
    symbols: list[str]  # as written in the file
    vectors: np.ndarray  # (genes, dim) float32
    path: Path

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]


def _stack(path: Path, names: list[str], vectors: list[np.ndarray]) -> GeneEmbeddings:
    if not names:
        raise UserError(f"{path} holds no gene embeddings")
    dims = {np.asarray(v).shape for v in vectors}
    if len(dims) != 1 or len(next(iter(dims))) != 1:
        raise UserError(f"{path}: every gene needs a 1-D vector of one length; found shapes {sorted(dims)[:3]}")
    matrix = np.stack([np.asarray(v, dtype=np.float32) for v in vectors])
    if not np.isfinite(matrix).all():
        raise UserError(f"{path}: embeddings contain NaN or infinite values")
    return GeneEmbeddings([str(n) for n in names], matrix, path)


def _from_table(path: Path, table: dict) -> GeneEmbeddings:
    if "genes" in table and "embeddings" in table:
        genes = [g.decode() if isinstance(g, bytes) else str(g) for g in np.asarray(table["genes"]).tolist()]
        matrix = np.asarray(table["embeddings"])
        if matrix.ndim != 2 or len(genes) != len(matrix):
            raise UserError(f"{path}: 'embeddings' must be genes x dim with one row per entry of 'genes'")
        return _stack(path, genes, list(matrix))
    return _stack(path, list(table), [np.asarray(v) for v in table.values()])


def load_gene_embeddings(path: str | Path) -> GeneEmbeddings:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"protein embedding file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix in (".h5", ".hdf5"):
            import h5py

            with h5py.File(path, "r") as f:
                return _from_table(path, {k: f[k][()] for k in f if isinstance(f[k], h5py.Dataset)})
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                return _from_table(path, {k: f[k] for k in f.files})
        if suffix == ".pt":
            return _from_torch(path)
    except UserError:
        raise
    except Exception as exc:  # unreadable content: one line for the user (library messages span several)
        reason = (str(exc).splitlines() or [""])[0]
        raise UserError(f"{path}: cannot read protein embeddings ({type(exc).__name__}: {reason})"[:300]) from None
    raise UserError(f"{path}: unknown embedding format '{suffix}'; use .h5, .npz or .pt")


def _from_torch(path: Path) -> GeneEmbeddings:
    """A dict of gene symbol -> tensor saved with torch.save, loaded with weights_only=True (tensors and plain
    containers only). torch's refusal of anything else is several lines of advice on loading the file unsafely;
    ours is one line on saving it safely."""
    import pickle

    import torch

    try:
        table = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" in str(exc):  # torch's words for "the pickle names a class or function"
            raise UserError(f"{path} holds pickled Python objects, which stagekit never loads; save a dict of gene "
                            "symbol -> tensor with torch.save (tensors only), or use .h5/.npz") from None
        raise UserError(f"{path} is not a torch.save file of tensors; save a dict of gene symbol -> tensor with "
                        "torch.save, or use .h5/.npz") from None
    if not isinstance(table, dict) or not all(isinstance(v, torch.Tensor) for v in table.values()):
        raise UserError(f"{path}: expected a dict of gene symbol -> tensor")
    return _stack(path, list(table), [v.float().numpy() for v in table.values()])


def match_genes(var_names: list[str], embeddings: GeneEmbeddings, species: str, min_matched: int = 50
                ) -> tuple[np.ndarray, np.ndarray]:
    """Case-insensitive symbol matching: (indices into var_names that have an embedding, their vectors)."""
    lookup = {s.upper(): i for i, s in enumerate(embeddings.symbols)}
    hits = [(g, lookup.get(name.upper())) for g, name in enumerate(var_names)]
    matched = np.array([g for g, e in hits if e is not None], dtype=np.int64)
    if len(matched) < min_matched:
        missing = ", ".join(name for name, (_, e) in zip(var_names, hits, strict=True) if e is None)
        raise UserError(f"species '{species}': only {len(matched)} of {len(var_names)} genes have an embedding in "
                        f"{embeddings.path} (need {min_matched}); unmatched e.g. {missing[:120]}; check that the "
                        "file uses this species' gene symbols")
    return matched, embeddings.vectors[[e for _, e in hits if e is not None]]
