"""Per-cell outputs of the VAE-based bundles (pretrain vae, cluster-search, finetune dec): the latent,
clusters and soft assignments."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from stagekit.bundle import Bundle
from stagekit.data.anndata_io import CountMatrix, read_anndata
from stagekit.errors import UserError
from stagekit.losses.clustering import student_t_assignment
from stagekit.models.vae import COUNT_LIKELIHOODS
from stagekit.stages.clustering.model_config import VAEConfig
from stagekit.stages.clustering.trained import embed, load_bundle_data, load_vae
from stagekit.stages.phase import bundle_data_path
from stagekit.stages.spec import CellsRequest


@dataclass
class CellOutputs:
    latent: np.ndarray
    clusters: np.ndarray | None = None
    soft: np.ndarray | None = None


def cell_outputs(bundle: Bundle, counts: CountMatrix, batch_codes: np.ndarray | None) -> CellOutputs:
    """Deterministic per-cell outputs (eval mode, posterior means)."""
    latent = embed(load_vae(bundle), counts, batch_codes)
    if bundle.stage == "pretrain":
        return CellOutputs(latent)
    if bundle.stage == "cluster-search":  # nearest k-means centre
        centres = bundle.results["centres"]
        distance = ((latent[:, None, :] - centres[None]) ** 2).sum(-1)
        return CellOutputs(latent, distance.argmin(1))
    centres = torch.from_numpy(bundle.weights["centres"])
    alpha = float(bundle.config()["dec"]["alpha"])
    soft = student_t_assignment(torch.from_numpy(latent), centres, alpha).numpy()
    return CellOutputs(latent, soft.argmax(1), soft)


def vae_cells(request: CellsRequest):
    """The user's whole AnnData (read once) plus obsm['X_stagekit'], obs['stagekit_cluster'] and
    obsm['stagekit_soft_assignment'] where the bundle has clusters."""
    bundle, data = request.bundle, request.data
    if len(data) > 1:
        raise UserError(f"{bundle.path} is a '{bundle.model}' bundle: give at most one data file")
    data_path = data[0] if data else None
    adata = read_anndata(bundle_data_path(bundle, data_path))
    counts, batch_codes = load_bundle_data(bundle, data_path, adata=adata)
    outputs = cell_outputs(bundle, counts, batch_codes)
    adata.obsm["X_stagekit"] = outputs.latent
    if outputs.clusters is not None:
        adata.obs["stagekit_cluster"] = pd.Categorical(outputs.clusters.astype(str))
    if outputs.soft is not None:
        adata.obsm["stagekit_soft_assignment"] = outputs.soft
    described = VAEConfig.of(bundle)
    return adata, {"label_key": described.data.label_key, "layer": described.data.layer,
                   "counts": described.model.likelihood in COUNT_LIKELIHOODS}
