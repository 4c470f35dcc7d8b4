"""Load count matrices from `.h5ad`, in memory or backed on disk, with validation that names what is wrong."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from stagekit.bundle import file_sha256
from stagekit.errors import UserError

_CHUNK = 1 << 22  # values checked per read when validating on disk
_GAP = 256  # rows between two wanted rows beyond which a backed read splits in two
_SPAN = 8192  # rows one backed read covers at most: a long run of nearby wanted rows is read in windows


def _ranges(starts: np.ndarray, stops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted disjoint ranges [starts, stops) with the empty ones dropped and touching ones merged."""
    keep = stops > starts
    starts, stops = starts[keep], stops[keep]
    if not len(starts):
        return starts, stops
    first = np.concatenate([[True], starts[1:] != stops[:-1]])  # where a merged range begins
    return starts[first], stops[np.concatenate([first[1:], [True]])]


_RANGES_PER_READ = 128  # HDF5 builds a union of hyperslabs in quadratic time: 32,000 ranges 37 s at once, 0.3 s


def _read_ranges(dataset: h5py.Dataset, starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """The values of a 1-d dataset in sorted disjoint ranges, in order: one HDF5 read of the union of every
    _RANGES_PER_READ ranges (a read per range costs a millisecond of h5py overhead, most of a step that reads
    hundreds of scattered cells)."""
    out = np.empty(int((stops - starts).sum()), dataset.dtype)
    ends = np.cumsum(stops - starts)
    for first in range(0, len(starts), _RANGES_PER_READ):
        last = min(first + _RANGES_PER_READ, len(starts))
        at, to = int(ends[first - 1]) if first else 0, int(ends[last - 1])
        if to == at:
            continue
        space = dataset.id.get_space()
        space.select_none()
        for lo, hi in zip(starts[first:last].tolist(), stops[first:last].tolist(), strict=True):
            space.select_hyperslab((lo,), (hi - lo,), op=h5py.h5s.SELECT_OR)
        dataset.id.read(h5py.h5s.create_simple((to - at,)), space, out[at:to])
    return out


@dataclass
class CountMatrix:
    """Rows of a cells x genes matrix: an in-memory CSR, or an HDF5 group/dataset read in blocks.

    A backed matrix may show a subset of the stored genes (`columns`, indices into the stored columns), so a
    gene selection never needs the whole matrix in memory.
    """

    path: Path
    key: str  # "X" or "layers/NAME"
    obs: pd.DataFrame
    var_names: list[str]
    matrix: sp.csr_matrix | None = None  # in memory
    backed: bool = False
    columns: np.ndarray | None = None  # backed: the stored columns shown, in order; None for all
    stored_n_vars: int = 0  # backed: columns stored in the file
    # sha256 of the file, computed by the first fingerprint() and shared with matrices derived from this one:
    # fingerprints are taken at every checkpoint, and hashing a large file each time costs minutes
    file_hash: str | None = field(default=None, repr=False, compare=False)
    # cells of several files (see `concat_counts`): (path, sha256, n_obs) of each, in order; `path` is the first
    sources: tuple[tuple[str, str, int], ...] = ()
    # backed cells of several files: each file's matrix on this one's genes, in order; reads go to them
    parts: tuple[CountMatrix, ...] = field(default=(), repr=False)

    @property
    def where(self) -> str:
        """The file(s) in messages."""
        return str(self.path) + (f" (+{len(self.sources) - 1} more files)" if self.sources else "")

    @property
    def n_obs(self) -> int:
        return len(self.obs)

    @property
    def n_vars(self) -> int:
        return len(self.var_names)

    def select_genes(self, columns: np.ndarray) -> CountMatrix:
        """The same cells on a subset of this matrix's genes (`columns` index its current genes)."""
        columns = np.asarray(columns, dtype=np.int64)
        names = [self.var_names[i] for i in columns]
        if self.parts:
            return CountMatrix(self.path, self.key, self.obs, names, backed=True, file_hash=self.file_hash,
                               sources=self.sources, parts=tuple(p.select_genes(columns) for p in self.parts))
        if self.matrix is not None:
            return CountMatrix(self.path, self.key, self.obs, names, matrix=sp.csr_matrix(self.matrix[:, columns]),
                               file_hash=self.file_hash)
        stored = columns if self.columns is None else self.columns[columns]
        return CountMatrix(self.path, self.key, self.obs, names, backed=True, columns=stored,
                           stored_n_vars=self.stored_n_vars, file_hash=self.file_hash)

    def block(self, start: int, stop: int) -> sp.csr_matrix:
        """Cells start..stop-1 as float32 CSR (one contiguous disk read when backed)."""
        if self.matrix is not None:
            return self.matrix[start:stop]
        if self.parts:
            return self._across_parts(np.arange(start, stop), lambda part, rows: part.block(rows[0], rows[-1] + 1))
        with h5py.File(self.path, "r") as f:
            return self._read(f[self.key], start, stop)

    def _across_parts(self, index: np.ndarray, read) -> sp.csr_matrix:
        """Sorted rows of several backed files: `read(part, its rows)` for each file holding some, stacked."""
        offsets = np.cumsum([0, *(part.n_obs for part in self.parts)])
        pieces = []
        for part, lo, hi in zip(self.parts, offsets[:-1], offsets[1:], strict=True):
            rows = index[(index >= lo) & (index < hi)] - lo
            if len(rows):
                pieces.append(read(part, rows))
        if not pieces:
            return sp.csr_matrix((0, self.n_vars), dtype=np.float32)
        return sp.csr_matrix(sp.vstack(pieces))

    def _read(self, node: h5py.Group | h5py.Dataset, start: int, stop: int) -> sp.csr_matrix:
        if isinstance(node, h5py.Dataset):
            block = sp.csr_matrix(node[start:stop].astype(np.float32))
        else:
            indptr = node["indptr"][start:stop + 1]
            lo, hi = int(indptr[0]), int(indptr[-1])
            block = sp.csr_matrix((node["data"][lo:hi].astype(np.float32), node["indices"][lo:hi],
                                   indptr - lo), shape=(stop - start, self.stored_n_vars))
        return block if self.columns is None else block[:, self.columns]

    def blocks(self, size: int = 8192):
        """Every cell in order, as CSR blocks of `size` cells."""
        for start in range(0, self.n_obs, size):
            yield self.block(start, min(start + size, self.n_obs))

    def sparse_rows(self, index: np.ndarray) -> sp.csr_matrix:
        """Float32 CSR rows for sorted `index`: one fancy-index in memory; on disk one read per run of nearby rows
        (gaps over `_GAP` rows start a new read, so scattered rows never pull in the cells between; a run is read
        in windows of at most `_SPAN` rows, so a dense selection never holds the whole file)."""
        if self.matrix is not None:
            return self.matrix[index]
        if self.parts:
            return self._across_parts(index, lambda part, rows: part.sparse_rows(rows))
        with h5py.File(self.path, "r") as f:
            node = f[self.key]
            if isinstance(node, h5py.Group):
                return self._csr_rows(node, index)
            runs = [window for run in np.split(index, np.flatnonzero(np.diff(index) > _GAP) + 1)
                    for window in np.split(run, np.flatnonzero(np.diff((run - run[0]) // _SPAN)) + 1)]
            return sp.csr_matrix(sp.vstack([self._read(node, int(r[0]), int(r[-1]) + 1)[r - r[0]] for r in runs]))

    def _csr_rows(self, node: h5py.Group, index: np.ndarray) -> sp.csr_matrix:
        """Sorted rows of a stored CSR matrix: their values and column indices in one HDF5 read each (the union of
        their ranges), whether the rows lie together or far apart."""
        unique, inverse = np.unique(index, return_inverse=True)
        if len(unique) < len(index):  # a row asked for twice is read once
            return self._csr_rows(node, unique)[inverse]
        ends = np.unique(np.concatenate([index, index + 1]))
        pointers = _read_ranges(node["indptr"], *_ranges(ends, ends + 1))
        lo, hi = pointers[np.searchsorted(ends, index)], pointers[np.searchsorted(ends, index + 1)]
        starts, stops = _ranges(lo, hi)
        block = sp.csr_matrix((_read_ranges(node["data"], starts, stops).astype(np.float32),
                               _read_ranges(node["indices"], starts, stops),
                               np.concatenate([[0], np.cumsum(hi - lo)])), shape=(len(index), self.stored_n_vars))
        return block if self.columns is None else block[:, self.columns]

    def rows(self, index: np.ndarray) -> np.ndarray:
        """Dense float32 rows for sorted `index` (see `sparse_rows`)."""
        return self.sparse_rows(index).toarray()

    def row_blocks(self, index: np.ndarray, size: int = 8192):
        """The cells `index` (sorted), in order, as CSR blocks of `size` cells: the same blocks in memory and on
        disk, so what is summed over them is summed in the same order."""
        for start in range(0, len(index), size):
            yield self.sparse_rows(index[start:start + size])

    def rows_in_order(self, index: np.ndarray) -> np.ndarray:
        """Like `rows`, for an index in any order and with repeats (read sorted, then put back in order)."""
        unique, inverse = np.unique(index, return_inverse=True)
        return self.rows(unique)[inverse]

    def fingerprint(self) -> dict:
        """What the bundle records about its input; the file is hashed once per matrix (see `file_hash`)."""
        if self.file_hash is None:
            self.file_hash = file_sha256(self.path)
        genes = hashlib.sha256("\n".join(self.var_names).encode()).hexdigest()
        found = {"path": str(self.path.resolve()), "sha256": self.file_hash, "n_obs": self.n_obs,
                 "n_vars": self.n_vars, "genes_sha256": genes, "matrix": self.key}
        if self.sources:
            found |= {"files": "\n".join(p for p, _, _ in self.sources),
                      "files_sha256": "\n".join(h for _, h, _ in self.sources),
                      "files_n_obs": "\n".join(str(n) for _, _, n in self.sources)}
        return found


def read_anndata(path: str | Path, backed: bool = False):
    """The AnnData in `path` (backed read-only or in memory); a UserError when it is missing or unreadable."""
    import anndata

    path = Path(path)
    if not path.is_file():
        raise UserError(f"data file {path} does not exist")
    try:
        return anndata.read_h5ad(path, backed="r" if backed else None)
    except Exception as exc:  # anndata raises many types for a bad file; all mean the same to a user
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise UserError(f"{path} is not a readable .h5ad file ({reason}); give an AnnData .h5ad") from None


def load_counts(path: str | Path, layer: str = "", obs_keys: tuple[str, ...] = (), backed: bool = False,
                require_counts: bool = True, adata=None, optional: bool = False) -> CountMatrix:
    """Read and validate. Every failure is a UserError naming the file, key or column. `adata`: the file's
    AnnData already read into memory by the caller (it is not read again; `backed` is then ignored). `optional`:
    a file whose X is empty (no layer named) gives its cells with no genes (a model that reads an obsm
    embedding)."""
    path = Path(path)
    backed = backed and adata is None
    if adata is None:
        adata = read_anndata(path, backed)
    try:
        key = "X"
        if layer:
            if layer not in adata.layers:
                available = ", ".join(adata.layers) or "none"
                raise UserError(f"{path}: layer '{layer}' not found (layers: {available}); set data.layer")
            key = f"layers/{layer}"
        elif _x_missing(adata) and optional:
            obs = adata.obs.copy()
            return CountMatrix(path, "X", obs, [], matrix=sp.csr_matrix((len(obs), 0), dtype=np.float32))
        elif _x_missing(adata):
            raise UserError(f"{path}: X is empty; name the counts layer with --set data.layer=NAME")
        obs = adata.obs.copy()
        for column in obs_keys:
            if column not in obs.columns:
                close = ", ".join(list(obs.columns)[:8])
                raise UserError(f"{path}: obs column '{column}' not found (columns: {close})")
            missing = int(obs[column].isna().sum())
            if missing:
                raise UserError(f"{path}: obs column '{column}' has {missing} missing values; fill or drop them")
        if adata.n_obs == 0 or adata.n_vars == 0:
            raise UserError(f"{path}: the matrix is empty ({adata.n_obs} cells x {adata.n_vars} genes)")
        var_names = [str(v) for v in adata.var_names]
        if backed:
            counts = CountMatrix(path, key, obs, var_names, backed=True, stored_n_vars=len(var_names))
        else:
            matrix = adata.layers[layer] if layer else adata.X
            matrix = sp.csr_matrix(matrix, dtype=np.float32)
            counts = CountMatrix(path, key, obs, var_names, matrix=matrix)
    finally:
        if backed:
            adata.file.close()
    _validate_values(counts, require_counts)
    return counts


def _x_missing(adata) -> bool:
    try:
        return adata.X is None
    except KeyError:  # a file written without X, opened backed
        return True


def read_obsm(path: Path, key: str) -> np.ndarray:
    """obsm[key] of an .h5ad as float32 (cells x dimensions), read on its own; a UserError naming the file and key
    when it is absent, not a dense 2-d array, or not finite."""
    with h5py.File(path, "r") as f:
        group = f.get("obsm")
        if not isinstance(group, h5py.Group) or key not in group:
            found = ", ".join(group) if isinstance(group, h5py.Group) and len(group) else "none"
            raise UserError(f"{path}: obsm['{key}'] not found (obsm keys: {found}); name one with --embed-key")
        node = group[key]
        if not isinstance(node, h5py.Dataset) or node.ndim != 2:
            raise UserError(f"{path}: obsm['{key}'] is not a dense cells x dimensions array; store the embedding "
                            "as one (e.g. adata.obsm[key] = np.asarray(...))")
        values = node[...].astype(np.float32)
    if not np.isfinite(values).all():
        raise UserError(f"{path}: obsm['{key}'] contains NaN or infinite values; clean the embedding first")
    return values


def concat_counts(parts: list[CountMatrix]) -> CountMatrix:
    """Cells of several files as one matrix, in file order, on the first file's genes: in memory, or backed (each
    file read where its cells are). Every file must hold the same genes (any order): a gene missing from one file
    would read as zero counts there. Cell names repeated across files get the file's stem as a prefix
    (`stem:name`; `i-stem:name` where stems repeat)."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    matrices = []
    for part in parts:
        if (part.matrix is None) != (first.matrix is None):
            raise ValueError("concat_counts needs all matrices in memory or all backed")
        if part.key != first.key:
            raise UserError(f"{part.path}: counts in {part.key} where {first.path} has them in {first.key}")
        if part.var_names != first.var_names:
            position = {g: i for i, g in enumerate(part.var_names)}
            missing = [g for g in first.var_names if g not in position]
            extra = sorted(set(part.var_names) - set(first.var_names))
            if missing or extra:
                shown = f"lacks {', '.join(missing[:3])}" if missing else f"has extra genes {', '.join(extra[:3])}"
                raise UserError(f"{part.path}: genes differ from {first.path} ({shown}; {len(missing)} missing, "
                                f"{len(extra)} extra); subset every file to the same genes")
            part = part.select_genes(np.array([position[g] for g in first.var_names]))
        matrices.append(part.matrix if part.matrix is not None else part)
    names = [str(n) for part in parts for n in part.obs.index]
    obs = pd.concat([part.obs for part in parts], join="outer")
    if len(set(names)) < len(names):
        stems = [part.path.stem for part in parts]
        labels = stems if len(set(stems)) == len(stems) else [f"{i}-{stem}" for i, stem in enumerate(stems)]
        obs.index = [f"{label}:{n}" for label, part in zip(labels, parts, strict=True) for n in part.obs.index]
    sources = tuple((str(p.path.resolve()), p.fingerprint()["sha256"], p.n_obs) for p in parts)
    combined = hashlib.sha256("\n".join(h for _, h, _ in sources).encode()).hexdigest()
    if first.matrix is None:
        return CountMatrix(first.path, first.key, obs, first.var_names, backed=True, file_hash=combined,
                           sources=sources, parts=tuple(matrices))
    return CountMatrix(first.path, first.key, obs, first.var_names, matrix=sp.csr_matrix(sp.vstack(matrices)),
                       file_hash=combined, sources=sources)


def _value_chunks(counts: CountMatrix):
    if counts.matrix is not None:
        yield counts.matrix.data
        return
    with h5py.File(counts.path, "r") as f:
        node = f[counts.key]
        data = node if isinstance(node, h5py.Dataset) else node["data"]
        for start in range(0, data.shape[0], max(1, _CHUNK // max(1, int(np.prod(data.shape[1:]))))):
            yield np.asarray(data[start:start + _CHUNK], dtype=np.float64).ravel()


def _validate_values(counts: CountMatrix, require_counts: bool) -> None:
    where = f"{counts.path} ({counts.key})"
    any_nonzero = False
    for values in _value_chunks(counts):
        any_nonzero = any_nonzero or bool(values.any())
        if not np.isfinite(values).all():
            raise UserError(f"{where} contains NaN or infinite values; clean the matrix first")
        if require_counts:
            if (values < 0).any():
                raise UserError(f"{where} has negative values; this model needs raw counts "
                                "(name the raw layer with --set data.layer=NAME)")
            if not np.array_equal(values, np.round(values)):
                raise UserError(f"{where} has non-integer values; this model needs raw counts "
                                "(name the raw layer with --set data.layer=NAME)")
    if not any_nonzero:  # nothing to learn from, and normalising by totals would divide by zero
        what = "every cell has zero counts" if require_counts else "every value is zero"
        raise UserError(f"{where}: {what}; check that this is the right file and layer "
                        "(name another layer with --set data.layer=NAME)")


def split_by_column(counts: CountMatrix, column: str) -> dict[str, CountMatrix]:
    """In-memory cells grouped by the values of an obs column (e.g. species), in sorted order. A group whose
    cells all have zero counts is a UserError (each group is modelled on its own)."""
    values = counts.obs[column].astype(str).to_numpy()
    groups = {name: CountMatrix(counts.path, counts.key, counts.obs.iloc[rows], counts.var_names,
                                matrix=counts.matrix[rows], file_hash=counts.file_hash)
              for name in sorted(set(values)) for rows in [np.flatnonzero(values == name)]}
    for name, group in groups.items():
        if not group.matrix.data.any():
            raise UserError(f"{counts.path} ({counts.key}): every cell of obs column '{column}' = '{name}' has "
                            "zero counts; drop those cells or check the layer (--set data.layer=NAME)")
    return groups


def category_codes(obs: pd.DataFrame, column: str) -> tuple[np.ndarray, list[str]]:
    """Integer codes and category names of an obs column, in a stable (sorted) order."""
    values = obs[column].astype(str)
    names = sorted(values.unique())
    lookup = {name: i for i, name in enumerate(names)}
    return values.map(lookup).to_numpy(np.int64), names


def write_h5ad(adata, path: Path) -> None:
    """Write an AnnData readable by every anndata version: pandas' nullable/Arrow string columns and indexes
    (the default from pandas 3) are written as plain strings, which older anndata can read and newer anndata
    otherwise refuses to write unless told to."""
    for frame in (adata.obs, adata.var):
        frame.index = frame.index.astype(object)
        for column in frame.columns:
            if pd.api.types.is_string_dtype(frame[column].dtype) and not isinstance(frame[column].dtype,
                                                                                    pd.CategoricalDtype):
                frame[column] = frame[column].astype(object)
    adata.write_h5ad(path)
