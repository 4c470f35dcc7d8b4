"""`stagekit pretrain --preset mean-teacher` (stage 1, few labels) and `stagekit finetune --preset mean-teacher`
(stage 2: more labels, from stage 1's student and teacher)."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from stagekit.bundle import Bundle, read_bundle
from stagekit.data.anndata_io import CountMatrix, load_counts
from stagekit.errors import UserError
from stagekit.models.classifier import MeanTeacher, log_normalise
from stagekit.stages.clustering.model_config import VAEConfig
from stagekit.stages.mean_teacher.model_config import Classes, ClassifierArchitecture, LabelTask, MeanTeacherConfig
from stagekit.stages.mean_teacher.task import Labels, MeanTeacherTask, labelled_cells, read_labels, validation_cells
from stagekit.stages.phase import PhaseRun, bundle_data_path, check_same_genes, kept_metrics, lineage_of
from stagekit.stages.spec import PhaseRequest
from stagekit.train import FitResult
from stagekit.train.state import load_weights, weights_to_numpy
from stagekit.train.transfer import load_by_name


def cells_sha256(counts: CountMatrix) -> str:
    return hashlib.sha256("\n".join(map(str, counts.obs.index)).encode()).hexdigest()


def load_model(bundle: Bundle) -> MeanTeacher:
    model = MeanTeacherConfig.of(bundle).build(len(bundle.var_names))
    load_weights(model, bundle.weights, bundle.path)
    return model.eval()


def fit_projection(model: MeanTeacher, counts: CountMatrix, seed: int, log) -> None:
    """The principal components of every cell's log-normalised genes (labels unused, so every cell may shape
    them), set into student and teacher. Computed from blocks of cells, the same in memory and on disk (see
    `stagekit.data.pca.blockwise_pca`)."""
    from stagekit.data.normalise import log_normalised
    from stagekit.data.pca import blockwise_pca

    n_pcs = model.student.n_pcs
    if n_pcs >= min(counts.n_obs, counts.n_vars):
        raise UserError(f"{counts.path}: model.n_pcs = {n_pcs} needs more cells and genes than that (it has "
                        f"{counts.n_obs} x {counts.n_vars}); lower model.n_pcs")

    def blocks():
        return (log_normalised(block) for block in counts.row_blocks(np.arange(counts.n_obs)))

    pca = blockwise_pca(blocks, counts.n_vars, n_pcs, seed)
    scale = float(np.sqrt(pca.explained_variance[0]))
    for net in (model.student, model.teacher):
        net.set_projection(torch.tensor(pca.mean, dtype=torch.float32),
                           torch.tensor(np.ascontiguousarray(pca.components), dtype=torch.float32), scale)
    log(f"input: {n_pcs} principal components of the log-normalised genes of all {counts.n_obs:,} cells "
        f"({pca.explained_variance_ratio.sum():.1%} of their variance)")


def _read_vae(path: Path, counts: CountMatrix, flag: str) -> tuple[Bundle, VAEConfig]:
    """A `pretrain --preset vae` bundle whose encoder reads exactly the classifier's input."""
    vae = read_bundle(path, ("pretrain",), command=f"pretrain --preset mean-teacher {flag}")
    if vae.model != "vae":
        raise UserError(f"{path} holds a '{vae.model}' model; {flag} takes a `pretrain --preset vae` bundle")
    check_same_genes(counts.var_names, vae, counts.path)
    vae_cfg = VAEConfig.of(vae)
    if vae_cfg.data.batch_key or vae_cfg.model.likelihood == "gaussian":
        raise UserError(f"{path}: {flag} needs a VAE on counts without a batch covariate (its encoder then "
                        "reads exactly the classifier's input)")
    return vae, vae_cfg


def _init_from_vae(model: MeanTeacher, vae: Bundle, vae_cfg: VAEConfig, model_cfg: ClassifierArchitecture, log
                   ) -> dict:
    """Student and teacher start from a `pretrain --preset vae` encoder (its hidden layers; the head is new)."""
    if model_cfg.input != "genes" or model_cfg.norm != "layer" or model_cfg.n_hidden != vae_cfg.model.n_hidden:
        raise UserError(f"--init-from {vae.path}: set model.input = \"genes\", model.norm = \"layer\" and "
                        f"model.n_hidden = {vae_cfg.model.n_hidden} (the VAE encoder reads genes with these layers)")
    encoder = {"body." + k.removeprefix("encoder."): v for k, v in vae.weights.items() if k.startswith("encoder.")}
    report = load_by_name(model.student, encoder, new=("head",))
    if report.partial:
        raise UserError(f"--init-from {vae.path}: {report.summary()}")
    model.teacher.load_state_dict(model.student.state_dict())
    log(f"init from {vae.path}: {report.summary()}")
    return report.as_dict()


def fit_latent(model: MeanTeacher, vae: Bundle, counts: CountMatrix, log) -> None:
    """The VAE encoder's weights set into student and teacher, and the latent's centre and scale (its mean and
    largest standard deviation over every cell, labels unused, as the principal components)."""
    encoder = {k.replace("encoder.", "body.", 1).replace("z_mean.", "mean.", 1): torch.from_numpy(np.asarray(v))
               for k, v in vae.weights.items() if k.startswith(("encoder.", "z_mean."))}
    latent = model.student.latent
    latent.load_state_dict(encoder | {"centre": latent.centre, "scale": latent.scale})
    total, total_sq, n = 0.0, 0.0, 0
    with torch.no_grad():
        for block in counts.row_blocks(np.arange(counts.n_obs), size=2048):
            z = latent.raw(log_normalise(torch.from_numpy(block.toarray().astype(np.float32)))).double()
            total, total_sq, n = total + z.sum(0), total_sq + z.square().sum(0), n + len(z)
    centre = total / n
    scale = float((total_sq / n - centre.square()).clamp_min(0).max().sqrt().clamp_min(1e-6))
    latent.set_scale(centre.float(), scale)
    model.teacher.latent.load_state_dict(latent.state_dict())
    log(f"input: the {len(centre)}-dim latent of {vae.path}'s encoder (posterior mean, fixed) for all "
        f"{counts.n_obs:,} cells")


# keys that do nothing for some tasks: set by hand there, they earn a warning rather than silence
_NOT_FOR_MULTI_CLASS = ("mean_teacher.focal_alpha", "collapse.min_fraction", "collapse.max_drift")
_NOT_FOR_CROSS_ENTROPY = ("mean_teacher.focal_gamma", "mean_teacher.focal_weight", "mean_teacher.dice_weight")


def warn_unused(config, binary: bool, log) -> None:
    unused = [] if binary else list(_NOT_FOR_MULTI_CLASS)
    if config["mean_teacher"]["supervised"] == "cross_entropy":
        unused += _NOT_FOR_CROSS_ENTROPY
    if config["mean_teacher"]["rampup_epochs"] == 0:
        unused.append("mean_teacher.ema_decay_rampup")
    if config["mean_teacher"]["consistency"] != "pseudo_label":
        unused.append("mean_teacher.pseudo_label_threshold")
    if "model" in config.values and config["model"]["input"] != "pca":
        unused.append("model.n_pcs")
    given = [k for k in dict.fromkeys(unused) if not config.sources[k].startswith(("default", "preset"))]
    if given:
        cfg = config["mean_teacher"]
        log(f"warning: {', '.join(given)} do(es) nothing in this run ({'binary' if binary else 'multi-class'} task, "
            f"{cfg['supervised']} loss, {cfg['consistency']} consistency, rampup_epochs {cfg['rampup_epochs']}"
            + (f", model.input {config['model']['input']}" if "model" in config.values else "") + ")")


def _fit(request: PhaseRequest, phase: PhaseRun, counts: CountMatrix, labels: Labels, model: MeanTeacher,
         validation: np.ndarray, labelled: np.ndarray, model_config: str, seed: int, ema_updates: int = 0,
         parent: Bundle | None = None, records: dict | None = None) -> Path | None:
    config = request.config
    warn_unused(config, labels.binary, request.log)
    train_rows = np.setdiff1d(np.arange(counts.n_obs), validation)
    trained = parent is not None and parent.model == "mean-teacher"
    task = MeanTeacherTask(model, counts, labels, train_rows, labelled, validation, config["mean_teacher"],
                           config["collapse"], config["training"]["batch_size"], seed, ema_updates, trained)
    per_class = np.bincount(labels.codes[labelled], minlength=len(labels.classes))
    shown = ", ".join(f"{name}: {n}" for name, n in zip(labels.classes, per_class, strict=True))
    request.log(f"{len(labelled)} labelled training cells ({shown}), {len(train_rows) - len(labelled)} unlabelled, "
                f"{len(validation)} validation cells")
    fingerprint = counts.fingerprint() | {"cells_sha256": cells_sha256(counts)}

    def bundle_for(result: FitResult) -> Bundle:
        final = kept_metrics(result, ("train_", "val_")) | {
            k: v for k, v in result.final_metrics.items()
            if k in ("pred_positive_fraction", "mean_probability_drift", "largest_class_share")}
        final |= {"labelled_cells": float(len(labelled)), "labelled_fraction": config["data"]["labelled_fraction"]}
        final |= (calibration := task.calibration())
        return Bundle(weights=weights_to_numpy(model), model_config=model_config,
                      lineage=lineage_of(parent) if parent else [], data=fingerprint, var_names=counts.var_names,
                      categories={"classes": labels.classes}, final_metrics=final,
                      results={"labelled": labelled, "validation": validation,
                               "ema_updates": np.array(task.ema.updates),
                               "temperature": np.array(calibration["temperature"])}, records=records or {})

    return phase.fit(task, bundle_for)


def pretrain(request: PhaseRequest) -> Path | None:
    """Stage 1: a classifier trained with Mean Teacher on `labelled_fraction` of the labelled cells."""
    config = request.config
    data_cfg, model_cfg, seed = config["data"], config["model"], config["training"]["seed"]
    if len(request.data) != 1:
        raise UserError(f"the mean-teacher preset trains on one .h5ad file; got {len(request.data)}")
    phase = PhaseRun(config, request.output, request.resume, request.quiet)
    counts = load_counts(request.data[0], data_cfg["layer"], backed=data_cfg["backed"])
    labels = read_labels(counts, data_cfg["label_key"], data_cfg["positive_class"])
    validation = validation_cells(labels, config["training"]["val_fraction"], seed)
    labelled = labelled_cells(labels, validation, data_cfg["labelled_fraction"], seed, str(counts.path))
    phase.check_resume_data(counts.fingerprint())
    phase.engine.launch()
    torch.manual_seed(seed)
    init_from, latent_from = request.options.get("init_from"), request.options.get("latent_from")
    if init_from and latent_from:
        raise UserError("give --init-from (the layers start from a VAE encoder) or --latent-from (they read its "
                        "latent), not both")
    architecture = ClassifierArchitecture(**dict(model_cfg.items()))
    if architecture.input == "latent" and not latent_from:
        raise UserError("model.input = \"latent\" reads a VAE's latent: name its bundle with --latent-from VAE.stk")
    vae = vae_cfg = None
    if init_from or latent_from:
        flag = "--init-from" if init_from else "--latent-from"
        vae, vae_cfg = _read_vae(Path(init_from or latent_from), counts, flag)
    if latent_from:
        architecture = replace(architecture, latent_hidden=list(vae_cfg.model.n_hidden),
                               n_latent=vae_cfg.model.n_latent)
    described = MeanTeacherConfig(architecture,
                                  LabelTask(**{k: data_cfg[k] for k in ("layer", "label_key", "positive_class")}),
                                  Classes(labels.classes))
    model = described.build(counts.n_vars)
    records = {}
    if not request.resume:  # a resumed run reads its fixed input with its weights
        if init_from:
            records = {"load_report": _init_from_vae(model, vae, vae_cfg, described.model, request.log)}
        if latent_from:
            fit_latent(model, vae, counts, request.log)
        if described.model.projected:
            fit_projection(model, counts, seed, request.log)
    parent = vae if init_from or latent_from else None
    return _fit(request, phase, counts, labels, model, validation, labelled, described.to_toml(), seed,
                parent=parent, records=records)


def finetune(request: PhaseRequest) -> Path | None:
    """Stage 2: from stage 1's student and teacher, at a larger labelled fraction that contains stage 1's."""
    config = request.config
    parent = read_bundle(request.parent, ("pretrain",), command="finetune --preset mean-teacher")
    if parent.model != "mean-teacher":
        raise UserError(f"{request.parent} holds a '{parent.model}' model; finetune --preset mean-teacher continues "
                        "a `pretrain --preset mean-teacher` bundle (stage 1)")
    if len(request.data) > 1:
        raise UserError(f"finetune --preset mean-teacher reads at most one .h5ad; got {len(request.data)}")
    stage1 = parent.config()
    fraction, before = config["data"]["labelled_fraction"], stage1["data"]["labelled_fraction"]
    if fraction < before:
        raise UserError(f"data.labelled_fraction {fraction} is smaller than stage 1's ({before}); stage 2 adds "
                        "labels to those stage 1 used")
    phase = PhaseRun(config, request.output, request.resume, request.quiet)
    data_cfg = MeanTeacherConfig.of(parent).data
    path = bundle_data_path(parent, request.data[0] if request.data else None)
    counts = load_counts(path, data_cfg.layer, backed=config["data"]["backed"])
    check_same_genes(counts.var_names, parent, path)
    if cells_sha256(counts) != parent.data.get("cells_sha256"):
        raise UserError(f"{path}: not the cells {request.parent} was trained on (stage 2 continues on the same "
                        "cells: its labelled and validation cells are positions in them)")
    labels = read_labels(counts, data_cfg.label_key, data_cfg.positive_class)
    if labels.classes != parent.categories["classes"]:
        raise UserError(f"{path}: labels differ from stage 1's ({', '.join(parent.categories['classes'])})")
    validation = np.asarray(parent.results["validation"], dtype=np.int64)
    before_cells = np.asarray(parent.results["labelled"], dtype=np.int64)
    if (labels.codes[before_cells] < 0).any() or (labels.codes[validation] < 0).any():
        raise UserError(f"{path}: cells stage 1 used as labelled or validation cells have lost their label")
    labelled = labelled_cells(labels, validation, fraction, parent.seed, str(path), base=before_cells)
    stage1_objective = {f"{s}.{k}": v for s in ("mean_teacher", "collapse") for k, v in stage1[s].items()}
    changed = [f"{k} = {config[k.split('.')[0]][k.split('.')[1]]} (stage 1: {v})"
               for k, v in stage1_objective.items() if config[k.split(".")[0]][k.split(".")[1]] != v]
    if changed:
        request.log(f"stage 2 differs from stage 1 in: {'; '.join(changed)}")
    phase.check_resume_data(counts.fingerprint())
    phase.engine.launch()
    seed = config["training"]["seed"]
    torch.manual_seed(seed)
    model = load_model(parent).train()
    return _fit(request, phase, counts, labels, model, validation, labelled, parent.model_config, seed,
                int(parent.results["ema_updates"]), parent=parent)
