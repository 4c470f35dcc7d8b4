"""Write the tiny inputs and one bundle of every kind with the installed stagekit (run once per release).

    python tests/release_bundles/make_bundles.py [--bundles-only] [--only NAME ...]

A deliberate change to what one command trains rewrites that command's bundle alone (`--bundles-only --only
align`), so the others keep testing that bundles of the earlier release still load and reproduce.

Inputs are cut from the real datasets in ../shared/data and the package's demo cells; the segmentation sample
comes from the shared synthetic Xenium generator.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import anndata
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.release_bundles.commands import BUNDLES, DATA, ENV, commands  # noqa: E402

SHARED = Path(__file__).resolve().parents[3] / "shared"


def _top_genes(adata: anndata.AnnData, n_cells: int, n_genes: int, seed: int = 0) -> anndata.AnnData:
    rng = np.random.default_rng(seed)
    adata = adata[np.sort(rng.choice(adata.n_obs, n_cells, replace=False))]
    top = np.argsort(-np.asarray(adata.X.sum(0)).ravel())[:n_genes]
    return adata[:, np.sort(top)].copy()


def write_inputs() -> None:
    DATA.mkdir(parents=True, exist_ok=True)
    kang = anndata.read_h5ad(SHARED / "data" / "kang2018_muscat_subset.h5ad")
    _top_genes(kang, 240, 80).write_h5ad(DATA / "counts.h5ad", compression="gzip")
    stim = anndata.read_h5ad(SHARED / "data" / "kang2018_muscat_example_sce.h5ad")
    stim.obs["donor"] = stim.obs["sample_id"].astype(str).str[-3:]
    _top_genes(stim, 500, 150).write_h5ad(DATA / "stim.h5ad", compression="gzip")

    from stagekit.data.demo import DEMO_ORTHOLOGS, write_demo_inputs

    with tempfile.TemporaryDirectory() as tmp:
        demo = write_demo_inputs(DEMO_ORTHOLOGS, Path(tmp))
        for species in ("human", "mouse"):
            cells = _top_genes(anndata.read_h5ad(demo[species]), 150, 300)
            cells.write_h5ad(DATA / f"{species}.h5ad", compression="gzip")
            table = np.load(demo[f"{species}_embeddings"])
            keep = np.isin(table["genes"], cells.var_names)
            np.savez_compressed(DATA / f"{species}_embeddings.npz", genes=table["genes"][keep],
                                embeddings=table["embeddings"][keep])
    shutil.rmtree(DATA / "xenium", ignore_errors=True)
    subprocess.run([sys.executable, str(SHARED / "tools" / "make_xenium_synthetic.py"), "--layout", "tissue",
                    "--missed_nuclei", "0.1", "--seed", "0", "--width", "64", "--height", "64", "--out",
                    str(DATA / "xenium")], check=True)


def write_bundles(only: list[str]) -> None:
    BUNDLES.mkdir(parents=True, exist_ok=True)
    for name, args in commands().items():
        if only and name not in only:
            continue
        out = BUNDLES / f"{name}.stk"
        out.unlink(missing_ok=True)
        subprocess.run([sys.executable, "-m", "stagekit", *args, "-o", str(out)], check=True, env=os.environ | ENV)
        print(out, out.stat().st_size)


if __name__ == "__main__":
    if "--bundles-only" not in sys.argv:
        write_inputs()
    write_bundles(sys.argv[sys.argv.index("--only") + 1:] if "--only" in sys.argv else [])
