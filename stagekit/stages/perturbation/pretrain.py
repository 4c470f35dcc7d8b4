"""`stagekit pretrain --preset transition`: the STATE-style transition model on a perturbation screen."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stagekit.bundle import Bundle, file_sha256
from stagekit.data.anndata_io import CountMatrix, concat_counts, load_counts
from stagekit.data.cell_sets import CellGroups, group_cells
from stagekit.data.protein_embeddings import load_gene_embeddings
from stagekit.errors import UserError
from stagekit.stages.perturbation.model_config import TransitionArchitecture, TransitionConfig, TransitionData
from stagekit.stages.perturbation.screen import TEST, TRAIN, VAL, Screen, SplitRequest, assign_split, read_screen
from stagekit.stages.perturbation.space import ExpressionSpace, fit_space, screen_in_space
from stagekit.stages.perturbation.task import TransitionTask
from stagekit.stages.perturbation.trained import stored_space
from stagekit.stages.phase import PhaseRun, kept_metrics
from stagekit.stages.spec import PhaseRequest
from stagekit.train import FitResult
from stagekit.train.state import weights_to_numpy


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


def screen_counts(paths: list[Path], data_cfg: dict, backed: bool = False) -> CountMatrix:
    """The cells of one or more .h5ad files as one screen (same genes in each; every file has the design's
    columns); `backed`: the counts stay on disk, each file read where its cells are."""
    keys = tuple(data_cfg[k] for k in ("pert_key", "context_key", "batch_key") if data_cfg[k] and len(paths) > 1)
    optional = bool(data_cfg["embed_key"]) and not data_cfg["layer"]  # the model reads obsm: counts may be absent
    return concat_counts([load_counts(path, data_cfg["layer"], keys, backed=backed, optional=optional)
                          for path in paths])


def file_of_cell(counts: CountMatrix) -> np.ndarray | None:
    """Which input file each cell came from (None for one file)."""
    if not counts.sources:
        return None
    return np.repeat(np.arange(len(counts.sources)), [n for _, _, n in counts.sources])


DESIGN = ("layer", "pert_key", "control", "context_key", "batch_key", "embed_key")


def _warn_about_groups(screen: Screen, groups: CellGroups, set_len: int, log: Callable[[str], None]) -> None:
    """Groups drawn with replacement, and perturbed cells left out for want of controls in their context."""
    if groups.short:
        p, c = groups.short[0]
        log(f"warning: {len(groups.short)} training group(s) have fewer than {set_len} cells and are drawn with "
            f"replacement (e.g. '{screen.perts[p]}' in '{screen.contexts[c]}')")
    paired = {c for c, _ in groups.controls}
    train = screen.rows(TRAIN)
    unpaired = sorted({screen.contexts[c] for c in screen.context[train][screen.pert[train] != screen.control]}
                      - {screen.contexts[c] for c in paired})
    if unpaired:
        log(f"warning: context(s) {', '.join(unpaired)} have perturbed cells but no control cells to pair them "
            "with; those cells do not train")


@dataclass
class TrainingSets:
    groups: CellGroups  # the training cells' (perturbation, context) groups
    val_groups: CellGroups | None
    line: str  # the split in words, for the log and `info`


def training_sets(screen: Screen, set_len: int, log: Callable[[str], None]) -> TrainingSets:
    """The groups cell sets are cut from: training cells, and validation cells paired with training or
    validation controls."""
    train, val = screen.rows(TRAIN), screen.rows(VAL)
    controls = screen.rows(TRAIN, VAL)
    controls = controls[screen.pert[controls] == screen.control]
    groups = group_cells(screen.pert, screen.context, screen.batch, screen.control, train, set_len, control_sets=True)
    val_groups = (group_cells(screen.pert, screen.context, screen.batch, screen.control, val, set_len,
                              control_sets=True, control_rows=controls) if len(val) else None)
    _warn_about_groups(screen, groups, set_len, log)
    line = (f"{len(train)} training cells in {len(groups.groups)} (perturbation, context) groups, {len(val)} "
            f"validation, {len(screen.rows(TEST))} held out ({len(screen.held_out_groups())} perturbed groups), "
            f"{int((screen.split < 0).sum())} excluded")
    return TrainingSets(groups, val_groups, line)


def screen_arrays(screen: Screen, inputs: np.ndarray, space: ExpressionSpace
                  ) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """The bundle's results and categories that extract and evaluate read back (see `bundle.load_transition`)."""
    results = {"pert": screen.pert, "context": screen.context, "split": screen.split,
               "control": np.array(screen.control), "pert_inputs": inputs} | space.arrays()
    if screen.batch is not None:
        results["batch"] = screen.batch
    categories = {"perts": screen.perts, "contexts": screen.contexts, "space_genes": space.genes}
    if screen.batches:
        categories["batches"] = screen.batches
    return results, categories


def space_line(space: ExpressionSpace, counts: CountMatrix) -> str:
    """The space in words; says why an obsm embedding has no gene space."""
    if not space.embed_key:
        return f"{space.n_embedding}-dim {'PCA of ' if space.has_pca else ''}{len(space.genes)} genes"
    line = f"the {space.n_embedding}-dim obsm['{space.embed_key}']"
    if space.genes:
        return f"{line}, a gene decoder to {len(space.genes)} genes"
    reason = "the data hold no counts (X is empty)" if not counts.n_vars else "loss.decoder_weight = 0"
    return f"{line}; no gene decoder, as {reason}: predicted and scored in the embedding only"


def design_line(data_cfg: dict) -> str:
    return (f"perturbation obs['{data_cfg['pert_key']}'] (control '{data_cfg['control']}'), context "
            f"{repr(data_cfg['context_key']) if data_cfg['context_key'] else 'none'}, batch "
            f"{repr(data_cfg['batch_key']) if data_cfg['batch_key'] else 'none'}"
            + (f", embedding obsm['{data_cfg['embed_key']}']" if data_cfg.get("embed_key") else ""))


def _split_inputs_space(request: PhaseRequest, resumed: Bundle | None, counts: CountMatrix, screen: Screen
                        ) -> tuple[np.ndarray, ExpressionSpace, dict]:
    """Set the screen's split; return the perturbation inputs, the fitted space and where the split and features
    came from. A resumed run takes all of them from its bundle: recomputed, they could differ from those the
    weights were trained with."""
    data_cfg, seed = request.config["data"], request.config["training"]["seed"]
    features, split_toml = request.options.get("pert_features"), request.options.get("split_toml")
    if resumed is not None:
        if features or split_toml:
            raise UserError("--resume continues with the split and perturbation features stored in "
                            f"{request.resume}; drop --pert-features and --split-toml")
        screen.split = np.asarray(resumed.results["split"])
        provenance = {k: v for k, v in resumed.data.items() if k.startswith(("features_", "split_toml"))}
        return np.asarray(resumed.results["pert_inputs"]), stored_space(resumed), provenance
    screen.split = assign_split(screen, SplitRequest(
        data_cfg["test_fraction"], request.config["training"]["val_fraction"], data_cfg["holdout_contexts"],
        data_cfg["holdout_perts"], features is not None, Path(split_toml) if split_toml else None, seed,
        [Path(p) for p, _, _ in counts.sources], file_of_cell(counts)), counts.where)
    inputs = pert_inputs(screen, Path(features) if features else None)
    space = fit_space(counts, screen.rows(TRAIN), data_cfg["n_genes"], data_cfg["n_components"],
                      data_cfg["embed_key"], request.config["loss"]["decoder_weight"] > 0)
    provenance = {}
    for name, path in (("features", features), ("split_toml", split_toml)):
        if path:
            provenance |= {f"{name}_path": str(Path(path).resolve()), f"{name}_sha256": file_sha256(path)}
    return inputs, space, provenance


def run(request: PhaseRequest) -> Path | None:
    """Train the transition model on one screen; returns the bundle (None on the other processes of a DDP run)."""
    config = request.config
    data_cfg, model_cfg, loss_cfg = config["data"], config["model"], config["loss"]
    training, seed = config["training"], config["training"]["seed"]
    set_len = config["sets"]["cell_set_len"]
    components_from = config.sources.get("data.n_components", "default")
    if data_cfg["embed_key"] and not components_from.startswith(("default", "resume ", "preset ")):
        raise UserError(f"data.n_components (from {components_from}) sets the PCA, which --embed-key "
                        f"{data_cfg['embed_key']} replaces; drop one of them")
    if data_cfg["n_components"] == 0 and loss_cfg["decoder_weight"] > 0 and not data_cfg["embed_key"]:
        raise UserError("loss.decoder_weight needs an embedding to decode from: set data.n_components > 0, or "
                        "loss.decoder_weight = 0 to train in gene space")
    if model_cfg["hidden"] % model_cfg["n_heads"]:
        raise UserError(f"model.hidden ({model_cfg['hidden']}) must be a multiple of model.n_heads "
                        f"({model_cfg['n_heads']})")
    phase = PhaseRun(config, request.output, request.resume, request.quiet)
    counts = screen_counts(request.data, data_cfg, data_cfg["backed"])
    phase.check_resume_data(counts.fingerprint())
    screen = read_screen(counts.obs, counts.where, data_cfg["pert_key"], data_cfg["control"], data_cfg["context_key"],
                         data_cfg["batch_key"], data_cfg["exclude"])
    inputs, space, provenance = _split_inputs_space(request, phase.resume_bundle, counts, screen)
    genes, embedding = screen_in_space(space, counts)
    decoder = space.decodable and loss_cfg["decoder_weight"] > 0
    sets = training_sets(screen, set_len, request.log)
    request.log(f"{sets.line}; {space_line(space, counts)}")
    phase.engine.launch()
    torch.manual_seed(seed)
    described = TransitionConfig(
        TransitionArchitecture(**dict(model_cfg.items()), n_embedding=space.n_embedding, n_pert_inputs=inputs.shape[1],
                               n_genes=len(space.genes) if decoder else 0),
        TransitionData(**{k: data_cfg[k] for k in DESIGN}))
    model = described.build()
    task = TransitionTask(model, embedding, genes if decoder else None, inputs, sets.groups, sets.val_groups,
                          set_len, training["batch_size"], loss_cfg, seed)
    results, categories = screen_arrays(screen, inputs, space)
    data = counts.fingerprint() | provenance | {"design": design_line(data_cfg), "split": sets.line}

    def bundle_for(result: FitResult) -> Bundle:
        return Bundle(weights=weights_to_numpy(model), model_config=described.to_toml(), data=data,
                      var_names=counts.var_names, categories=categories,
                      final_metrics=kept_metrics(result, ("train_", "val_")), results=results)

    return phase.fit(task, bundle_for)
