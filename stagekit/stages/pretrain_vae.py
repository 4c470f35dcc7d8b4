"""`stagekit pretrain --preset vae`: a count VAE, the first stage of phenotype clustering."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from stagekit.bundle import Bundle
from stagekit.config import Config
from stagekit.data.anndata_io import CountMatrix, category_codes, load_counts
from stagekit.data.batching import epoch_plan, eval_plan, split_train_val
from stagekit.losses.counts import count_nll
from stagekit.models.vae import VAE
from stagekit.stages.runner import PhaseRun
from stagekit.train import FitResult, Task
from stagekit.train.state import weights_to_numpy


class CountVAETask(Task):
    monitor = "elbo"  # independent of the KL warm-up, so early stopping compares like with like

    def __init__(self, model: VAE, counts: CountMatrix, batch_codes: np.ndarray | None, train_idx: np.ndarray,
                 val_idx: np.ndarray, batch_size: int, seed: int, beta: float, kl_warmup_epochs: int) -> None:
        self.model, self.counts, self.batch_codes = model, counts, batch_codes
        self.train_idx, self.val_idx = train_idx, val_idx
        self.batch_size, self.seed = batch_size, seed
        self.beta, self.kl_warmup_epochs = beta, kl_warmup_epochs

    def kl_weight(self, epoch: int) -> float:
        if not self.kl_warmup_epochs:
            return self.beta
        return self.beta * min(1.0, (epoch + 1) / self.kl_warmup_epochs)

    def train_plan(self, epoch: int, rank: int, world: int) -> list[np.ndarray]:
        return epoch_plan(self.train_idx, self.batch_size, self.seed, epoch, rank, world,
                          contiguous=self.counts.backed)

    def val_plan(self, rank: int, world: int) -> list[np.ndarray]:
        return eval_plan(self.val_idx, self.batch_size, rank, world)

    def load(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        batch = {"x": torch.from_numpy(self.counts.rows(rows))}
        if self.batch_codes is not None:
            batch["batch_index"] = torch.from_numpy(self.batch_codes[rows])
        return batch

    def step(self, model: torch.nn.Module, batch: dict, epoch: int, train: bool) -> dict[str, torch.Tensor]:
        out = model(batch["x"], batch.get("batch_index"), kl_weight=self.kl_weight(epoch))
        return out | {"elbo": out["reconstruction"] + out["kl"]}

    def epoch_extras(self, epoch: int) -> dict[str, float]:
        return {"kl_weight": self.kl_weight(epoch)}


@torch.no_grad()
def reconstruction_report(model: VAE, counts: CountMatrix, batch_codes: np.ndarray | None,
                          train_idx: np.ndarray, eval_idx: np.ndarray, batch_size: int = 1024) -> dict[str, float]:
    """Held-out reconstruction (z at the posterior mean) against a per-gene-mean baseline.

    Both predict expected normalised expression (counts per 10k): the model its decoded mean, the baseline
    each gene's training mean. Reported as MSE of log1p of the prediction against log1p of the observed
    normalised counts, and as NB negative log-likelihood per cell (with the model's dispersion for both).
    """
    model.eval()
    norm_sum = np.zeros(counts.n_vars)
    for rows in eval_plan(train_idx, batch_size):
        x = counts.rows(rows).astype(np.float64)
        norm_sum += (x / np.maximum(x.sum(1, keepdims=True), 1)).sum(0)
    share = torch.from_numpy(norm_sum / len(train_idx)).float()  # mean fraction of each gene per cell
    theta = model.log_theta.exp()
    totals = {"recon_mse_lognorm": 0.0, "baseline_mse_lognorm": 0.0, "recon_nll": 0.0, "baseline_nll": 0.0}
    for rows in eval_plan(eval_idx, batch_size):
        x = torch.from_numpy(counts.rows(rows))
        b = torch.from_numpy(batch_codes[rows]) if batch_codes is not None else None
        mean, _, library = model.encode(x, b)
        mu, zi = model.decode(mean, library, b)
        target = torch.log1p(1e4 * x / library)
        totals["recon_mse_lognorm"] += float(((torch.log1p(1e4 * mu / library) - target) ** 2).mean(1).sum())
        totals["baseline_mse_lognorm"] += float(((torch.log1p(1e4 * share) - target) ** 2).mean(1).sum())
        totals["recon_nll"] += float(count_nll(x, mu, theta, zi).sum())
        totals["baseline_nll"] += float(count_nll(x, library * share, theta).sum())
    report = {k: v / len(eval_idx) for k, v in totals.items()}
    report["recon_mse_ratio"] = report["recon_mse_lognorm"] / report["baseline_mse_lognorm"]
    return report


def run(config: Config, data_path: Path, output: Path, resume: Path | None = None, quiet: bool = False) -> Path | None:
    data_cfg, model_cfg, train_cfg = config["data"], config["model"], config["training"]
    phase = PhaseRun(config, output, resume, quiet)
    obs_keys = tuple(k for k in (data_cfg["batch_key"], data_cfg["label_key"]) if k)
    counts = load_counts(data_path, data_cfg["layer"], obs_keys, backed=data_cfg["backed"])
    fingerprint = counts.fingerprint()
    phase.check_resume_data(fingerprint)
    phase.engine.launch()

    categories: dict[str, list[str]] = {}
    batch_codes = None
    if data_cfg["batch_key"]:
        batch_codes, categories["batch"] = category_codes(counts.obs, data_cfg["batch_key"])
    if data_cfg["label_key"]:
        categories["labels"] = category_codes(counts.obs, data_cfg["label_key"])[1]
    seed = train_cfg["seed"]
    train_idx, val_idx = split_train_val(counts.n_obs, train_cfg["val_fraction"], seed)
    torch.manual_seed(seed)
    model = VAE(counts.n_vars, model_cfg["n_latent"], model_cfg["n_hidden"], model_cfg["dropout"],
                n_batches=len(categories.get("batch", [])), likelihood=model_cfg["likelihood"])
    task = CountVAETask(model, counts, batch_codes, train_idx, val_idx, train_cfg["batch_size"], seed,
                        model_cfg["beta"], model_cfg["kl_warmup_epochs"])

    def bundle_for(result: FitResult) -> Bundle:
        final = {k: v[-1] for k, v in result.history.items() if k.startswith(("train_", "val_"))}
        if result.status == "complete":
            final |= reconstruction_report(model, counts, batch_codes, train_idx,
                                           val_idx if len(val_idx) else train_idx)
        return Bundle(stage="pretrain", model="vae", config_toml="", seed=seed, weights=weights_to_numpy(model),
                      data=fingerprint, var_names=counts.var_names, categories=categories, final_metrics=final,
                      results={"val_index": val_idx})

    return phase.fit(task, bundle_for)
