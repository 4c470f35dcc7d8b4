"""What the VAE-based phases share: building the model from its config, reading the data a bundle was
trained on, and embedding cells."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from stagekit.bundle import Bundle
from stagekit.data.anndata_io import CountMatrix, category_codes, load_counts
from stagekit.data.batching import eval_plan
from stagekit.data.pairs import GroupPartners, NeighbourPartners, Partners
from stagekit.errors import UserError
from stagekit.models.blocks import device_of
from stagekit.models.vae import COUNT_LIKELIHOODS, VAE
from stagekit.stages.clustering.model_config import VAEConfig
from stagekit.stages.phase import bundle_data_path, select_bundle_genes
from stagekit.train.state import load_weights


def load_vae(bundle: Bundle) -> VAE:
    model = VAEConfig.of(bundle).build(len(bundle.var_names), len(bundle.categories.get("batch", [])))
    load_weights(model, {k.removeprefix("vae."): v for k, v in bundle.weights.items() if k != "centres"}, bundle.path)
    model.eval()
    return model


def load_bundle_data(bundle: Bundle, data_path: Path | None, obs_keys: tuple[str, ...] = (), adata=None
                     ) -> tuple[CountMatrix, np.ndarray | None]:
    """Cells for a model from `bundle`: its training file unless `data_path` is given, on the bundle's genes.
    Read backed (from disk) when the pretraining was, unless the caller passes the file's AnnData (`adata`)."""
    described = VAEConfig.of(bundle)
    data_cfg = described.data
    path = bundle_data_path(bundle, data_path)
    keys = tuple(k for k in (data_cfg.batch_key, *obs_keys) if k)
    counts = load_counts(path, data_cfg.layer, keys, backed=data_cfg.backed,
                         require_counts=described.model.likelihood in COUNT_LIKELIHOODS, adata=adata)
    counts = select_bundle_genes(counts, bundle, path)
    batch_codes = None
    if data_cfg.batch_key:
        codes, names = category_codes(counts.obs, data_cfg.batch_key)
        known = bundle.categories["batch"]
        unknown = sorted(set(names) - set(known))
        if unknown:
            raise UserError(f"{path}: obs column '{data_cfg.batch_key}' has batches the model never saw "
                            f"({', '.join(unknown[:3])})")
        batch_codes = np.array([known.index(n) for n in names], dtype=np.int64)[codes]
    return counts, batch_codes


@torch.no_grad()
def embed(model: VAE, counts: CountMatrix, batch_codes: np.ndarray | None, batch_size: int = 2048) -> np.ndarray:
    """Posterior means of every cell, deterministic (eval mode)."""
    model.eval()
    device = device_of(model)
    out = []
    for rows in eval_plan(np.arange(counts.n_obs), batch_size):
        b = torch.from_numpy(batch_codes[rows]).to(device) if batch_codes is not None else None
        out.append(model.encode(torch.from_numpy(counts.rows(rows)).to(device), b)[0].float().cpu().numpy())
    return np.concatenate(out)


def check_pair_config(section: str, cfg: dict, weight_keys: tuple[str, ...]) -> None:
    """Positive pairs come from one source, and terms that need them have them (checked before data loads)."""
    if cfg["positive_key"] and cfg["positive_neighbours"]:
        raise UserError(f"set {section}.positive_key or {section}.positive_neighbours, not both")
    if not (cfg["positive_key"] or cfg["positive_neighbours"]) and any(cfg[k] for k in weight_keys):
        names = " and ".join(f"{section}.{k}" for k in weight_keys)
        raise UserError(f"{names} need positive pairs: set {section}.positive_key (an obs column) or "
                        f"{section}.positive_neighbours (k)")


def positive_partners(cfg: dict, counts: CountMatrix, neighbour_space: Callable[[], np.ndarray]
                      ) -> Partners | None:
    """Another cell of the same `positive_key` group, or one of the k nearest neighbours in `neighbour_space()`."""
    if cfg["positive_key"]:
        return GroupPartners(category_codes(counts.obs, cfg["positive_key"])[0])
    if cfg["positive_neighbours"]:
        return NeighbourPartners(neighbour_space(), cfg["positive_neighbours"])
    return None
