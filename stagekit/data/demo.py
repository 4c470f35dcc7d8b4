"""The embedded two-species pancreas demo: per-species vocabularies and ortholog-derived gene embeddings.

The shipped cells (Baron et al. 2016 via CIDER) name every gene by its upper-cased mouse symbol. To look like
real data, the cells are split by species and each half gets its own vocabulary through Ensembl 105 orthologs:
mouse cells get their mouse symbols back, human cells the human ortholog symbols. The gene embeddings are
STAND-INS for protein language-model (ESM) embeddings, generated deterministically from the same table: each
ortholog pair shares a base vector plus per-species noise; a gene without an ortholog gets a vector of its own.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from stagekit.data.anndata_io import write_h5ad

DEMO_DATA = Path(__file__).resolve().parent.parent / "demo_data"
DEMO_CELLS = DEMO_DATA / "pancreas_human_mouse.h5ad"
DEMO_ORTHOLOGS = DEMO_DATA / "orthologs_human_mouse_ensembl105.csv"


def read_orthologs(path: Path) -> dict[str, tuple[str, str]]:
    """upper-cased mouse symbol -> (mouse symbol, human symbol), first listed pair kept."""
    table: dict[str, tuple[str, str]] = {}
    with open(path, newline="") as handle:
        for human, mouse in csv.reader(handle):
            if human and mouse:
                table.setdefault(mouse.upper(), (mouse, human))
    return table


def _vector(name: str, dim: int) -> np.ndarray:
    """A fixed pseudo-random unit-variance vector for a name (stable across runs and machines)."""
    seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    return np.random.default_rng(seed).normal(size=dim).astype(np.float32)


def write_demo_inputs(orthologs: Path, out_dir: Path, dim: int = 64, noise: float = 0.3) -> dict[str, Path]:
    """human.h5ad, mouse.h5ad and their embedding files (.npz) in `out_dir`."""
    import anndata

    cells = anndata.read_h5ad(DEMO_CELLS)
    table = read_orthologs(orthologs)
    paths = {}
    for species, column in (("mouse", 0), ("human", 1)):
        part = cells[cells.obs["Batch"].astype(str) == species].copy()
        symbols = [table[g][column] if g in table else (g.capitalize() if species == "mouse" else g)
                   for g in part.var_names]
        keep = ~pd.Index(symbols).duplicated()  # two genes can share an ortholog symbol: keep the first
        part = part[:, keep].copy()
        part.var_names = [s for s, k in zip(symbols, keep, strict=True) if k]
        part.obs["species"] = species
        vectors = []
        for upper, symbol in zip(cells.var_names[keep], part.var_names, strict=True):
            shared = _vector(f"pair:{upper}", dim) if upper in table else _vector(f"{species}:{upper}", dim)
            vectors.append(shared + noise * _vector(f"noise:{species}:{symbol}", dim))
        paths[species] = out_dir / f"{species}.h5ad"
        write_h5ad(part, paths[species])
        paths[f"{species}_embeddings"] = out_dir / f"{species}_embeddings.npz"
        np.savez(paths[f"{species}_embeddings"], genes=np.array(part.var_names, dtype=str),
                 embeddings=np.stack(vectors))
    return paths
