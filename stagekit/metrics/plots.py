"""PNG figures. matplotlib is imported only when a figure is drawn, with the non-interactive backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_k_scores(table: dict[str, np.ndarray], chosen: int, path: Path) -> Path:
    plt = _pyplot()
    names = [n for n in ("silhouette", "calinski_harabasz", "davies_bouldin", "gap", "eigengap") if n in table]
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3), constrained_layout=True)
    for ax, name in zip(np.atleast_1d(axes), names, strict=True):
        ax.plot(table["k"], table[name], marker="o", ms=3)
        ax.axvline(chosen, color="crimson", ls="--", lw=1)
        better = "lower" if name == "davies_bouldin" else "higher"
        ax.set(title=f"{name} ({better} is better)", xlabel="k")
    fig.suptitle(f"cluster-search: k = {chosen}")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_contingency(table: np.ndarray, labels: list[str], clusters: list[str], path: Path) -> Path:
    plt = _pyplot()
    fraction = table / np.maximum(table.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(max(4.5, 2.5 + 0.5 * len(clusters)), max(3.0, 1.2 + 0.45 * len(labels))),
                           constrained_layout=True)
    image = ax.imshow(fraction, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(clusters)), clusters, rotation=90)
    ax.set_yticks(range(len(labels)), labels)
    for (i, j), n in np.ndenumerate(table):
        if n:
            ax.text(j, i, str(n), ha="center", va="center", fontsize=7,
                    color="white" if fraction[i, j] > 0.6 else "black")
    ax.set(xlabel="cluster", ylabel="label", title="cells per label and cluster")
    fig.colorbar(image, ax=ax, label="fraction of label")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_embedding(coords: np.ndarray, colourings: dict[str, np.ndarray], path: Path) -> Path:
    """One scatter panel per colouring (e.g. cluster, label) of a 2-D embedding."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(colourings), figsize=(4.5 * len(colourings), 4), constrained_layout=True)
    for ax, (name, values) in zip(np.atleast_1d(axes), colourings.items(), strict=True):
        categories = sorted(set(values.tolist()), key=str)
        cmap = plt.get_cmap("tab20", max(len(categories), 1))
        for i, category in enumerate(categories):
            mask = values == category
            ax.scatter(coords[mask, 0], coords[mask, 1], s=2, color=cmap(i), label=str(category), rasterized=True)
        ax.set(title=name, xticks=[], yticks=[])
        if len(categories) <= 20:
            ax.legend(markerscale=4, fontsize=6, frameon=False, loc="best")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_history(histories: list[tuple[str, dict[str, list[float]]]], path: Path) -> Path:
    """Loss curves of a bundle and its ancestors, one panel per stage."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(histories), figsize=(4 * len(histories), 3), constrained_layout=True)
    for ax, (title, history) in zip(np.atleast_1d(axes), histories, strict=True):
        for key in ("train_loss", "val_loss"):
            if history.get(key):
                ax.plot(range(1, len(history[key]) + 1), history[key], label=key)
        ax.set(title=title, xlabel="epoch")
        ax.legend(fontsize=7, frameon=False)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_delta_scatter(panels: list[tuple[str, np.ndarray, np.ndarray]], path: Path) -> Path:
    """Predicted vs observed change from control per gene, one panel per (title, observed, predicted)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(3.6 * max(len(panels), 1), 3.6),
                             constrained_layout=True, squeeze=False)
    for ax, (title, observed, predicted) in zip(axes[0], panels, strict=False):
        ax.scatter(observed, predicted, s=3, alpha=0.6, rasterized=True)
        low, high = float(min(observed.min(), predicted.min())), float(max(observed.max(), predicted.max()))
        ax.plot([low, high], [low, high], lw=0.8, color="grey")
        r = np.corrcoef(observed, predicted)[0, 1] if observed.std() and predicted.std() else 0.0
        ax.set(title=f"{title}\nr = {r:.2f}", xlabel="observed delta", ylabel="predicted delta")
        ax.title.set_fontsize(8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def umap_layout(latent: np.ndarray, seed: int) -> np.ndarray:
    """2-D UMAP coordinates. PCA initialisation: the default spectral one fails (with a warning) on the
    disconnected neighbour graphs that well-separated cell types give, and falls back to a random layout."""
    from umap import UMAP

    return UMAP(init="pca", random_state=seed, n_jobs=1).fit_transform(latent)


def plot_segmentation_region(xy: np.ndarray, cell: np.ndarray, nuclei: np.ndarray, path: Path,
                             method: str = "stagekit", size: float = 100.0,
                             boundaries: dict[str, np.ndarray] | None = None) -> Path:
    """Transcripts of a `size` x `size` micron window at the sample's centre coloured by assigned cell (light
    grey: unassigned; the cells' palette holds no greys) over the nucleus outlines, titled by `method`; with
    `boundaries` (cell id -> polygon vertices), each cell's boundary in its colour."""
    plt = _pyplot()
    centre = np.median(xy, 0)
    lo, hi = centre - size / 2, centre + size / 2
    inside = np.all((xy >= lo) & (xy <= hi), 1)
    names, code = np.unique(cell[inside], return_inverse=True)
    palette = plt.get_cmap("tab20")(np.r_[0:14, 16:20])  # tab20 without its two greys (14, 15)
    colours = palette[np.random.default_rng(0).permutation(len(names)) % len(palette)]
    fig, ax = plt.subplots(figsize=(6, 6), constrained_layout=True)
    none = cell[inside] == ""
    ax.scatter(*xy[inside][none].T, s=2, c="lightgrey", label="unassigned")
    ax.scatter(*xy[inside][~none].T, s=3, c=colours[code[~none]])
    for poly in nuclei:
        if np.any(np.all((poly >= lo) & (poly <= hi), 1)):
            ax.plot(*poly.T, color="black", lw=0.8)
    colour_of = dict(zip(names, colours, strict=True))
    for name, poly in (boundaries or {}).items():
        if name in colour_of and np.any(np.all((poly >= lo) & (poly <= hi), 1)):
            ax.plot(*poly.T, color=colour_of[name], lw=1.0)
    ax.set(xlim=(lo[0], hi[0]), ylim=(lo[1], hi[1]), aspect="equal", xlabel="x (micron)", ylabel="y (micron)",
           title=f"{method}: transcripts by assigned cell\n({int(inside.sum()):,} in view; light grey: unassigned)\n"
                 "black: prior outlines" + ("; coloured lines: cell boundaries" if boundaries else ""))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
