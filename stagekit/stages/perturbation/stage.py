"""`stagekit pretrain --preset transition`: the STATE-style transition model on a perturbation screen."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from stagekit.bundle import Bundle
from stagekit.config.loader import toml_value
from stagekit.data.anndata_io import load_counts
from stagekit.data.cell_sets import group_cells
from stagekit.data.protein_embeddings import load_gene_embeddings
from stagekit.errors import UserError
from stagekit.models.transition import TransitionModel
from stagekit.stages.perturbation.screen import TEST, TRAIN, VAL, Screen, SplitRequest, assign_split, read_screen
from stagekit.stages.perturbation.space import ExpressionSpace, fit_space
from stagekit.stages.perturbation.task import TransitionTask
from stagekit.stages.phase import PhaseRun, kept_metrics
from stagekit.stages.registry import PhaseRequest
from stagekit.train import FitResult
from stagekit.train.state import load_weights, weights_to_numpy

_EMBED_BLOCK = 8192  # cells embedded at a time (a dense block of genes)


def pert_inputs(screen: Screen, features_path: Path | None) -> np.ndarray:
    """What the perturbation encoder reads per perturbation: a one-hot, or the feature vector of its name from
    `--pert-features` (same formats as protein embeddings; the control gets zeros)."""
    if features_path is None:
        return np.eye(len(screen.perts), dtype=np.float32)
    table = load_gene_embeddings(features_path)
    lookup = {s: i for i, s in enumerate(table.symbols)}
    control = screen.perts[screen.control]
    missing = [p for p in screen.perts if p != control and p not in lookup]
    if missing:
        raise UserError(f"{features_path}: no features for perturbation '{missing[0]}' ({len(missing)} missing); "
                        "add them or leave those cells out with --exclude")
    return np.stack([np.zeros(table.dim, np.float32) if p == control else table.vectors[lookup[p]]
                     for p in screen.perts])


def model_config_toml(model_cfg: dict, data_cfg: dict, n_embedding: int, n_pert_inputs: int, n_genes: int) -> str:
    lines = ["[model]", *(f"{k} = {toml_value(v)}" for k, v in model_cfg.items()),
             f"n_embedding = {n_embedding}", f"n_pert_inputs = {n_pert_inputs}", f"n_genes = {n_genes}",
             "[data]", *(f"{k} = {toml_value(data_cfg[k])}" for k in ("layer", "pert_key", "control",
                                                                         "context_key", "batch_key"))]
    return "\n".join(lines) + "\n"


def build_model(model_config: str) -> TransitionModel:
    m = tomllib.loads(model_config)["model"]
    return TransitionModel(m["n_embedding"], m["n_pert_inputs"], m["hidden"], m["n_layers"], m["n_heads"],
                           m["dropout"], m["n_genes"], m["predict_residual"])


@dataclass
class TransitionBundle:
    """What extract and evaluate need of a transition bundle."""

    model: TransitionModel
    space: ExpressionSpace
    screen: Screen
    pert_inputs: np.ndarray
    data: dict  # the [data] section: layer, pert_key, control, context_key, batch_key
    set_len: int


def load_transition(bundle: Bundle) -> TransitionBundle:
    model = build_model(bundle.model_config)
    load_weights(model, bundle.weights)
    r, c = bundle.results, bundle.categories
    screen = Screen(np.asarray(r["pert"]), c["perts"], int(r["control"]), np.asarray(r["context"]), c["contexts"],
                    np.asarray(r["batch"]) if "batch" in r else None, c.get("batches", []), np.asarray(r["split"]))
    config = tomllib.loads(bundle.config_toml)
    return TransitionBundle(model.eval(), ExpressionSpace.from_arrays(c["space_genes"], r), screen,
                            np.asarray(r["pert_inputs"]), tomllib.loads(bundle.model_config)["data"],
                            config["sets"]["cell_set_len"])


def embed_all(space: ExpressionSpace, genes: sp.csr_matrix) -> np.ndarray:
    return np.concatenate([space.embed(genes[i:i + _EMBED_BLOCK].toarray())
                           for i in range(0, genes.shape[0], _EMBED_BLOCK)])


def run(request: PhaseRequest) -> Path | None:
    config = request.config
    data_cfg, model_cfg, loss_cfg = config["data"], config["model"], config["loss"]
    training, seed = config["training"], config["training"]["seed"]
    set_len = config["sets"]["cell_set_len"]
    if len(request.data) != 1:
        raise UserError(f"the transition preset trains on one .h5ad file; got {len(request.data)}")
    if data_cfg["n_components"] == 0 and loss_cfg["decoder_weight"] > 0:
        raise UserError("loss.decoder_weight needs an embedding to decode from: set data.n_components > 0, or "
                        "loss.decoder_weight = 0 to train in gene space")
    if model_cfg["hidden"] % model_cfg["n_heads"]:
        raise UserError(f"model.hidden ({model_cfg['hidden']}) must be a multiple of model.n_heads "
                        f"({model_cfg['n_heads']})")
    features = request.options.get("pert_features")
    phase = PhaseRun(config, request.output, request.resume, request.quiet)
    counts = load_counts(request.data[0], data_cfg["layer"])
    screen = read_screen(counts.obs, counts.path, data_cfg["pert_key"], data_cfg["control"], data_cfg["context_key"],
                         data_cfg["batch_key"], data_cfg["exclude"])
    split_toml = request.options.get("split_toml")
    screen.split = assign_split(screen, SplitRequest(
        data_cfg["test_fraction"], training["val_fraction"], data_cfg["holdout_contexts"], data_cfg["holdout_perts"],
        features is not None, Path(split_toml) if split_toml else None, seed), counts.path)
    inputs = pert_inputs(screen, Path(features) if features else None)
    phase.check_resume_data(counts.fingerprint())
    space, genes = fit_space(counts.matrix, counts.var_names, screen.rows(TRAIN), data_cfg["n_genes"],
                             data_cfg["n_components"], seed)
    embedding = embed_all(space, genes)
    decoder = space.has_pca and loss_cfg["decoder_weight"] > 0
    train, val = screen.rows(TRAIN), screen.rows(VAL)
    controls = screen.rows(TRAIN, VAL)
    controls = controls[screen.pert[controls] == screen.control]
    groups = group_cells(screen.pert, screen.context, screen.batch, screen.control, train, set_len, control_sets=True)
    val_groups = (group_cells(screen.pert, screen.context, screen.batch, screen.control, val, set_len,
                              control_sets=True, control_rows=controls) if len(val) else None)
    if groups.short:
        p, c = groups.short[0]
        request.log(f"warning: {len(groups.short)} training group(s) have fewer than {set_len} cells and are drawn "
                    f"with replacement (e.g. '{screen.perts[p]}' in '{screen.contexts[c]}')")
    held = screen.held_out_groups()
    request.log(f"{len(train)} training cells in {len(groups.groups)} (perturbation, context) groups, "
                f"{len(val)} validation, {len(screen.rows(TEST))} held out ({len(held)} perturbed groups), "
                f"{int((screen.split < 0).sum())} excluded; {space.n_embedding}-dim "
                f"{'PCA of ' if space.has_pca else ''}{len(space.genes)} genes")
    phase.engine.launch()
    torch.manual_seed(seed)
    model = TransitionModel(space.n_embedding, inputs.shape[1], model_cfg["hidden"], model_cfg["n_layers"],
                            model_cfg["n_heads"], model_cfg["dropout"], len(space.genes) if decoder else 0,
                            model_cfg["predict_residual"])
    task = TransitionTask(model, embedding, genes if decoder else None, inputs, groups, val_groups, set_len,
                          training["batch_size"], loss_cfg, seed)
    model_config = model_config_toml(model_cfg, data_cfg, space.n_embedding, inputs.shape[1],
                                     len(space.genes) if decoder else 0)
    results = {"pert": screen.pert, "context": screen.context, "split": screen.split,
               "control": np.array(screen.control), "pert_inputs": inputs} | space.arrays()
    if screen.batch is not None:
        results["batch"] = screen.batch
    categories = {"perts": screen.perts, "contexts": screen.contexts, "space_genes": space.genes}
    if screen.batches:
        categories["batches"] = screen.batches

    def bundle_for(result: FitResult) -> Bundle:
        return Bundle(stage=config.stage, model="transition", config_toml="", seed=seed,
                      weights=weights_to_numpy(model), model_config=model_config, data=counts.fingerprint(),
                      var_names=counts.var_names, categories=categories,
                      final_metrics=kept_metrics(result, ("train_", "val_")), results=results)

    return phase.fit(task, bundle_for)
