"""Cells of a transition bundle for `extract` and `evaluate`: for every held-out (perturbation, context) group the
predicted cells beside the observed ones, the controls they were predicted from, and (where the group has
training cells) a resample of those, the reference a model of seen perturbations can at best reach; or, with
`--pert NAME`, that perturbation predicted for every cell of a control file.

X is the gene space (log-normalised counts of the model's genes), obsm["X_pert_embedding"] the embedding;
obs["stagekit_source"] says what each cell is: predicted | observed | control | reference; obs["stagekit_cell"] is
the data's cell name (of a predicted cell: the control cell it was predicted from). uns["stagekit_shifts"]
holds the training shifts (mean perturbed minus mean control) that evaluate's baselines add to the controls.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from stagekit.bundle import Bundle
from stagekit.data.anndata_io import CountMatrix, load_counts, read_anndata
from stagekit.data.cell_sets import CellSet, group_cells, group_sets
from stagekit.errors import UserError
from stagekit.stages.perturbation.screen import TEST, TRAIN, Screen
from stagekit.stages.perturbation.space import log_normalised
from stagekit.stages.perturbation.stage import TransitionBundle, embed_all, load_transition
from stagekit.stages.phase import bundle_data_path

SOURCES = ("predicted", "observed", "control", "reference")
_SETS_PER_CALL = 64


def predict(tx: TransitionBundle, embedding: np.ndarray, genes: sp.csr_matrix, sets: list[CellSet],
            pert: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Predicted (embedding, genes) of every cell of `sets`, in order (`pert` overrides the sets' own)."""
    out_embedding, out_genes = [], []
    with torch.no_grad():
        for i in range(0, len(sets), _SETS_PER_CALL):
            by_len: dict[int, list[CellSet]] = {}
            for s in sets[i:i + _SETS_PER_CALL]:  # one call per set length (a control file's last set may be short)
                by_len.setdefault(len(s.controls), []).append(s)
            for same in by_len.values():
                controls = np.stack([s.controls for s in same])
                basal = embedding[controls]
                basal_genes = genes[controls.ravel()].toarray().reshape(*controls.shape, -1)
                codes = [s.pert if pert is None else pert for s in same]
                out = tx.model(torch.from_numpy(basal), torch.from_numpy(tx.pert_inputs[codes]),
                               torch.from_numpy(basal_genes))
                e = out["embedding"].numpy()
                if "genes" in out:
                    g = out["genes"].numpy()
                elif tx.model.predict_residual:  # the change mapped to genes, added to the control's own genes
                    g = basal_genes + tx.space.to_genes(e) - tx.space.to_genes(basal)
                else:
                    g = tx.space.to_genes(e)
                out_embedding.append(e.reshape(-1, e.shape[-1]))
                out_genes.append(g.reshape(-1, g.shape[-1]))
    return np.concatenate(out_embedding), np.concatenate(out_genes)


def _training_shifts(screen: Screen, genes: sp.csr_matrix, embedding: np.ndarray) -> dict[str, np.ndarray]:
    """Mean training shift over perturbed groups, and each (perturbation, context) group's own shift, in both
    spaces; a shift is the mean of the group's training cells minus the mean of its context's training controls."""
    train = screen.rows(TRAIN)
    keys, shifts_g, shifts_e = [], [], []
    for c in sorted(set(screen.context[train].tolist())):
        in_context = train[screen.context[train] == c]
        ctrl = in_context[screen.pert[in_context] == screen.control]
        if not len(ctrl):
            continue
        base_g, base_e = np.asarray(genes[ctrl].mean(0)).ravel(), embedding[ctrl].mean(0)
        for p in sorted(set(screen.pert[in_context].tolist()) - {screen.control}):
            rows = in_context[screen.pert[in_context] == p]
            keys.append((p, c))
            shifts_g.append(np.asarray(genes[rows].mean(0)).ravel() - base_g)
            shifts_e.append(embedding[rows].mean(0) - base_e)
    return {"keys": np.array(keys, np.int64).reshape(-1, 2), "genes": np.array(shifts_g, np.float32),
            "embedding": np.array(shifts_e, np.float32)}


def _baseline_shifts(screen: Screen, groups: list[tuple[int, int]], shifts: dict[str, np.ndarray]) -> dict:
    """Per held-out group: the mean training shift, and the same perturbation's mean shift in the other contexts
    (NaN where it has no training cells elsewhere)."""
    keys = shifts["keys"]
    out = {"groups": [f"{screen.perts[p]}\t{screen.contexts[c]}" for p, c in groups]}
    for space in ("genes", "embedding"):
        values = shifts[space]
        width = values.shape[1] if len(values) else 0
        out[f"training_mean_{space}"] = values.mean(0) if len(values) else np.zeros(width, np.float32)
        other = np.full((len(groups), width), np.nan, np.float32)
        for i, (p, c) in enumerate(groups):
            same = (keys[:, 0] == p) & (keys[:, 1] != c) if len(keys) else np.zeros(0, bool)
            if same.any():
                other[i] = values[same].mean(0)
        out[f"other_contexts_{space}"] = other
    return out


def _expression(tx: TransitionBundle, path: Path) -> tuple[CountMatrix, sp.csr_matrix, np.ndarray]:
    """The file's cells in the model's gene space and embedding."""
    counts = load_counts(path, tx.data["layer"], adata=read_anndata(path))
    genes = log_normalised(counts.matrix, tx.space.gene_columns(counts.var_names, str(path)))
    return counts, genes, embed_all(tx.space, genes)


def _anndata(parts: list[tuple[str, pd.DataFrame, np.ndarray, np.ndarray]], tx: TransitionBundle):
    import anndata

    obs = pd.concat([frame.assign(stagekit_source=source) for source, frame, _, _ in parts])
    obs["stagekit_cell"] = obs.index.astype(str)  # the data's cell; of a predicted cell, the control it came from
    obs.index = [f"{source}-{i}-{name}" for i, (source, name) in enumerate(zip(obs["stagekit_source"], obs.index,
                                                                                 strict=True))]
    obs["stagekit_source"] = pd.Categorical(obs["stagekit_source"], categories=SOURCES)
    adata = anndata.AnnData(np.concatenate([g for _, _, g, _ in parts]).astype(np.float32), obs=obs,
                            var=pd.DataFrame(index=tx.space.genes))
    adata.obsm["X_pert_embedding"] = np.concatenate([e for _, _, _, e in parts]).astype(np.float32)
    return adata


def _frame(screen: Screen, keys: dict[str, str], names: pd.Index, rows: np.ndarray, pert: int | None = None
           ) -> pd.DataFrame:
    """obs of cells `rows` (their names; a predicted cell is named after the control it was predicted from)."""
    codes = screen.pert[rows] if pert is None else np.full(len(rows), pert)
    return pd.DataFrame({keys["pert"]: [screen.perts[p] for p in codes],
                         keys["context"]: [screen.contexts[c] for c in screen.context[rows]]},
                        index=names[rows].astype(str))


def held_out_cells(tx: TransitionBundle, path: Path, bundle: Bundle, log=print, seed: int = 0):
    screen = tx.screen
    counts, genes, embedding = _expression(tx, path)
    if counts.n_obs != len(screen.pert) or counts.fingerprint()["sha256"] != bundle.data.get("sha256"):
        raise UserError(f"{path} is not the file {bundle.path} was trained on (its split is stored by cell "
                        "position); give that file, or predict new control cells with --pert NAME")
    held = screen.held_out_groups()
    if not held:
        raise UserError(f"{bundle.path} holds out no perturbed cells (test_fraction 0, nothing held out); "
                        "predict new control cells with --pert NAME")
    keys = {"pert": tx.data["pert_key"], "context": tx.data["context_key"] or "context"}
    test = screen.rows(TEST)
    # the predictions start from every control cell of the context (controls are the input, never a target)
    all_controls = np.flatnonzero(screen.pert == screen.control)
    rng, names = np.random.default_rng([seed, 41]), counts.obs.index
    parts, used_controls = [], set()
    for p, c in held:
        pool = all_controls[screen.context[all_controls] == c]
        if not len(pool):
            log(f"warning: no control cells in context '{screen.contexts[c]}': '{screen.perts[p]}' there is not "
                "predicted")
            continue
        observed = test[(screen.pert[test] == p) & (screen.context[test] == c)]
        groups = group_cells(screen.pert, screen.context, screen.batch, screen.control, observed, tx.set_len,
                             control_rows=pool)
        sets = group_sets(groups, 0, tx.set_len, rng, every_cell=True)
        e, g = predict(tx, embedding, genes, sets)  # as many predicted cells as observed ones (the top-up dropped)
        e, g, basal = e[:len(observed)], g[:len(observed)], np.concatenate([s.controls for s in sets])[:len(observed)]
        parts.append(("predicted", _frame(screen, keys, names, basal, p), g, e))
        parts.append(("observed", _frame(screen, keys, names, observed), genes[observed].toarray(),
                      embedding[observed]))
        seen = screen.rows(TRAIN)
        seen = seen[(screen.pert[seen] == p) & (screen.context[seen] == c)]
        if len(seen):
            reference = np.sort(rng.choice(seen, min(len(seen), len(observed)), replace=False))
            parts.append(("reference", _frame(screen, keys, names, reference), genes[reference].toarray(),
                          embedding[reference]))
        if c not in used_controls:
            used_controls.add(c)
            parts.append(("control", _frame(screen, keys, names, pool), genes[pool].toarray(), embedding[pool]))
    adata = _anndata(parts, tx)
    adata.uns["stagekit_shifts"] = _baseline_shifts(screen, held, _training_shifts(screen, genes, embedding))
    return adata, {"pert_key": keys["pert"], "context_key": keys["context"]}


def new_cells(tx: TransitionBundle, path: Path, pert: str, seed: int = 0):
    """`pert` predicted for every cell of `path`, taken as control cells (any context)."""
    screen = tx.screen
    if pert not in screen.perts:
        shown = ", ".join(p for p in screen.perts[:10])
        raise UserError(f"--pert '{pert}' is not a perturbation this model knows ({shown}"
                        f"{' ...' if len(screen.perts) > 10 else ''}); it learned only those of its training data")
    counts, genes, embedding = _expression(tx, path)
    obs = counts.obs
    order = np.random.default_rng([seed, 43]).permutation(len(obs))
    sets = [CellSet(0, 0, order[i:i + tx.set_len], order[i:i + tx.set_len])
            for i in range(0, len(order), tx.set_len)]
    e, g = predict(tx, embedding, genes, sets, pert=screen.perts.index(pert))
    keys = {"pert": tx.data["pert_key"], "context": tx.data["context_key"] or "context"}
    rows = np.concatenate([s.controls for s in sets])
    context = (obs[keys["context"]].astype(str).to_numpy() if keys["context"] in obs
               else np.full(len(obs), "unknown"))
    frame = pd.DataFrame({keys["pert"]: pert, keys["context"]: context[rows]}, index=obs.index[rows].astype(str))
    controls = pd.DataFrame({keys["pert"]: screen.perts[screen.control], keys["context"]: context},
                            index=obs.index.astype(str))
    return _anndata([("predicted", frame, g, e), ("control", controls, genes.toarray(), embedding)], tx), {
        "pert_key": keys["pert"], "context_key": keys["context"], "predicted_perturbation": pert}


def transition_cells(bundle: Bundle, data: list[Path], species: list[str], log=print, pert: str | None = None):
    if len(data) > 1 or species:
        raise UserError(f"{bundle.path} is a transition bundle: give at most one data file, no --species")
    tx = load_transition(bundle)
    if pert is not None:
        if not data:
            raise UserError("--pert predicts for new control cells: give the .h5ad of those cells")
        return new_cells(tx, Path(data[0]), pert)
    return held_out_cells(tx, bundle_data_path(bundle, data[0] if data else None), bundle, log)
