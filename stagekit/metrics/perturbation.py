"""How close a predicted set of perturbed cells is to the observed one, for a model and for baselines alike.

Set distances (energy distance; MMD with a Gaussian kernel whose width is the median distance between observed
cells) are geomloss's, the training loss's library, read from distance matrices so that a group's methods share
the observed cells' own. The change from control (delta = mean of a set minus mean of
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
    """Energy distance of `a` and `b` (each subsampled to MAX_CELLS, `a` drawn first)."""
    return SetDistances(b, width=1.0).against(a, seed)[0]


def median_distance(x: np.ndarray, seed: int = 0) -> float:
    sample = torch.from_numpy(_subsample(np.asarray(x, np.float32), np.random.default_rng(seed))[:500])
    distances = torch.cdist(sample, sample)
    upper = distances[torch.triu(torch.ones_like(distances, dtype=torch.bool), diagonal=1)]
    return float(upper.median()) if len(upper) else 1.0


def mmd(a: np.ndarray, b: np.ndarray, width: float, seed: int = 0) -> float:
    """Squared MMD with a Gaussian kernel of the given width."""
    return SetDistances(b, width).against(a, seed)[1]


class SetDistances:
    """Energy distance and squared Gaussian-kernel MMD of candidate sets against one observed set, as geomloss's
    SamplesLoss("energy") and SamplesLoss("gaussian", blur=width) give them (tested), read from one distance
    matrix per pair of sets. Each side is subsampled to MAX_CELLS as `energy_distance` draws it (the candidate
    first, then the observed cells from the same seeded generator), and the observed subsample's inner terms are
    computed once for every candidate that draws the same one: a group's methods share them."""

    def __init__(self, observed: np.ndarray, width: float) -> None:
        self.observed = observed
        self.scale = 2.0 * max(width, 1e-6) ** 2
        self._inner: dict[bytes, tuple[torch.Tensor, torch.Tensor, float, float]] = {}

    def _terms(self, distances: torch.Tensor, inner: bool = False) -> tuple[float, float]:
        """Mean distance and mean Gaussian kernel (of a set with itself when `inner`: its diagonal is 0 exactly,
        where float32 distances through matrix products leave about 1e-3)."""
        if inner:
            distances.fill_diagonal_(0.0)
        return (float(distances.mean(dtype=torch.float64)),
                float(torch.exp(-distances.square() / self.scale).mean(dtype=torch.float64)))

    def _observed_side(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, float, float]:
        """The observed subsample (centred), its centre and its inner terms."""
        n = len(self.observed)
        index = np.sort(rng.choice(n, MAX_CELLS, replace=False)) if n > MAX_CELLS else np.arange(n)
        key = index.tobytes()
        if key not in self._inner:
            # both distances are translation-invariant: centring keeps float32 distances exact enough
            x = torch.from_numpy(np.ascontiguousarray(self.observed[index], np.float32))
            centre = x.mean(0)
            x = x - centre
            # one subsample is kept at a time: a group's methods draw the same one unless larger than MAX_CELLS
            self._inner = {key: (x, centre, *self._terms(torch.cdist(x, x), inner=True))}
        return self._inner[key]

    def against(self, candidate: np.ndarray, seed: int = 0) -> tuple[float, float]:
        """(energy distance, MMD) of `candidate` against the observed set."""
        rng = np.random.default_rng(seed)
        y = torch.from_numpy(np.ascontiguousarray(_subsample(candidate, rng), np.float32))
        x, centre, x_distance, x_kernel = self._observed_side(rng)
        y = y - centre
        y_distance, y_kernel = self._terms(torch.cdist(y, y), inner=True)
        cross_distance, cross_kernel = self._terms(torch.cdist(x, y))
        return (cross_distance - 0.5 * x_distance - 0.5 * y_distance,
                0.5 * x_kernel + 0.5 * y_kernel - cross_kernel)


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
               distances: dict[str, SetDistances], seed: int = 0, top_n: int = 50) -> dict[str, float]:
    """Every score of one predicted set; each dict holds a set in 'genes' and in 'embedding' space (a space with no
    columns, e.g. genes of a model without a gene space, is not scored); `distances` holds the observed sets'
    SetDistances, shared by the methods scored against them."""
    scores = {}
    for space in ("embedding", "genes"):
        if predicted[space].shape[1]:
            scores[f"energy_{space}"], scores[f"mmd_{space}"] = distances[space].against(predicted[space], seed)
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

    def energies(firsts: list[np.ndarray]) -> np.ndarray:
        """geomloss's energy distance (mean cross distance minus half of each side's mean inner distance) of each
        split into `first` and the rest, all splits in one product so the distance matrix is read once."""
        a = torch.zeros(len(pooled), len(firsts), dtype=torch.float64)
        for j, first in enumerate(firsts):
            a[torch.from_numpy(first), j] = 1.0 / len(first)
        b = (a == 0).double() / (len(pooled) - len(firsts[0]))
        da, db = (distances @ torch.cat([a, b], 1)).split(len(firsts), 1)
        return ((a * db).sum(0) - 0.5 * (a * da).sum(0) - 0.5 * (b * db).sum(0)).numpy()

    order_rng = np.random.default_rng([seed, 47])
    splits = [np.arange(len(x))] + [order_rng.permutation(len(pooled))[:len(x)] for _ in range(draws)]
    distance, *null = (float(e) for e in energies(splits))
    return bool(distance > max(null)), distance, float(max(null))
