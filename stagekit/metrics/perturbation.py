"""How close a predicted set of perturbed cells is to the observed one, for a model and for baselines alike.

Set distances (energy distance; MMD with a Gaussian kernel whose width is the median distance between observed
cells) come from geomloss, as the training loss does. The change from control (delta = mean of a set minus mean of
the context's controls) is compared by Pearson correlation on all genes and on the `top_n` genes the observed
perturbation changes most, and by the fraction of those whose change has the right sign. `spread_ratio` is the
mean per-gene standard deviation of the prediction over that of the observed cells (1: as spread out; a model
that squeezes its cells together scores well below 1).
"""

from __future__ import annotations

import numpy as np
import torch

MAX_CELLS = 2000  # cells per set in a distance (a seeded subsample beyond), so large groups stay fast
LOWER_IS_BETTER = ("energy_embedding", "energy_genes", "mmd_embedding", "mmd_genes")


def _subsample(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return x if len(x) <= MAX_CELLS else x[np.sort(rng.choice(len(x), MAX_CELLS, replace=False))]


def energy_distance(a: np.ndarray, b: np.ndarray, seed: int = 0) -> float:
    from stagekit.losses.sets import set_distance

    rng = np.random.default_rng(seed)
    x, y = (torch.from_numpy(np.ascontiguousarray(_subsample(v, rng), np.float32))[None] for v in (a, b))
    return float(set_distance(x, y, "energy")[0])


def median_distance(x: np.ndarray, seed: int = 0) -> float:
    sample = torch.from_numpy(_subsample(np.asarray(x, np.float32), np.random.default_rng(seed))[:500])
    distances = torch.cdist(sample, sample)
    upper = distances[torch.triu(torch.ones_like(distances, dtype=torch.bool), diagonal=1)]
    return float(upper.median()) if len(upper) else 1.0


def mmd(a: np.ndarray, b: np.ndarray, width: float, seed: int = 0) -> float:
    """Squared MMD with a Gaussian kernel of the given width (geomloss 'gaussian' kernel loss)."""
    from geomloss import SamplesLoss

    rng = np.random.default_rng(seed)
    x, y = (torch.from_numpy(np.ascontiguousarray(_subsample(v, rng), np.float32)) for v in (a, b))
    return float(SamplesLoss("gaussian", blur=max(width, 1e-6))(x, y))


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """0 when either side does not vary (predicting no change carries no direction)."""
    if a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def delta_scores(predicted: np.ndarray, observed: np.ndarray, controls: np.ndarray, top_n: int = 50
                 ) -> dict[str, float]:
    """Agreement of the predicted and observed change from control (genes as columns; `controls` the control
    cells, or their mean as one row)."""
    base = controls.mean(0)
    true_delta, predicted_delta = observed.mean(0) - base, predicted.mean(0) - base
    top = np.argsort(-np.abs(true_delta), kind="stable")[:top_n]
    observed_spread = observed.std(0).mean()
    return {"pearson_delta": _pearson(predicted_delta, true_delta),
            f"pearson_delta_top{top_n}": _pearson(predicted_delta[top], true_delta[top]),
            f"sign_top{top_n}": float((np.sign(predicted_delta[top]) == np.sign(true_delta[top])).mean()),
            "spread_ratio": float(predicted.std(0).mean() / observed_spread) if observed_spread > 0 else 0.0}


def set_scores(predicted: dict[str, np.ndarray], observed: dict[str, np.ndarray], controls: dict[str, np.ndarray],
               widths: dict[str, float], seed: int = 0, top_n: int = 50) -> dict[str, float]:
    """Every score of one predicted set; each dict holds a set in 'genes' and in 'embedding' space (a space with no
    columns, e.g. genes of a model without a gene space, is not scored)."""
    scores = {}
    for space in ("embedding", "genes"):
        if predicted[space].shape[1]:
            scores[f"energy_{space}"] = energy_distance(predicted[space], observed[space], seed)
            scores[f"mmd_{space}"] = mmd(predicted[space], observed[space], widths[space], seed)
    if not predicted["genes"].shape[1]:
        return scores
    # a context's controls are shared by its groups: their mean may come computed once ("genes_mean")
    base = controls["genes_mean"] if "genes_mean" in controls else controls["genes"]
    return scores | delta_scores(predicted["genes"], observed["genes"], base, top_n)


def effect_is_measurable(observed: np.ndarray, controls: np.ndarray, draws: int = 20, seed: int = 0
                         ) -> tuple[bool, float, float]:
    """Whether the observed cells differ from the controls: their energy distance against its values when the
    pooled cells are split at random into sets of the same two sizes (a permutation test; measurable when above all
    `draws` of them, p < 1 / (draws + 1)). Both sides are the subsamples `energy_distance` takes; the pooled
    cells' distances are computed once and every split's energy distance is read from them. Returns (measurable,
    distance, largest null value)."""
    rng = np.random.default_rng(seed)
    x, y = (np.ascontiguousarray(_subsample(v, rng), np.float32) for v in (observed, controls))
    pooled = torch.from_numpy(np.concatenate([x, y])).double()
    distances = torch.cdist(pooled, pooled)

    def energy(first: np.ndarray) -> float:
        """geomloss's energy distance (mean cross distance minus half of each side's mean inner distance)."""
        a = torch.zeros(len(pooled), dtype=torch.float64)
        a[torch.from_numpy(first)] = 1.0 / len(first)
        b = (a == 0).double() / (len(pooled) - len(first))
        da, db = distances @ a, distances @ b
        return float(a @ db - 0.5 * (a @ da) - 0.5 * (b @ db))

    distance = energy(np.arange(len(x)))
    order_rng = np.random.default_rng([seed, 47])
    null = [energy(order_rng.permutation(len(pooled))[:len(x)]) for _ in range(draws)]
    return bool(distance > max(null)), distance, float(max(null))
