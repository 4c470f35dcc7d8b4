"""`stagekit extract`: per-cell outputs of a bundle (latent, clusters, soft assignments) into an .h5ad."""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from stagekit.bundle import Bundle, atomic_output, file_sha256, read_bundle
from stagekit.data.anndata_io import CountMatrix
from stagekit.errors import UserError
from stagekit.losses.clustering import student_t_assignment
from stagekit.stages.vae_common import embed, load_bundle_data, load_vae, vae_config

EXTRACTABLE = ("pretrain", "cluster-search", "finetune")


@dataclass
class CellOutputs:
    latent: np.ndarray
    clusters: np.ndarray | None = None
    soft: np.ndarray | None = None
    extra_obs: dict[str, np.ndarray] = field(default_factory=dict)


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
    alpha = float(tomllib.loads(bundle.config_toml)["dec"]["alpha"])
    soft = student_t_assignment(torch.from_numpy(latent), centres, alpha).numpy()
    return CellOutputs(latent, soft.argmax(1), soft)


def load_for(bundle_path: Path, data_path: Path | None, command: str, obs_keys: tuple[str, ...] = ()
             ) -> tuple[Bundle, CountMatrix, np.ndarray | None]:
    bundle = read_bundle(bundle_path, EXTRACTABLE, command=command)
    if not bundle.model_config:
        raise UserError(f"{bundle_path} is a '{bundle.model}' bundle; `stagekit {command}` reads vae-based bundles")
    counts, batch_codes = load_bundle_data(bundle, data_path, obs_keys)
    return bundle, counts, batch_codes


def run(bundle_path: Path, data_path: Path | None, output: Path) -> Path:
    import anndata

    if output.suffix != ".h5ad":
        raise UserError(f"output {output} should end in .h5ad")
    bundle, counts, batch_codes = load_for(bundle_path, data_path, "extract")
    outputs = cell_outputs(bundle, counts, batch_codes)
    adata = anndata.read_h5ad(counts.path)
    adata.obsm["X_stagekit"] = outputs.latent
    if outputs.clusters is not None:
        adata.obs["stagekit_cluster"] = outputs.clusters.astype(str)
        adata.obs["stagekit_cluster"] = adata.obs["stagekit_cluster"].astype("category")
    if outputs.soft is not None:
        adata.obsm["stagekit_soft_assignment"] = outputs.soft
    adata.uns["stagekit"] = {"bundle": str(Path(bundle_path).resolve()), "bundle_sha256": file_sha256(bundle_path),
                             "stage": bundle.stage, "model": bundle.model,
                             "label_key": vae_config(bundle)["data"]["label_key"],
                             "lineage": json.dumps(bundle.lineage), "config": bundle.config_toml}
    with atomic_output(output) as tmp:
        adata.write_h5ad(tmp)
    return output
