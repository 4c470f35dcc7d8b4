"""Write a synthetic perturbation screen with effects of known size as sparse counts in `.h5ad`, a block of cells
at a time (the dense matrix is never held): N cells x G genes, P perturbations plus controls, C contexts.

The model, per gene g (all draws seeded):
- baseline log-expression b_g ~ N(0, 1.5) (a heavy-tailed profile once normalised), and for each context c a
  shift u_cg ~ N(0, 0.5): contexts differ in every gene;
- each perturbation p changes `--genes-per-effect` genes chosen at random by log fold changes d_pg ~ N(0,
  `--effect`), and acts in context c with a strength s_pc ~ U(0.5, 1.5) (the same genes, a context-dependent
  size); controls have d = 0;
- a cell of context c and perturbation p has a library size L ~ LogNormal(log `--total`, 0.3), cell-level noise
  e_g ~ N(0, `--noise`), mean counts mu = L softmax(b + u_c + s_pc d_p + e), and counts ~ negative binomial with
  mean mu and inverse dispersion `--theta` (a Gamma-Poisson draw).
`--control-fraction` of the cells are controls (`obs.perturbation == "control"`), the rest spread evenly over the
perturbations; contexts are drawn uniformly (`obs.context`). The truth (b, u, d, s) is stored in
`uns["screen_truth"]`. With `--files K` the cells go to K files, cell i to file i mod K, as one screen.

    python benchmarks/make_screen.py OUT.h5ad [--cells 1000000] [--genes 2000] [--perts 500] [--contexts 4]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from stagekit.data.h5ad_stream import StreamedH5ad

_BLOCK = 10_000  # cells drawn at a time


def screen_design(cells: int, perts: int, contexts: int, control_fraction: float, rng: np.random.Generator
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Each cell's perturbation (0 = control, 1..perts) and context."""
    n_control = int(round(cells * control_fraction))
    pert = np.concatenate([np.zeros(n_control, np.int64), 1 + np.arange(cells - n_control) % perts])
    return rng.permutation(pert), rng.integers(0, contexts, cells)


def screen_truth(genes: int, perts: int, contexts: int, genes_per_effect: int, effect: float,
                 rng: np.random.Generator) -> dict[str, np.ndarray]:
    baseline = rng.normal(0, 1.5, genes)
    context_shift = rng.normal(0, 0.5, (contexts, genes))
    effects = np.zeros((perts + 1, genes))
    for p in range(1, perts + 1):
        hit = rng.choice(genes, genes_per_effect, replace=False)
        effects[p, hit] = rng.normal(0, effect, genes_per_effect)
    strength = rng.uniform(0.5, 1.5, (perts + 1, contexts))
    return {"baseline": baseline, "context_shift": context_shift, "effects": effects, "strength": strength}


def draw_counts(truth: dict[str, np.ndarray], pert: np.ndarray, context: np.ndarray, total: float, noise: float,
                theta: float, rng: np.random.Generator) -> sp.csr_matrix:
    """Counts of the cells (pert, context) under the model above."""
    logits = (truth["baseline"] + truth["context_shift"][context]
              + truth["strength"][pert, context][:, None] * truth["effects"][pert]
              + rng.normal(0, noise, (len(pert), truth["baseline"].size)))
    logits -= logits.max(1, keepdims=True)
    profile = np.exp(logits)
    profile /= profile.sum(1, keepdims=True)
    mean = profile * rng.lognormal(np.log(total), 0.3, len(pert))[:, None]
    counts = rng.poisson(rng.gamma(theta, mean / theta))
    return sp.csr_matrix(counts.astype(np.float32))


def write_screen(out: Path, cells: int, genes: int, perts: int, contexts: int, files: int = 1, seed: int = 0,
                 control_fraction: float = 0.1, genes_per_effect: int = 30, effect: float = 1.0,
                 total: float = 1200.0, noise: float = 0.2, theta: float = 5.0) -> list[Path]:
    """The screen's file(s); returns their paths."""
    rng = np.random.default_rng(seed)
    truth = screen_truth(genes, perts, contexts, genes_per_effect, effect, rng)
    pert, context = screen_design(cells, perts, contexts, control_fraction, rng)
    pert_names = np.array(["control"] + [f"P{p:04d}" for p in range(1, perts + 1)])
    var_names = [f"gene{g:05d}" for g in range(genes)]
    paths = [out] if files == 1 else [out.with_name(f"{out.stem}_{k}{out.suffix}") for k in range(files)]
    file_of = np.arange(cells) % files
    for k, path in enumerate(paths):
        rows = np.flatnonzero(file_of == k)
        blocks = [rows[start:start + _BLOCK] for start in range(0, len(rows), _BLOCK)]
        # two passes with the same draws: the first counts the stored values, so that the file's arrays are
        # contiguous as anndata writes them (scattered rows then read only themselves)
        state = rng.bit_generator.state
        nnz = sum(draw_counts(truth, pert[b], context[b], total, noise, theta, rng).nnz for b in blocks)
        rng.bit_generator.state = state
        writer = StreamedH5ad(path, var_names, size=(len(rows), nnz))
        for block in blocks:
            writer.append(draw_counts(truth, pert[block], context[block], total, noise, theta, rng))
        obs = pd.DataFrame({"perturbation": pd.Categorical(pert_names[pert[rows]]),
                            "context": pd.Categorical([f"C{c + 1}" for c in context[rows]])},
                           index=pd.Index([f"cell{i}" for i in rows], dtype=str))
        writer.close(obs, uns={"screen_truth": {name: value.astype(np.float32) for name, value in truth.items()}})
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--cells", type=int, default=1_000_000)
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--perts", type=int, default=500)
    parser.add_argument("--contexts", type=int, default=4)
    parser.add_argument("--files", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--control-fraction", type=float, default=0.1)
    parser.add_argument("--genes-per-effect", type=int, default=30)
    parser.add_argument("--effect", type=float, default=1.0)
    parser.add_argument("--total", type=float, default=1200.0, help="median counts a cell (about 500 non-zero genes)")
    parser.add_argument("--noise", type=float, default=0.2)
    parser.add_argument("--theta", type=float, default=5.0)
    args = parser.parse_args()
    paths = write_screen(args.out, args.cells, args.genes, args.perts, args.contexts, args.files, args.seed,
                         args.control_fraction, args.genes_per_effect, args.effect, args.total, args.noise,
                         args.theta)
    print("\n".join(map(str, paths)))


if __name__ == "__main__":
    main()
