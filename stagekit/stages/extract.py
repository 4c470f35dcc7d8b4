"""`stagekit extract`: per-cell outputs of a bundle (latent, clusters, soft assignments) into an .h5ad."""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from stagekit.bundle import Bundle, atomic_output, file_sha256, read_bundle
from stagekit.data.anndata_io import CountMatrix, read_anndata, write_h5ad
from stagekit.errors import UserError
from stagekit.losses.clustering import student_t_assignment
from stagekit.stages.vae_common import bundle_data_path, embed, load_bundle_data, load_vae, vae_config

EXTRACTABLE = ("pretrain", "cluster-search", "finetune", "align")


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


def _vae_bundle(bundle_path: Path, command: str) -> Bundle:
    bundle = read_bundle(bundle_path, EXTRACTABLE, command=command)
    if not bundle.model_config or bundle.model == "saturn":
        raise UserError(f"{bundle_path} is a '{bundle.model}' bundle; `stagekit {command}` reads vae-based bundles")
    return bundle


def load_for(bundle_path: Path, data_path: Path | None, command: str, obs_keys: tuple[str, ...] = ()
             ) -> tuple[Bundle, CountMatrix, np.ndarray | None]:
    bundle = _vae_bundle(bundle_path, command)
    counts, batch_codes = load_bundle_data(bundle, data_path, obs_keys)
    return bundle, counts, batch_codes


def _vae_cells(bundle_path: Path, data_path: Path | None):
    bundle = _vae_bundle(bundle_path, "extract")
    # the output is the user's whole AnnData plus our columns: read it once and take the counts from it
    adata = read_anndata(bundle_data_path(bundle, data_path))
    counts, batch_codes = load_bundle_data(bundle, data_path, adata=adata)
    outputs = cell_outputs(bundle, counts, batch_codes)
    adata.obsm["X_stagekit"] = outputs.latent
    if outputs.clusters is not None:
        adata.obs["stagekit_cluster"] = pd.Categorical(outputs.clusters.astype(str))
    if outputs.soft is not None:
        adata.obsm["stagekit_soft_assignment"] = outputs.soft
    return bundle, adata, {"label_key": vae_config(bundle)["data"]["label_key"]}


def saturn_anndata(bundle: Bundle, data: list[Path], species: list[str], log):
    """All species in one AnnData: X and obsm["X_macrogenes"] the macrogene values, obsm["X_pretrain"] the
    embedding; the gene -> macrogene weight table in uns (genes differ between species, so it cannot be varm)."""
    import anndata

    from stagekit.stages.pretrain_saturn import load_model
    from stagekit.stages.saturn_cells import cell_outputs as saturn_outputs
    from stagekit.stages.saturn_cells import load_cells

    model = load_model(bundle)
    label_key = tomllib.loads(bundle.model_config)["data"]["label_key"]
    parts = []
    for cells in load_cells(bundle, data, species, log):
        macro, embedding = saturn_outputs(model, cells)
        obs = cells.obs.copy()
        obs["species"] = cells.name
        key = "X_align" if bundle.stage == "align" else "X_pretrain"
        part = anndata.AnnData(X=macro, obs=obs, obsm={"X_macrogenes": macro, key: embedding})
        part.obs_names = [f"{cells.name}:{n}" for n in obs.index]  # barcodes may repeat across species
        parts.append(part)
    adata = anndata.concat(parts, merge="same")
    adata.var_names = [f"macrogene_{i}" for i in range(adata.n_vars)]
    adata.obs["species"] = pd.Categorical(adata.obs["species"].astype(str))
    weights = np.exp(bundle.weights["log_weights"])
    extra = {"label_key": label_key, "macrogene_weights": weights.astype(np.float32),
             "macrogene_weight_genes": np.array(bundle.var_names, dtype=str),
             "macrogene_weight_species": np.array(bundle.categories["species"], dtype=str)[
                 bundle.results["gene_species"]]}
    return adata, extra


def run(bundle_path: Path, data: list[Path], output: Path, species: list[str] | None = None, log=print) -> Path:
    if output.suffix != ".h5ad":
        raise UserError(f"output {output} should end in .h5ad")
    bundle = read_bundle(bundle_path, EXTRACTABLE, command="extract")
    if bundle.model == "saturn":
        adata, extra = saturn_anndata(bundle, data, species or [], log)
    else:
        if len(data) > 1 or species:
            raise UserError(f"{bundle_path} is a '{bundle.model}' bundle: give at most one data file, no --species")
        bundle, adata, extra = _vae_cells(bundle_path, data[0] if data else None)
    adata.uns["stagekit"] = {"bundle": str(Path(bundle_path).resolve()), "bundle_sha256": file_sha256(bundle_path),
                             "stage": bundle.stage, "model": bundle.model, "lineage": json.dumps(bundle.lineage),
                             "config": bundle.config_toml} | extra
    with atomic_output(output) as tmp:
        write_h5ad(adata, tmp)
    return output
