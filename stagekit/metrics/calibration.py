"""Calibration of a classifier's probabilities: expected calibration error and temperature scaling
(Guo et al. 2017, "On Calibration of Modern Neural Networks")."""

from __future__ import annotations

import numpy as np


def expected_calibration_error(probability: np.ndarray, target: np.ndarray, n_bins: int = 15) -> float:
    """The gap between confidence and accuracy, averaged over equal-width confidence bins weighted by their cells.
    `probability` is (cells, classes); the confidence of a cell is the probability of its predicted class."""
    confidence, hit = probability.max(1), probability.argmax(1) == target
    bins = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    gap = 0.0
    for b in np.unique(bins):
        members = bins == b
        gap += members.mean() * abs(hit[members].mean() - confidence[members].mean())
    return float(gap)


def log_probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """(cells, classes) log-probabilities of logits divided by `temperature`; one logit is a binary task."""
    from scipy.special import log_expit, log_softmax

    z = np.asarray(logits, dtype=np.float64) / temperature
    if z.shape[1] == 1:
        return np.concatenate([log_expit(-z), log_expit(z)], axis=1)
    return log_softmax(z, axis=1)


def fit_temperature(logits: np.ndarray, target: np.ndarray) -> float:
    """The temperature T (in [0.05, 20]) minimising the negative log-likelihood of softmax(logits / T) on labelled
    cells. Dividing by T keeps every prediction (the argmax, and a binary logit's sign) and only changes how sure
    they are."""
    from scipy.optimize import minimize_scalar

    rows = np.arange(len(target))

    def nll(log_t: float) -> float:
        return float(-log_probabilities(logits, np.exp(log_t))[rows, target].mean())

    found = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(found.x))
