"""Cells of a transition bundle for `extract` and `evaluate`: for every held-out (perturbation, context) group the
predicted cells beside the observed ones, the controls they were predicted from, and (where the group has
training cells) a resample of those, the reference a model of seen perturbations can at best reach; or, with
`--pert NAME`, that perturbation predicted for every cell of a control file.

X is the gene space (log-normalised counts of the model's genes), obsm["X_pert_embedding"] the embedding;
obs["stagekit_source"] says what each cell is: predicted | observed | control | reference; obs["stagekit_cell"] and
obs["stagekit_row"] are the data's cell name and row (of a predicted cell: the control cell it was predicted
from). uns["stagekit_shifts"] holds the training shifts (mean perturbed minus mean control) that evaluate's
baselines add to the controls.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from stagekit.bundle import Bundle, file_sha256, read_bundle
from stagekit.data.anndata_io import CountMatrix, concat_counts, load_counts, read_anndata
from stagekit.data.cell_sets import CellSet, group_cells, group_sets
from stagekit.data.protein_embeddings import load_gene_embeddings
from stagekit.errors import UserError
from stagekit.stages.perturbation import space as expression_space
from stagekit.stages.perturbation.baselines import baseline_shifts, training_shifts
from stagekit.stages.perturbation.screen import TEST, TRAIN
from stagekit.stages.perturbation.space import screen_in_space
from stagekit.stages.perturbation.trained import TransitionBundle, load_transition, vocabulary_of
from stagekit.stages.spec import CellsRequest

if TYPE_CHECKING:
    import anndata

SOURCES = ("predicted", "observed", "control", "reference")
_SETS_PER_CALL = 64


def predict(tx: TransitionBundle, embedding: np.ndarray, genes: sp.csr_matrix, sets: list[CellSet],
            pert_input: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Predicted (embedding, genes) of every cell of `sets`, in order; `pert_input` (one perturbation's input
    vector) overrides the sets' own perturbations."""
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
                inputs = (np.repeat(pert_input[None], len(same), 0) if pert_input is not None
                          else tx.pert_inputs[[s.pert for s in same]])
                out = tx.model(torch.from_numpy(basal), torch.from_numpy(np.asarray(inputs, np.float32)),
                               torch.from_numpy(basal_genes))
                e = out["embedding"].numpy()
                if "genes" in out:
                    g = out["genes"].numpy()
                elif tx.model.predict_residual:  # the change mapped to genes, added to the control's own genes
                    g = basal_genes + tx.space.to_genes(e) - tx.space.to_genes(basal)
                else:
                    g = tx.space.to_genes(e)
                np.maximum(g, expression_space.EXPRESSION_FLOOR, out=g)
                out_embedding.append(e.reshape(-1, e.shape[-1]))
                out_genes.append(g.reshape(-1, g.shape[-1]))
    return np.concatenate(out_embedding), np.concatenate(out_genes)


@dataclass
class Part:
    """Cells of one kind for the written file: `rows` of the data (of predicted cells: their controls' rows)."""

    source: str
    obs: pd.DataFrame
    rows: np.ndarray
    genes: np.ndarray
    embedding: np.ndarray


def _expression(tx: TransitionBundle, paths: list[Path], log: Callable[[str], None]
                ) -> tuple[CountMatrix, sp.csr_matrix, np.ndarray]:
    """The files' cells in the model's gene space and embedding."""
    counts = concat_counts([load_counts(path, tx.data.layer, adata=read_anndata(path)) for path in paths])
    if counts.var_names != tx.var_names:  # library sizes are summed over the file's genes
        log(f"warning: {counts.where} holds {counts.n_vars} genes where training had {len(tx.var_names)}; cells "
            "are normalised by their totals over this file's genes, so predictions are comparable only if the "
            "panels match")
    genes, embedding = screen_in_space(tx.space, counts)
    return counts, genes.matrix, embedding


def trained_files(bundle: Bundle, data: list[Path]) -> list[Path]:
    """`data`, or the file(s) the bundle was trained on when they still exist."""
    if data:
        return [Path(p) for p in data]
    files = [Path(p) for p in bundle.data.get("files", bundle.data.get("path", "")).split("\n")]
    gone = [p for p in files if not p.is_file()]
    if gone:
        raise UserError(f"{bundle.path} was trained on {gone[0]}, which is gone; give the data file(s) explicitly")
    return files


def _anndata(parts: list[Part], tx: TransitionBundle) -> anndata.AnnData:
    import anndata

    obs = pd.concat([part.obs.assign(stagekit_source=part.source, stagekit_row=part.rows) for part in parts])
    obs["stagekit_cell"] = obs.index.astype(str)  # the data's cell; of a predicted cell, the control it came from
    obs.index = [f"{source}-{i}-{name}" for i, (source, name) in enumerate(zip(obs["stagekit_source"], obs.index,
                                                                                 strict=True))]
    obs["stagekit_source"] = pd.Categorical(obs["stagekit_source"], categories=SOURCES)
    adata = anndata.AnnData(np.concatenate([part.genes for part in parts]).astype(np.float32), obs=obs,
                            var=pd.DataFrame(index=tx.space.genes))
    adata.obsm["X_pert_embedding"] = np.concatenate([part.embedding for part in parts]).astype(np.float32)
    return adata


def _part(source: str, tx: TransitionBundle, names: pd.Index, rows: np.ndarray, genes: np.ndarray,
          embedding: np.ndarray, pert: int | None = None) -> Part:
    """A part of the screen's own cells (a predicted part names its perturbation `pert`)."""
    screen, keys = tx.screen, tx.keys
    codes = screen.pert[rows] if pert is None else np.full(len(rows), pert)
    obs = pd.DataFrame({keys["pert"]: [screen.perts[p] for p in codes],
                        keys["context"]: [screen.contexts[c] for c in screen.context[rows]]},
                       index=names[rows].astype(str))
    return Part(source, obs, rows, genes, embedding)


def _selected(held: list[tuple[int, int]], screen, group: str | None, where: str) -> list[tuple[int, int]]:
    """The held-out groups, or the one named PERTURBATION/CONTEXT."""
    if group is None:
        return held
    chosen = [(p, c) for p, c in held if f"{screen.perts[p]}/{screen.contexts[c]}" == group]
    if not chosen:
        names = [f"{screen.perts[p]}/{screen.contexts[c]}" for p, c in held]
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise UserError(f"--group '{group}' is not a held-out group of {where} (PERTURBATION/CONTEXT: {shown})")
    return chosen


def held_out_cells(tx: TransitionBundle, paths: list[Path], bundle: Bundle, log: Callable[[str], None] = print,
                   seed: int = 0, group: str | None = None) -> tuple[anndata.AnnData, dict]:
    """Every held-out group's (or the one `group`'s) predicted, observed, control and (where it has training cells)
    reference cells."""
    screen = tx.screen
    counts, genes, embedding = _expression(tx, paths, log)
    if counts.n_obs != len(screen.pert) or counts.fingerprint()["sha256"] != bundle.data.get("sha256"):
        raise UserError(f"{counts.where} is not the data {bundle.path} was trained on (its split is stored by cell "
                        "position); give those file(s) in their order, or predict new control cells with --pert NAME")
    held = screen.held_out_groups()
    if not held:
        raise UserError(f"{bundle.path} holds out no perturbed cells (test_fraction 0, nothing held out); "
                        "predict new control cells with --pert NAME")
    held = _selected(held, screen, group, str(bundle.path))
    test = screen.rows(TEST)
    # the predictions start from every control cell of the context (controls are the input, never a target)
    all_controls = np.flatnonzero(screen.pert == screen.control)
    rng, names = np.random.default_rng([seed, 41]), counts.obs.index
    parts, used_controls, predicted_groups, unpaired = [], set(), [], []
    for p, c in held:
        pool = all_controls[screen.context[all_controls] == c]
        if not len(pool):
            unpaired.append(f"'{screen.perts[p]}' in '{screen.contexts[c]}'")
            continue
        predicted_groups.append((p, c))
        observed = test[(screen.pert[test] == p) & (screen.context[test] == c)]
        groups = group_cells(screen.pert, screen.context, screen.batch, screen.control, observed, tx.set_len,
                             control_rows=pool)
        sets = group_sets(groups, 0, tx.set_len, rng, every_cell=True)
        e, g = predict(tx, embedding, genes, sets)  # as many predicted cells as observed ones (the top-up dropped)
        basal = np.concatenate([s.controls for s in sets])[:len(observed)]
        parts.append(_part("predicted", tx, names, basal, g[:len(observed)], e[:len(observed)], p))
        parts.append(_part("observed", tx, names, observed, genes[observed].toarray(), embedding[observed]))
        seen = screen.rows(TRAIN)
        seen = seen[(screen.pert[seen] == p) & (screen.context[seen] == c)]
        if len(seen):
            reference = np.sort(rng.choice(seen, min(len(seen), len(observed)), replace=False))
            parts.append(_part("reference", tx, names, reference, genes[reference].toarray(), embedding[reference]))
        if c not in used_controls:
            used_controls.add(c)
            parts.append(_part("control", tx, names, pool, genes[pool].toarray(), embedding[pool]))
    if unpaired:
        message = f"no control cells in the context of held-out {', '.join(unpaired[:3])}"
        if not predicted_groups:
            raise UserError(f"{bundle.path}: {message}; nothing can be predicted")
        log(f"warning: {message}: not predicted")
    adata = _anndata(parts, tx)
    adata.uns["stagekit_shifts"] = baseline_shifts(screen, predicted_groups,
                                                   training_shifts(screen, genes, embedding))
    return adata, {"pert_key": tx.keys["pert"], "context_key": tx.keys["context"]}


def _pert_input(tx: TransitionBundle, pert: str) -> np.ndarray:
    """The encoder input of `pert`: its row when trained on, else its vector in the features file the model was
    trained with (still at its path, unchanged)."""
    if pert in tx.screen.perts:
        return tx.pert_inputs[tx.screen.perts.index(pert)]
    shown = ", ".join(tx.screen.perts[:10]) + (" ..." if len(tx.screen.perts) > 10 else "")
    if not tx.features:
        raise UserError(f"--pert '{pert}' is not a perturbation this model knows ({shown}); a one-hot model learned "
                        "only those of its training data")
    path = Path(tx.features["path"])
    if not path.is_file() or file_sha256(path) != tx.features["sha256"]:
        raise UserError(f"--pert '{pert}' was not trained on and the features file the model used ({path}) is gone "
                        "or changed; restore it")
    table = load_gene_embeddings(path)
    if pert not in table.symbols:
        raise UserError(f"--pert '{pert}': neither trained on ({shown}) nor in the features file {path}")
    return table.vectors[table.symbols.index(pert)]


def new_cells(tx: TransitionBundle, paths: list[Path], pert: str, log: Callable[[str], None] = print, seed: int = 0
              ) -> tuple[anndata.AnnData, dict]:
    """`pert` predicted for every cell of `paths`, taken as control cells. Sets are cut within each context (and
    batch) when the file has those columns, as in training."""
    pert_input = _pert_input(tx, pert)
    counts, genes, embedding = _expression(tx, paths, log)
    obs, keys = counts.obs, tx.keys
    context = obs[keys["context"]].astype(str).to_numpy() if keys["context"] in obs else np.full(len(obs), "")
    batch_key = tx.data.batch_key
    batch = obs[batch_key].astype(str).to_numpy() if batch_key and batch_key in obs else np.full(len(obs), "")
    rng, sets = np.random.default_rng([seed, 43]), []
    for c, b in sorted(set(zip(context, batch, strict=True))):
        order = rng.permutation(np.flatnonzero((context == c) & (batch == b)))
        sets += [CellSet(0, 0, order[i:i + tx.set_len], order[i:i + tx.set_len])
                 for i in range(0, len(order), tx.set_len)]
    e, g = predict(tx, embedding, genes, sets, pert_input)
    rows = np.concatenate([s.controls for s in sets])
    shown_context = np.where(context == "", "unknown", context)
    predicted = pd.DataFrame({keys["pert"]: pert, keys["context"]: shown_context[rows]},
                             index=obs.index[rows].astype(str))
    controls = pd.DataFrame({keys["pert"]: tx.screen.perts[tx.screen.control], keys["context"]: shown_context},
                            index=obs.index.astype(str))
    parts = [Part("predicted", predicted, rows, g, e),
             Part("control", controls, np.arange(len(obs)), genes.toarray(), embedding)]
    return _anndata(parts, tx), {"pert_key": keys["pert"], "context_key": keys["context"],
                                 "predicted_perturbation": pert}


def on_task_of(model: Bundle, task: Bundle) -> TransitionBundle:
    """`model`'s network on `task`'s screen, split and space (an ancestor's: e.g. the pretraining task after
    fine-tuning, to measure forgetting). Perturbations map to the model's inputs by name."""
    if file_sha256(task.path) not in {e["sha256"] for e in model.lineage}:
        raise UserError(f"{model.path} does not descend from {task.path} (not in its lineage); --held-out-of takes "
                        "an ancestor, whose held-out cells the model never trained on")
    tx, tuned = load_transition(task), load_transition(model)
    if tx.space.genes != tuned.space.genes or not np.array_equal(tx.space.components, tuned.space.components):
        raise UserError(f"{model.path} works in another expression space than {task.path}; --held-out-of takes a "
                        "bundle it descends from")
    if tx.features:
        return replace(tx, model=tuned.model)  # the same features file gives the same inputs
    vocabulary, control = vocabulary_of(model)
    index = {name: i for i, name in enumerate(vocabulary)}
    unknown = [p for i, p in enumerate(tx.screen.perts) if i != tx.screen.control and p not in index]
    if unknown:
        raise UserError(f"{model.path} never learned perturbation '{unknown[0]}' of {task.path}")
    rows = [control if i == tx.screen.control else index[p] for i, p in enumerate(tx.screen.perts)]
    return replace(tx, model=tuned.model, pert_inputs=np.eye(len(vocabulary), dtype=np.float32)[rows])


def transition_cells(request: CellsRequest) -> tuple[anndata.AnnData, dict]:
    """extract/evaluate: held-out groups of the training file (or of the `held_out_of` bundle's, with this bundle's
    model), or `pert` for the control cells of the data."""
    bundle, data, log = request.bundle, request.data, request.log
    pert, held_out_of = request.options.get("pert"), request.options.get("held_out_of")
    group = request.options.get("group")
    if group is not None and pert is not None:
        raise UserError("--group selects held-out cells and --pert predicts new ones: choose one")
    if held_out_of is not None:
        held_out_of = read_bundle(held_out_of, command="--held-out-of")
        if held_out_of.model != bundle.model:
            raise UserError(f"--held-out-of {held_out_of.path} holds a '{held_out_of.model}' model; give a bundle "
                            f"of a '{bundle.model}' model")
        if pert is not None:
            raise UserError("--pert and --held-out-of: choose one")
        return held_out_cells(on_task_of(bundle, held_out_of), trained_files(held_out_of, data), held_out_of, log,
                              group=group)
    tx = load_transition(bundle)
    if pert is not None:
        if not data:
            raise UserError("--pert predicts for new control cells: give the .h5ad of those cells")
        return new_cells(tx, [Path(p) for p in data], pert, log)
    return held_out_cells(tx, trained_files(bundle, data), bundle, log, group=group)
