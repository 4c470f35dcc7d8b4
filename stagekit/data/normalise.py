"""Log-normalised counts, the one definition every pipeline and baseline uses: log1p(counts / cell total x 10,000),
the total over every gene of the cell (scanpy's normalize_total(target_sum=1e4) then log1p)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

TARGET_SUM = 1e4


def log_normalised(counts, columns: np.ndarray | None = None) -> sp.csr_matrix:
    """float32 CSR of log1p(counts scaled to TARGET_SUM per cell), on `columns` only (None: every gene); the totals
    are over every gene of `counts`."""
    counts = sp.csr_matrix(counts)
    totals = np.asarray(counts.sum(axis=1)).ravel()
    scale = TARGET_SUM / np.maximum(totals, 1.0)
    selected = sp.csr_matrix(counts if columns is None else counts[:, columns], dtype=np.float32)
    selected = sp.csr_matrix(sp.diags(scale.astype(np.float32)) @ selected)
    np.log1p(selected.data, out=selected.data)
    return selected
