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

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from stagekit.bundle import Bundle, file_sha256, read_bundle
from stagekit.data.anndata_io import CountMatrix, concat_counts, load_counts, read_anndata
from stagekit.data.cell_sets import CellSet, group_cells, group_sets
from stagekit.data.protein_embeddings import load_gene_embeddings
from stagekit.errors import UserError
from stagekit.stages.perturbation import space as expression_space
from stagekit.stages.perturbation.baselines import baseline_shifts, training_shifts
from stagekit.stages.perturbation.screen import TEST, TRAIN
from stagekit.stages.perturbation.space import SpaceGenes, screen_in_space
from stagekit.stages.perturbation.trained import TransitionBundle, load_transition, vocabulary_of
from stagekit.stages.spec import CellsRequest

if TYPE_CHECKING:
    import anndata

SOURCES = ("predicted", "observed", "control", "reference")
_SETS_PER_CALL = 64


def predict(tx: TransitionBundle, embedding: np.ndarray, genes: Callable[[np.ndarray], np.ndarray],
            sets: list[CellSet], pert_input: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Predicted (embedding, genes) of every cell of `sets`, in order; `genes(rows)` gives the dense gene rows of
    cells; `pert_input` (one perturbation's input vector) overrides the sets' own perturbations."""
    out_embedding, out_genes = [], []
    with torch.no_grad():
        for i in range(0, len(sets), _SETS_PER_CALL):
            by_len: dict[int, list[CellSet]] = {}
            for s in sets[i:i + _SETS_PER_CALL]:  # one call per set length (a control file's last set may be short)
                by_len.setdefault(len(s.controls), []).append(s)
            for same in by_len.values():
                controls = np.stack([s.controls for s in same])
                basal = embedding[controls]
                basal_genes = genes(controls.ravel()).reshape(*controls.shape, -1)
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
                out_genes.append(g.reshape(len(e) * e.shape[1], g.shape[-1]))
    return np.concatenate(out_embedding), np.concatenate(out_genes)


@dataclass
class Part:
    """Cells of one kind for the written file: `rows` of the data (of predicted cells: their controls' rows)."""

    source: str
    obs: pd.DataFrame
    rows: np.ndarray
    genes: np.ndarray
    embedding: np.ndarray


def _expression(tx: TransitionBundle, paths: list[Path], log: Callable[[str], None], backed: bool = False
                ) -> tuple[CountMatrix, SpaceGenes, np.ndarray]:
    """The files' cells in the model's gene space (rows on demand) and embedding; `backed`: the counts stay on
    disk and are read in blocks."""
    optional = not tx.space.genes and not tx.data.layer  # a model of an obsm embedding without genes
    counts = concat_counts([load_counts(path, tx.data.layer, backed=True, optional=optional) if backed else
                            load_counts(path, tx.data.layer, adata=read_anndata(path), optional=optional)
                            for path in paths])
    if counts.var_names != tx.var_names and tx.space.genes:  # library sizes are summed over the file's genes
        log(f"warning: {counts.where} holds {counts.n_vars} genes where training had {len(tx.var_names)}; cells "
            "are normalised by their totals over this file's genes, so predictions are comparable only if the "
            "panels match")
    genes, embedding = screen_in_space(tx.space, counts)
    return counts, genes, embedding


def trained_files(bundle: Bundle, data: list[Path]) -> list[Path]:
    """`data`, or the file(s) the bundle was trained on when they still exist."""
    if data:
        return [Path(p) for p in data]
    files = [Path(p) for p in bundle.data.get("files", bundle.data.get("path", "")).split("\n")]
    gone = [p for p in files if not p.is_file()]
    if gone:
        raise UserError(f"{bundle.path} was trained on {gone[0]}, which is gone; give the data file(s) explicitly")
    return files


def _obs(parts: list[Part]) -> pd.DataFrame:
    """obs of the written file: the parts' design columns, what each cell is and which data row it comes from."""
    obs = pd.concat([part.obs.assign(stagekit_source=part.source, stagekit_row=part.rows) for part in parts])
    obs["stagekit_cell"] = obs.index.astype(str)  # the data's cell; of a predicted cell, the control it came from
    obs.index = [f"{source}-{i}-{name}" for i, (source, name) in enumerate(zip(obs["stagekit_source"], obs.index,
                                                                                 strict=True))]
    obs["stagekit_source"] = pd.Categorical(obs["stagekit_source"], categories=SOURCES)
    return obs


def _anndata(parts: list[Part], tx: TransitionBundle) -> anndata.AnnData:
    import anndata

    adata = anndata.AnnData(np.concatenate([part.genes for part in parts]).astype(np.float32), obs=_obs(parts),
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


@dataclass
class GroupPlan:
    """What is predicted for one held-out group: its observed cells, the sets (controls paired to them) the
    prediction starts from, and a resample of its training cells (the reference; empty without any)."""

    pert: int
    context: int
    observed: np.ndarray
    sets: list[CellSet]
    reference: np.ndarray


@dataclass
class HeldOut:
    """The held-out groups of a screen, planned, with the cells to predict them from."""

    tx: TransitionBundle
    names: pd.Index  # the data's cell names
    genes: SpaceGenes
    embedding: np.ndarray
    plans: list[GroupPlan]
    training: dict | None = None  # the training cells' shifts, once computed

    def contexts(self) -> list[int]:
        return sorted({plan.context for plan in self.plans})

    def in_context(self, context: int) -> list[GroupPlan]:
        return [plan for plan in self.plans if plan.context == context]

    def parts(self, context: int, plans: list[GroupPlan] | None = None) -> Iterator[Part]:
        """The context's control cells, then each of `plans`' (default: the context's) predicted, observed and
        reference cells, one part at a time. Their cells are read once (a run of reads on disk)."""
        screen = self.tx.screen
        plans = self.in_context(context) if plans is None else plans
        pool = np.flatnonzero((screen.pert == screen.control) & (screen.context == context))
        rows = np.unique(np.concatenate([pool, *(np.concatenate([p.observed, p.reference]) for p in plans)]))
        block = self.genes.sparse(rows)

        def dense(index: np.ndarray) -> np.ndarray:
            return block[np.searchsorted(rows, index)].toarray()

        yield _part("control", self.tx, self.names, pool, dense(pool), self.embedding[pool])
        for plan in plans:
            e, g = predict(self.tx, self.embedding, dense, plan.sets)
            n = len(plan.observed)  # as many predicted cells as observed ones (the top-up dropped)
            basal = np.concatenate([s.controls for s in plan.sets])[:n]
            yield _part("predicted", self.tx, self.names, basal, g[:n], e[:n], plan.pert)
            yield _part("observed", self.tx, self.names, plan.observed, dense(plan.observed),
                        self.embedding[plan.observed])
            if len(plan.reference):
                yield _part("reference", self.tx, self.names, plan.reference, dense(plan.reference),
                            self.embedding[plan.reference])

    def shifts(self, plans: list[GroupPlan] | None = None) -> dict:
        """uns["stagekit_shifts"] for `plans` (default: every planned group); the training cells' shifts are
        computed once (one pass over them)."""
        screen = self.tx.screen
        if self.training is None:
            self.training = training_shifts(screen, self.genes, self.embedding)
        return baseline_shifts(screen, [(p.pert, p.context) for p in (self.plans if plans is None else plans)],
                               self.training)


def held_out(tx: TransitionBundle, paths: list[Path], bundle: Bundle, log: Callable[[str], None] = print,
             seed: int = 0, group: str | None = None, backed: bool = False) -> HeldOut:
    """Every held-out group (or the one `group`), planned: the sets and references are drawn group by group in
    the order of `Screen.held_out_groups`, so the predictions do not depend on the order they are made in."""
    screen = tx.screen
    counts, genes, embedding = _expression(tx, paths, log, backed)
    if counts.n_obs != len(screen.pert) or counts.fingerprint()["sha256"] != bundle.data.get("sha256"):
        raise UserError(f"{counts.where} is not the data {bundle.path} was trained on (its split is stored by cell "
                        "position); give those file(s) in their order, or predict new control cells with --pert NAME")
    held = screen.held_out_groups()
    if not held:
        raise UserError(f"{bundle.path} holds out no perturbed cells (test_fraction 0, nothing held out); "
                        "predict new control cells with --pert NAME")
    held = _selected(held, screen, group, str(bundle.path))
    test, seen_all = screen.rows(TEST), screen.rows(TRAIN)
    # the predictions start from every control cell of the context (controls are the input, never a target)
    all_controls = np.flatnonzero(screen.pert == screen.control)
    rng, plans, unpaired = np.random.default_rng([seed, 41]), [], []
    for p, c in held:
        pool = all_controls[screen.context[all_controls] == c]
        if not len(pool):
            unpaired.append(f"'{screen.perts[p]}' in '{screen.contexts[c]}'")
            continue
        observed = test[(screen.pert[test] == p) & (screen.context[test] == c)]
        groups = group_cells(screen.pert, screen.context, screen.batch, screen.control, observed, tx.set_len,
                             control_rows=pool)
        sets = group_sets(groups, 0, tx.set_len, rng, every_cell=True)
        seen = seen_all[(screen.pert[seen_all] == p) & (screen.context[seen_all] == c)]
        reference = (np.sort(rng.choice(seen, min(len(seen), len(observed)), replace=False)) if len(seen)
                     else np.zeros(0, np.int64))
        plans.append(GroupPlan(p, c, observed, sets, reference))
    if unpaired:
        message = f"no control cells in the context of held-out {', '.join(unpaired[:3])}"
        if not plans:
            raise UserError(f"{bundle.path}: {message}; nothing can be predicted")
        log(f"warning: {message}: not predicted")
    return HeldOut(tx, counts.obs.index, genes, embedding, plans)


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
    e, g = predict(tx, embedding, genes.rows, sets, pert_input)
    rows = np.concatenate([s.controls for s in sets])
    shown_context = np.where(context == "", "unknown", context)
    predicted = pd.DataFrame({keys["pert"]: pert, keys["context"]: shown_context[rows]},
                             index=obs.index[rows].astype(str))
    controls = pd.DataFrame({keys["pert"]: tx.screen.perts[tx.screen.control], keys["context"]: shown_context},
                            index=obs.index.astype(str))
    parts = [Part("predicted", predicted, rows, g, e),
             Part("control", controls, np.arange(len(obs)), genes.rows(np.arange(len(obs))), embedding)]
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


def requested_held_out(request: CellsRequest) -> HeldOut:
    """The held-out groups of the bundle's training file(s) (or of the `held_out_of` bundle's, with this bundle's
    model), planned; `backed`: the counts stay on disk."""
    bundle, data, log = request.bundle, request.data, request.log
    held_out_of, group = request.options.get("held_out_of"), request.options.get("group")
    backed = bool(request.options.get("backed"))
    if held_out_of is not None:
        held_out_of = read_bundle(held_out_of, command="--held-out-of")
        if held_out_of.model != bundle.model:
            raise UserError(f"--held-out-of {held_out_of.path} holds a '{held_out_of.model}' model; give a bundle "
                            f"of a '{bundle.model}' model")
        return held_out(on_task_of(bundle, held_out_of), trained_files(held_out_of, data), held_out_of, log,
                        group=group, backed=backed)
    return held_out(load_transition(bundle), trained_files(bundle, data), bundle, log, group=group, backed=backed)


def _design_keys(tx: TransitionBundle) -> dict[str, str]:
    return {"pert_key": tx.keys["pert"], "context_key": tx.keys["context"]}


def transition_cells(request: CellsRequest) -> tuple[anndata.AnnData, dict]:
    """extract/evaluate in memory: the held-out groups (`requested_held_out`), or `pert` predicted for the control
    cells of the data."""
    pert = request.options.get("pert")
    if pert is not None:
        for name, flag in (("group", "--group selects held-out cells and --pert predicts new ones"),
                           ("held_out_of", "--pert and --held-out-of"),
                           ("backed", "--backed reads held-out cells from disk and --pert new control cells")):
            if request.options.get(name):
                raise UserError(f"{flag}: choose one")
        if not request.data:
            raise UserError("--pert predicts for new control cells: give the .h5ad of those cells")
        return new_cells(load_transition(request.bundle), [Path(p) for p in request.data], pert, request.log)
    found = requested_held_out(request)
    adata = _anndata([part for c in found.contexts() for part in found.parts(c)], found.tx)
    adata.uns["stagekit_shifts"] = found.shifts()
    return adata, _design_keys(found.tx)


def stream_held_out(request: CellsRequest, path: Path, provenance: dict) -> bool:
    """extract --backed of every held-out group: the file is written a context at a time (X sparse), so neither
    the screen nor the predictions are ever in memory whole. False for what fits in memory anyway (--group,
    --pert) or without --backed."""
    options = request.options
    if not options.get("backed") or options.get("group") or options.get("pert") is not None:
        return False
    from stagekit.data.h5ad_stream import StreamedH5ad

    found = requested_held_out(request)
    writer = StreamedH5ad(path, found.tx.space.genes)
    try:
        kept = []  # the parts without their genes, which are on disk
        for c in found.contexts():
            for part in found.parts(c):
                writer.append(part.genes)
                kept.append(replace(part, genes=np.zeros((0, 0), np.float32)))
        uns = {"stagekit": provenance | _design_keys(found.tx), "stagekit_shifts": found.shifts()}
        embedding = np.concatenate([part.embedding for part in kept]).astype(np.float32)
        writer.close(_obs(kept), {"X_pert_embedding": embedding}, uns)
    except BaseException:
        writer.abort()
        raise
    request.log(f"{len(found.plans)} held-out groups written a context at a time; "
                "cell-eval's predicted / real pairs are written for one group at a time (--group)")
    return True
