"""stagekit's cross-species embeddings and SATURN's own, scored the same way with scib-metrics on the demo cells.

For each seed: the demo chain (`pretrain -p saturn-small` -> `align` 20 epochs -> `extract`) gives the align cells
with X_align, X_pretrain and the unintegrated reference X_pca_shared_genes; the unmodified SATURN
(`saturn_reference/run_saturn.sh`, its own venv, torch 2.13.0 pinned; its defaults except M = 2000 macrogenes and
2000 highly variable genes, as saturn-small) trains on the same two files and protein embeddings with the same
seed, and its final embedding joins the same cells by species and name. scib-metrics' Benchmarker then scores all
four embeddings at once (species as the batch, the reference as the pre-integration embedding), exactly as
`stagekit evaluate` does.

    SATURN_SETUP=1 python benchmarks/saturn_demo_scib.py [--seeds 0 1 2] [--workdir DIR] [--no-saturn]
        [--pretrain-set KEY=VALUE ...] [--align-set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from _chain import stagekit

HERE = Path(__file__).resolve().parent
SUMMARY = ("Bio conservation", "Batch correction", "Total")
NAMES = {"X_pca_shared_genes": "shared-gene PCA", "X_pretrain": "stagekit pretrain", "X_align": "stagekit align",
         "X_saturn": "SATURN (reference code)"}


def saturn_embedding(inputs: dict, folder: Path, seed: int) -> dict[tuple[str, str], np.ndarray]:
    """(species, cell name) -> SATURN's final embedding of that cell."""
    import anndata

    data = folder / "saturn_in"
    data.mkdir(parents=True, exist_ok=True)
    for species in ("human", "mouse"):
        adata = anndata.read_h5ad(inputs[species])
        adata.obs["cell_type"] = adata.obs["Group"].astype(str)
        adata.write_h5ad(data / f"{species}.h5ad")
        shutil.copy(inputs[f"{species}_embeddings"], data / f"{species}.npz")
    env = os.environ | {"SATURN_SEED": str(seed), "WORK": str(folder / "saturn_work"), "SATURN_THREADS": "2"}
    subprocess.run(["bash", str(HERE / "saturn_reference" / "run_saturn.sh"), str(data), "2000", "2000", "256",
                    "256", "200", "50"], check=True, env=env, stdout=subprocess.DEVNULL)
    final = [p for p in (folder / "saturn_work").rglob("*.h5ad")
             if not p.name.endswith(("_pretrain.h5ad", "_ep_latest.h5ad")) and "saturn_in" not in p.parts]
    out = anndata.read_h5ad(sorted(final, key=lambda p: p.stat().st_mtime)[-1])
    return {(str(s), str(n)): np.asarray(x) for s, n, x in zip(out.obs["species"], out.obs_names, out.X, strict=True)}


def main() -> None:
    import anndata

    from stagekit.data.demo import DEMO_ORTHOLOGS, write_demo_inputs
    from stagekit.metrics.integration import label_transfer
    from stagekit.stages.cell_report import _read_cells
    from stagekit.stages.cross_species.report import scib_scores

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--pretrain-set", nargs="*", default=[], help="KEY=VALUE overrides of stagekit's pretrain")
    parser.add_argument("--align-set", nargs="*", default=["training.epochs=20"],
                        help="KEY=VALUE overrides of stagekit's align (default: the demo's 20 epochs)")
    parser.add_argument("--no-saturn", action="store_true", help="score stagekit's embeddings only")
    args = parser.parse_args()
    pretrain_set = [a for kv in args.pretrain_set for a in ("--set", kv)]
    align_set = [a for kv in args.align_set for a in ("--set", kv)]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="stagekit-saturn-scib-"))
    work.mkdir(parents=True, exist_ok=True)
    inputs = write_demo_inputs(DEMO_ORTHOLOGS, work)
    results = {}
    for seed in args.seeds:
        run = work / f"seed{seed}"
        run.mkdir(exist_ok=True)
        stagekit("pretrain", "-p", "saturn-small", inputs["human"], inputs["mouse"], "--protein-emb",
                 f"human={inputs['human_embeddings']}", "--protein-emb", f"mouse={inputs['mouse_embeddings']}",
                 "--label-key", "Group", "--seed", seed, *pretrain_set, "-q", "-o", run / "pretrain.stk")
        stagekit("align", run / "pretrain.stk", "--set", "training.batch_size=256", *align_set, "--seed", seed, "-q",
                 "-o", run / "align.stk")
        with contextlib.redirect_stderr(io.StringIO()):
            stagekit("extract", run / "align.stk", "-o", run / "align.h5ad")
        cells = anndata.read_h5ad(run / "align.h5ad")
        if not args.no_saturn:
            saturn = saturn_embedding(inputs, run, seed)
            keys = list(zip(cells.obs["species"].astype(str), cells.obs["stagekit_cell"].astype(str), strict=True))
            missing = [k for k in keys if k not in saturn]
            if missing:
                raise SystemExit(f"SATURN's output lacks {len(missing)} cells, e.g. {missing[0]}")
            cells.obsm["X_saturn"] = np.stack([saturn[k] for k in keys]).astype(np.float32)
        found = _read_cells(cells, str(run / "align.h5ad"), "Group")
        results[seed] = scib_scores(found, tuple(NAMES))
        species, labels = found.column("species"), found.labels
        for key in results[seed]:  # label transfer both ways, as `evaluate` reports it
            transfer = label_transfer(found.obsm[key], species, labels)
            results[seed][key] |= {f"transfer {pair}": v["balanced_accuracy"] for pair, v in transfer.items()}
        print(f"seed {seed}: " + "  ".join(f"{NAMES[k]} {v['Total']:.3f}" for k, v in results[seed].items()),
              flush=True)
    shown = (*SUMMARY, "transfer human->mouse", "transfer mouse->human")
    print(f"\nscib-metrics (unscaled) and label transfer (balanced accuracy), mean over seeds {args.seeds} (min-max)")
    print(f"{'embedding':26s}" + "".join(f"{m:>24s}" for m in shown))
    for key in results[args.seeds[0]]:
        values = {m: [results[s][key][m] for s in args.seeds] for m in shown}
        print(f"{NAMES[key]:26s}" + "".join(f"{np.mean(v):>10.3f} ({min(v):.3f}-{max(v):.3f})"
                                            for v in values.values()))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
