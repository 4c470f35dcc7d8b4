"""`stagekit pretrain --preset vae`: a count VAE, the first stage of phenotype clustering."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from stagekit.bundle import Bundle
from stagekit.data.anndata_io import CountMatrix, category_codes, load_counts
from stagekit.data.batching import epoch_plan, eval_plan, split_train_val
from stagekit.data.hvg import highly_variable_genes
from stagekit.data.pairs import Partners, cells_of, with_partners
from stagekit.errors import UserError
from stagekit.losses.clustering import nt_xent
from stagekit.losses.counts import count_nll
from stagekit.models.blocks import device_of
from stagekit.models.vae import COUNT_LIKELIHOODS, VAE
from stagekit.stages.clustering.model_config import VAEConfig
from stagekit.stages.clustering.trained import check_pair_config, positive_partners
from stagekit.stages.phase import PhaseRun, kept_metrics
from stagekit.stages.spec import PhaseRequest
from stagekit.train import FitResult, StepContext, Task
from stagekit.train.state import weights_to_numpy


class CountVAETask(Task):
    monitor = "elbo"  # independent of the KL warm-up, so early stopping compares like with like

    def __init__(self, model: VAE, counts: CountMatrix, batch_codes: np.ndarray | None, train_idx: np.ndarray,
                 val_idx: np.ndarray, batch_size: int, seed: int, beta: float, kl_warmup_epochs: int,
                 partners: Partners | None, contrastive: dict) -> None:
        self.model, self.counts, self.batch_codes = model, counts, batch_codes
        self.train_idx, self.val_idx = train_idx, val_idx
        self.batch_size, self.seed = batch_size, seed
        self.beta, self.kl_warmup_epochs = beta, kl_warmup_epochs
        self.partners = partners
        self.contrastive_weight, self.temperature = contrastive["weight"], contrastive["temperature"]

    def kl_weight(self, epoch: int) -> float:
        if not self.kl_warmup_epochs:
            return self.beta
        return self.beta * min(1.0, (epoch + 1) / self.kl_warmup_epochs)

    def train_plan(self, epoch: int, rank: int, world: int) -> list[tuple[np.ndarray, np.ndarray | None]]:
        plan = epoch_plan(self.train_idx, self.batch_size, self.seed, epoch, rank, world,
                          contiguous=self.counts.backed)
        return with_partners(plan, self.partners, self.seed, epoch)

    def val_plan(self, rank: int, world: int) -> list[tuple[np.ndarray, None]]:
        return [(rows, None) for rows in eval_plan(self.val_idx, self.batch_size, rank, world)]

    def load(self, item: tuple[np.ndarray, np.ndarray | None]) -> dict[str, torch.Tensor]:
        cells = cells_of(item)
        batch = {"x": torch.from_numpy(self.counts.rows_in_order(cells)), "n_anchors": len(item[0])}
        if self.batch_codes is not None:
            batch["batch_index"] = torch.from_numpy(self.batch_codes[cells])
        return batch

    def batch_size_of(self, batch: dict) -> int:
        return batch["n_anchors"]

    def step(self, model: torch.nn.Module, batch: dict, ctx: StepContext) -> dict[str, torch.Tensor]:
        x, n = batch["x"], batch["n_anchors"]
        # every loaded cell (anchor or partner) is a training cell, so all count towards reconstruction
        terms = model(x, batch.get("batch_index"), kl_weight=self.kl_weight(ctx.epoch))
        z = terms.pop("z")
        terms["elbo"] = terms["reconstruction"] + terms["kl"]
        if len(x) > n:
            terms["contrastive"] = nt_xent(z[:n], z[n:], self.temperature)
            terms["loss"] = terms["loss"] + self.contrastive_weight * x.shape[1] * terms["contrastive"]
        return terms

    def epoch_extras(self, epoch: int) -> dict[str, float]:
        return {"kl_weight": self.kl_weight(epoch)}


@torch.no_grad()
def reconstruction_report(model: VAE, counts: CountMatrix, batch_codes: np.ndarray | None,
                          train_idx: np.ndarray, eval_idx: np.ndarray, batch_size: int = 1024) -> dict[str, float]:
    """Held-out reconstruction (z at the posterior mean) against a per-gene-mean baseline.

    Counts: both predict expected normalised expression (counts per 10k), the model its decoded mean, the
    baseline each gene's training mean; scored as MSE of log1p(prediction) against log1p of the observed
    normalised counts, and as NB negative log-likelihood per cell (the model's dispersion for both).
    Other features: MSE on standardised features, the baseline predicting each feature's training mean.
    """
    model.eval()
    device = device_of(model)
    share = torch.zeros(counts.n_vars, device=device)
    for rows in eval_plan(train_idx, batch_size):
        x = torch.from_numpy(counts.rows(rows)).to(device)
        share += (model.transform(x)[0] if not model.counts else x / x.sum(1, keepdim=True).clamp_min(1)).sum(0)
    share /= len(train_idx)  # mean normalised expression (counts) or mean standardised feature
    totals = {"recon_mse": 0.0, "baseline_mse": 0.0, "recon_nll": 0.0, "baseline_nll": 0.0}
    for rows in eval_plan(eval_idx, batch_size):
        x = torch.from_numpy(counts.rows(rows)).to(device)
        b = torch.from_numpy(batch_codes[rows]).to(device) if batch_codes is not None else None
        mean, _, library = model.encode(x, b)
        mu, zi = model.decode(mean, library, b)
        if model.counts:
            target, predicted, baseline = torch.log1p(1e4 * x / library), torch.log1p(1e4 * mu / library), \
                torch.log1p(1e4 * share)
            totals["baseline_nll"] += float(count_nll(x, library * share, model.log_theta.exp()).sum())
        else:
            target, predicted, baseline = model.transform(x)[0], mu, share
            totals["baseline_nll"] += float((0.5 * (target - baseline) ** 2).sum())
        totals["recon_mse"] += float(((predicted - target) ** 2).mean(1).sum())
        totals["baseline_mse"] += float(((baseline - target) ** 2).mean(1).sum())
        totals["recon_nll"] += float(model.reconstruction_nll(x, mu, zi).sum())
    report = {k: v / len(eval_idx) for k, v in totals.items()}
    report["recon_mse_ratio"] = report["recon_mse"] / report["baseline_mse"]
    return report


def feature_moments(counts: CountMatrix, rows: np.ndarray, batch_size: int = 4096) -> tuple[torch.Tensor, ...]:
    """Per-feature mean and standard deviation over `rows` (for standardising non-count features)."""
    total, total_sq = np.zeros(counts.n_vars), np.zeros(counts.n_vars)
    for chunk in eval_plan(rows, batch_size):
        x = counts.rows(chunk).astype(np.float64)
        total += x.sum(0)
        total_sq += (x**2).sum(0)
    mean = total / len(rows)
    std = np.sqrt(np.maximum(total_sq / len(rows) - mean**2, 0.0))
    return torch.from_numpy(mean).float(), torch.from_numpy(np.where(std > 1e-8, std, 1.0)).float()


def input_space(model: VAE, counts: CountMatrix, n_components: int = 50, block: int = 4096) -> np.ndarray:
    """What the encoder sees of every cell (standardised features or log-normalised counts), reduced to
    `n_components` principal components when wider; incremental, so backed data is read block by block."""
    from sklearn.decomposition import IncrementalPCA

    def blocks() -> list[np.ndarray]:
        return np.array_split(np.arange(counts.n_obs), max(1, counts.n_obs // block))

    def features(rows: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model.transform(torch.from_numpy(counts.rows(rows)))[0].numpy()

    if counts.n_vars <= n_components:
        return np.concatenate([features(rows) for rows in blocks()])
    pca = IncrementalPCA(n_components=min(n_components, counts.n_obs))
    for rows in blocks():
        pca.partial_fit(features(rows))
    return np.concatenate([pca.transform(features(rows)) for rows in blocks()]).astype(np.float32)


def select_genes(counts: CountMatrix, n_top: int, likelihood: str, log: Callable[[str], None]) -> CountMatrix:
    """The `n_top` most variable genes of every cell's raw counts (seurat_v3), or all genes (`n_top` 0 or at
    least the file's)."""
    if not n_top or n_top >= counts.n_vars:
        return counts
    if likelihood not in COUNT_LIKELIHOODS:
        raise UserError(f"data.n_top_genes = {n_top} ranks genes by the variance of raw counts; with "
                        f"model.likelihood = \"{likelihood}\" set data.n_top_genes = 0")
    kept = counts.select_genes(highly_variable_genes(counts if counts.backed else counts.matrix, n_top))
    log(f"{kept.n_vars} of {counts.n_vars} genes kept (the most variable, seurat_v3)")
    return kept


def run(request: PhaseRequest) -> Path | None:
    config = request.config
    data_cfg, model_cfg, train_cfg = config["data"], config["model"], config["training"]
    described = VAEConfig.from_config(config.values)
    contrastive = config["contrastive"]
    if len(request.data) != 1:
        raise UserError(f"the {config.model} preset trains on one .h5ad file; got {len(request.data)}")
    data_path = request.data[0]
    check_pair_config("contrastive", contrastive, ("weight",))
    phase = PhaseRun(config, request.output, request.resume, request.quiet)
    obs_keys = tuple(k for k in (data_cfg["batch_key"], data_cfg["label_key"], contrastive["positive_key"]) if k)
    counts = load_counts(data_path, data_cfg["layer"], obs_keys, backed=data_cfg["backed"],
                         require_counts=model_cfg["likelihood"] in COUNT_LIKELIHOODS)
    fingerprint = counts.fingerprint()
    phase.check_resume_data(fingerprint)
    counts = select_genes(counts, data_cfg["n_top_genes"], model_cfg["likelihood"], request.log)
    phase.engine.launch()

    categories: dict[str, list[str]] = {}
    batch_codes = None
    if data_cfg["batch_key"]:
        batch_codes, categories["batch"] = category_codes(counts.obs, data_cfg["batch_key"])
    if data_cfg["label_key"]:
        categories["labels"] = category_codes(counts.obs, data_cfg["label_key"])[1]
    seed = train_cfg["seed"]
    train_idx, val_idx = split_train_val(counts.n_obs, train_cfg["val_fraction"], seed, str(data_path))
    torch.manual_seed(seed)
    model = described.build(counts.n_vars, len(categories.get("batch", [])))
    if not model.counts and model_cfg["standardize"]:
        model.feature_mean, model.feature_std = feature_moments(counts, train_idx)
    partners = (positive_partners(contrastive, counts, lambda: input_space(model, counts))
                if contrastive["weight"] else None)
    task = CountVAETask(model, counts, batch_codes, train_idx, val_idx, train_cfg["batch_size"], seed,
                        model_cfg["beta"], model_cfg["kl_warmup_epochs"], partners, contrastive)

    def bundle_for(result: FitResult) -> Bundle:
        final = kept_metrics(result, ("train_", "val_"))
        if result.status == "complete":
            final |= reconstruction_report(model, counts, batch_codes, train_idx,
                                           val_idx if len(val_idx) else train_idx)
        return Bundle(weights=weights_to_numpy(model),
                      model_config=described.to_toml(),
                      data=fingerprint, var_names=counts.var_names, categories=categories, final_metrics=final,
                      results={"val_index": val_idx})

    return phase.fit(task, bundle_for)
