"""The toy pipeline's code: a linear autoencoder (a pure nn.Module) trained on the one engine."""

from __future__ import annotations

from pathlib import Path

import anndata
import numpy as np
import torch
from torch import nn

from stagekit.bundle import Bundle
from stagekit.data.anndata_io import load_counts
from stagekit.stages.phase import PhaseRun, bundle_data_path, kept_metrics
from stagekit.stages.spec import CellsRequest, PhaseRequest, Report, ReportRequest, Table
from stagekit.train import FitResult, Task
from stagekit.train.state import load_weights, weights_to_numpy


class LinearAutoencoder(nn.Module):
    def __init__(self, n_genes: int, n_latent: int) -> None:
        super().__init__()
        self.encode, self.decode = nn.Linear(n_genes, n_latent), nn.Linear(n_latent, n_genes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


def log_counts(request_path: Path, layer: str) -> tuple[np.ndarray, list[str], dict]:
    counts = load_counts(request_path, layer)
    return np.log1p(counts.rows(np.arange(counts.n_obs))).astype(np.float32), counts.var_names, counts.fingerprint()


class ToyTask(Task):
    def __init__(self, model: nn.Module, x: np.ndarray, batch_size: int, seed: int) -> None:
        self.model, self.x, self.batch_size, self.seed = model, x, batch_size, seed

    def train_plan(self, epoch: int, rank: int, world: int) -> list:
        order = np.random.default_rng(self.seed + epoch).permutation(len(self.x))
        return np.array_split(order, max(1, len(order) // self.batch_size))[rank::world]

    def load(self, rows: np.ndarray) -> dict:
        return {"x": torch.from_numpy(self.x[np.sort(rows)])}

    def step(self, model: nn.Module, batch: dict, ctx) -> dict:
        return {"loss": ((model(batch["x"]) - batch["x"]) ** 2).mean()}


def train(request: PhaseRequest) -> Path | None:
    config = request.config
    x, genes, fingerprint = log_counts(request.data[0], config["toy"]["layer"])
    phase = PhaseRun(config, request.output, request.resume, request.quiet)
    phase.engine.launch()
    torch.manual_seed(config["training"]["seed"])
    model = LinearAutoencoder(len(genes), config["toy"]["n_latent"])
    task = ToyTask(model, x, config["training"]["batch_size"], config["training"]["seed"])

    def bundle_for(result: FitResult) -> Bundle:
        return Bundle(weights=weights_to_numpy(model), model_config=f"n_latent = {config['toy']['n_latent']}\n",
                      data=fingerprint, var_names=genes, final_metrics=kept_metrics(result, "train_"))

    return phase.fit(task, bundle_for)


def _model(bundle: Bundle) -> LinearAutoencoder:
    model = LinearAutoencoder(len(bundle.var_names), len(bundle.weights["encode.bias"]))
    load_weights(model, bundle.weights, bundle.path)
    return model.eval()


def cells(request: CellsRequest) -> tuple[anndata.AnnData, dict]:
    path = bundle_data_path(request.bundle, request.data[0] if request.data else None)
    x, _, _ = log_counts(path, "")
    adata = anndata.read_h5ad(path)
    with torch.no_grad():
        adata.obsm["X_stagekit"] = _model(request.bundle).encode(torch.from_numpy(x)).numpy()
        adata.layers["stagekit_reconstruction"] = _model(request.bundle)(torch.from_numpy(x)).numpy()
    return adata, {}


def report(request: ReportRequest) -> Report:
    """Reconstruction error of the log counts against predicting every gene's mean (the baseline)."""
    adata = request.cells if request.cells is not None else cells(CellsRequest(request.bundle, []))[0]
    x = np.log1p(np.asarray(adata.X.todense() if hasattr(adata.X, "todense") else adata.X, dtype=np.float32))
    model = float(((adata.layers["stagekit_reconstruction"] - x) ** 2).mean())
    baseline = float(((x.mean(0) - x) ** 2).mean())
    metrics = {"source": str(request.source), "mse": model, "mse_gene_means": baseline, "plots": []}
    return Report(metrics, [Table("reconstruction of log counts", ["method", "mse"],
                                  [["toy", model], ["gene means", baseline]])])
