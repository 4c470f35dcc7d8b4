"""Convert stagekit's synthetic species folder to SATURN's input format.

Input folder: {species}.h5ad (cells x genes counts, obs['cell_type']) and {species}.npz (arrays `genes`,
`embeddings`, one protein-embedding row per gene).
Output folder: {species}_gene_embeddings.pt (dict gene name -> 1-D float32 tensor, the format
data/gene_embeddings.py:load_gene_embeddings_adata expects via torch.load) and run.csv with the columns
species,path,embedding_path that train-saturn.py --in_data reads (index_col="species").
The h5ad files are used in place (SATURN reads `path` with scanpy.read); nothing about the counts is changed.
"""
import argparse
import csv
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("out_dir", type=Path)
    args = ap.parse_args()
    data_dir, out_dir = args.data_dir.resolve(), args.out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    species = sorted(p.stem for p in data_dir.glob("*.h5ad") if (data_dir / f"{p.stem}.npz").exists())
    if len(species) < 2:
        raise SystemExit(f"need >= 2 species with both .h5ad and .npz in {data_dir}, found {species}")
    rows = []
    for sp in species:
        z = np.load(data_dir / f"{sp}.npz")
        genes, emb = [str(g) for g in z["genes"]], np.asarray(z["embeddings"], dtype=np.float32)
        if len(genes) != emb.shape[0]:
            raise SystemExit(f"{sp}: {len(genes)} genes but {emb.shape[0]} embedding rows")
        if len({g.lower() for g in genes}) != len(genes):
            raise SystemExit(f"{sp}: gene names collide after lower-casing (SATURN lower-cases them)")
        table = {g: torch.from_numpy(emb[i].copy()) for i, g in enumerate(genes)}
        pt = out_dir / f"{sp}_gene_embeddings.pt"
        torch.save(table, pt)
        rows.append({"species": sp, "path": str(data_dir / f"{sp}.h5ad"), "embedding_path": str(pt)})
        print(f"{sp}: {len(genes)} genes x {emb.shape[1]} dims -> {pt}")
    with open(out_dir / "run.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["species", "path", "embedding_path"])
        w.writeheader()
        w.writerows(rows)
    print(f"run csv -> {out_dir / 'run.csv'}")


if __name__ == "__main__":
    main()
