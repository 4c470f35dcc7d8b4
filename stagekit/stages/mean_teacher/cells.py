"""Per-cell outputs of a Mean Teacher bundle: the teacher's predicted label, its probability, every class's
probability and the last hidden layer (the teacher is the model Mean Teacher evaluates). Probabilities are
calibrated by the temperature the bundle fitted on its validation cells; the predicted labels do not depend on it.
With --backed the cells are read from disk a block at a time and the file holds obs and obsm only."""

from __future__ import annotations

import anndata
import numpy as np
import pandas as pd
import torch

from stagekit.data.anndata_io import load_counts, read_anndata
from stagekit.data.batching import eval_plan
from stagekit.errors import UserError
from stagekit.losses.classification import probabilities
from stagekit.models.classifier import log_normalise
from stagekit.stages.mean_teacher.model_config import MeanTeacherConfig
from stagekit.stages.mean_teacher.train import cells_sha256, load_model
from stagekit.stages.phase import bundle_data_path, check_same_genes
from stagekit.stages.spec import CellsRequest


def mean_teacher_cells(request: CellsRequest):
    bundle, data = request.bundle, request.data
    if len(data) > 1:
        raise UserError(f"{bundle.path} is a '{bundle.model}' bundle: give at most one data file")
    path = bundle_data_path(bundle, data[0] if data else None)
    task = MeanTeacherConfig.of(bundle).data
    if request.options.get("backed"):  # the counts stay on disk and out of the file written
        counts = load_counts(path, task.layer, backed=True)
        adata = anndata.AnnData(obs=counts.obs)
    else:
        adata = read_anndata(path)
        counts = load_counts(path, task.layer, adata=adata)
    check_same_genes(counts.var_names, bundle, path)
    teacher = load_model(bundle).teacher
    temperature = float(bundle.results.get("temperature", 1.0))  # bundles written before calibration: 1
    probs, hidden = [], []
    with torch.no_grad():
        for rows in eval_plan(np.arange(counts.n_obs), 4096):
            embedding = teacher.embed(log_normalise(torch.from_numpy(counts.rows(rows))))
            hidden.append(embedding.numpy())
            probs.append(probabilities(teacher.head(embedding) / temperature).numpy())
    p = np.concatenate(probs)
    classes = bundle.categories["classes"]
    predicted = p.argmax(1)
    adata.obs["stagekit_prediction"] = pd.Categorical(np.asarray(classes)[predicted], categories=classes)
    adata.obs["stagekit_probability"] = p[np.arange(len(p)), predicted] if len(classes) > 2 else p[:, 1]
    adata.obsm["stagekit_class_probabilities"] = p.astype(np.float32)
    adata.obsm["X_stagekit"] = np.concatenate(hidden).astype(np.float32)
    if cells_sha256(counts) == bundle.data.get("cells_sha256"):  # the training cells: mark what training saw
        split = np.full(adata.n_obs, "unlabelled", dtype=object)
        split[bundle.results["labelled"]] = "labelled"
        split[bundle.results["validation"]] = "validation"
        adata.obs["stagekit_split"] = pd.Categorical(split)
    return adata, {"label_key": task.label_key, "positive_class": task.positive_class,
                   "classes": np.array(classes, dtype=str), "temperature": temperature}
