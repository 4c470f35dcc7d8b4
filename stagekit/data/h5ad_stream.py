"""Write an `.h5ad` whose X (CSR) is appended a block of rows at a time, so a file larger than memory is never
held whole; obs, var, obsm and uns are written when it is closed, in anndata's own encoding."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

_ENCODING = {"encoding-type": "anndata", "encoding-version": "0.1.0"}


class StreamedH5ad:
    """`append` CSR blocks of X in row order, then `close(obs, ...)` with one obs row per appended row.

    Without `size` the arrays grow in chunks of 64k values (a file read in order, as extract's); with `size` =
    (rows, stored values) known in advance they are contiguous, as anndata writes them, so that reading scattered
    rows later reads only those rows (a chunked file reads a whole chunk for each)."""

    def __init__(self, path: Path, var_names: list[str], dtype: type = np.float32,
                 size: tuple[int, int] | None = None) -> None:
        self.path, self.var_names, self.n_obs, self.nnz = Path(path), list(var_names), 0, 0
        self.file = h5py.File(self.path, "w")
        self.file.attrs.update(_ENCODING)
        x = self.file.create_group("X")
        x.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0"})
        if size is None:
            grow = {"maxshape": (None,), "chunks": (1 << 16,)}
            shapes = {"data": 0, "indices": 0, "indptr": 1}
        else:
            grow, shapes = {}, {"data": size[1], "indices": size[1], "indptr": size[0] + 1}
        self.fixed = size is not None
        self.data = x.create_dataset("data", (shapes["data"],), dtype=dtype, **grow)
        self.indices = x.create_dataset("indices", (shapes["indices"],), dtype=np.int32, **grow)
        self.indptr = x.create_dataset("indptr", (shapes["indptr"],), dtype=np.int64, **grow)
        self.indptr[0] = 0

    def append(self, block: sp.csr_matrix | np.ndarray) -> None:
        """Rows after those appended so far (a dense block is stored sparse)."""
        block = sp.csr_matrix(block, dtype=self.data.dtype)
        if block.shape[1] != len(self.var_names):
            raise ValueError(f"a block of {block.shape[1]} columns for {len(self.var_names)} genes")
        block.sort_indices()
        nnz, rows = self.nnz, block.shape[0]
        if not self.fixed:
            self.data.resize((nnz + block.nnz,))
            self.indices.resize((nnz + block.nnz,))
            self.indptr.resize((self.n_obs + rows + 1,))
        elif nnz + block.nnz > self.data.shape[0] or self.n_obs + rows + 1 > self.indptr.shape[0]:
            raise ValueError(f"more rows or values than the {self.indptr.shape[0] - 1} rows and "
                             f"{self.data.shape[0]} values announced")
        self.data[nnz:nnz + block.nnz] = block.data
        self.indices[nnz:nnz + block.nnz] = block.indices
        self.indptr[self.n_obs + 1:self.n_obs + rows + 1] = block.indptr[1:].astype(np.int64) + nnz
        self.n_obs, self.nnz = self.n_obs + rows, nnz + block.nnz

    def close(self, obs: pd.DataFrame, obsm: dict[str, np.ndarray] | None = None,
              uns: dict[str, Any] | None = None) -> None:
        """Write the annotations (obs rows in the order the rows were appended) and close the file."""
        from anndata.io import write_elem

        if len(obs) != self.n_obs:
            raise ValueError(f"{len(obs)} obs rows for {self.n_obs} appended rows")
        if self.fixed and (self.nnz, self.n_obs + 1) != (self.data.shape[0], self.indptr.shape[0]):
            raise ValueError(f"{self.n_obs} rows and {self.nnz} values appended of the size announced")
        self.file["X"].attrs["shape"] = np.array([self.n_obs, len(self.var_names)])
        obs = obs.copy()
        for column in obs.columns:  # as anndata writes them: string columns become categoricals
            if obs[column].dtype == object and obs[column].map(type).eq(str).all():
                obs[column] = pd.Categorical(obs[column])
        write_elem(self.file, "obs", obs)
        write_elem(self.file, "var", pd.DataFrame(index=pd.Index(self.var_names, dtype=str)))
        write_elem(self.file, "obsm", dict(obsm or {}))
        write_elem(self.file, "uns", dict(uns or {}))
        for empty in ("layers", "obsp", "varm", "varp"):
            write_elem(self.file, empty, {})
        self.file.close()

    def abort(self) -> None:
        """Close without finishing (the caller removes the file)."""
        self.file.close()
