"""Validation metrics over the whole validation set: per-sample outputs are gathered from every process
(uneven counts padded and trimmed) and scored once, never averaged per batch."""

from __future__ import annotations

import numpy as np
import torch


def gather_rows(fabric, rows: torch.Tensor) -> torch.Tensor:
    """Concatenate a tensor's rows from every process (each may hold a different number)."""
    if fabric.world_size == 1:
        return rows
    sizes = fabric.all_gather(torch.tensor([len(rows)], device=rows.device)).reshape(-1).tolist()
    padded = torch.zeros((max(sizes), *rows.shape[1:]), dtype=rows.dtype, device=rows.device)
    padded[: len(rows)] = rows
    everything = fabric.all_gather(padded)
    return torch.cat([everything[r, :n] for r, n in enumerate(sizes)])


def binary_scores(probability: np.ndarray, target: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """AUROC, F1 at `threshold`, the predicted-positive share and the mean predicted probability (a collapsing
    classifier shows in the last two before anywhere else). AUROC is NaN when only one class is present."""
    from sklearn.metrics import f1_score, roc_auc_score

    target = np.asarray(target).astype(bool)
    predicted = np.asarray(probability) >= threshold
    auroc = float(roc_auc_score(target, probability)) if 0 < target.sum() < len(target) else float("nan")
    return {"auroc": auroc, "f1": float(f1_score(target, predicted, zero_division=0.0)),
            "positive_share": float(predicted.mean()), "mean_probability": float(np.mean(probability))}


def class_shares(predicted: np.ndarray, n_classes: int) -> dict[str, float]:
    """Share of cells predicted as each class, and the largest share."""
    shares = np.bincount(np.asarray(predicted, dtype=np.int64), minlength=n_classes) / max(len(predicted), 1)
    return {f"share_{c}": float(s) for c, s in enumerate(shares)} | {"largest_share": float(shares.max())}
