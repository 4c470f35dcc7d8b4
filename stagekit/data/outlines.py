"""Prior cell or nucleus outlines in the forms vendors export them, as one vertex array per id.

- vertex tables (Xenium's nucleus_boundaries, CosMx's *-polygons.csv): rows of (id, x, y), one polygon per id;
- WKB geometries (MERSCOPE's cell_boundaries.parquet): a (Multi)Polygon per id and z-plane; the planes of one id
  are merged (their union), as the transcripts of every plane are read in two dimensions;
- label images (CosMx's CellLabels_F*.tif, one per field of view): the outline of each label's pixels.

Each outline is made valid with shapely and, where a label or geometry falls into pieces, its largest piece is
kept. Vertices are in the units of the input (pixels or micron); the caller scales them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from stagekit.errors import UserError


def _largest_exterior(shape) -> np.ndarray | None:
    """The exterior ring of the largest polygon of a valid shape (None for an empty or area-less one)."""
    import shapely

    shape = shapely.make_valid(shape)
    parts = [g for g in getattr(shape, "geoms", [shape]) if g.geom_type == "Polygon" and g.area > 0]
    if not parts:  # a GeometryCollection from make_valid may nest its polygons one level down
        parts = [p for g in getattr(shape, "geoms", []) for p in getattr(g, "geoms", [g])
                 if p.geom_type == "Polygon" and p.area > 0]
    if not parts:
        return None
    return np.asarray(max(parts, key=lambda g: g.area).exterior.coords)[:-1]


def from_vertex_table(ids: np.ndarray, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """One polygon per id from its rows, in file order (a repeated closing vertex is dropped)."""
    unique, first = np.unique(ids, return_index=True)
    unique = unique[np.argsort(first)]
    code = pd.Categorical(ids, categories=unique).codes
    order = np.argsort(code, kind="stable")
    starts = np.searchsorted(code[order], np.arange(len(unique) + 1))
    outlines = {}
    for i, name in enumerate(unique):
        rows = order[starts[i]:starts[i + 1]]
        pts = np.stack([x[rows], y[rows]], 1)
        if len(pts) > 1 and np.allclose(pts[0], pts[-1]):
            pts = pts[:-1]
        outlines[str(name)] = pts
    return outlines


def from_wkb(path: Path, ids: np.ndarray, geometries: np.ndarray) -> dict[str, np.ndarray]:
    """The union over z-planes of each id's WKB (Multi)Polygons, its largest piece's exterior."""
    import shapely

    try:
        shapes = shapely.from_wkb(geometries)
    except Exception as exc:  # shapely raises GEOSException and others for bytes that are not WKB
        raise UserError(f"{path}: its geometry column does not hold WKB polygons ({str(exc)[:100]})") from None
    outlines = {}
    for name, index in pd.Series(np.arange(len(ids))).groupby(ids, sort=False):
        exterior = _largest_exterior(shapely.union_all(shapely.make_valid(shapes[index.to_numpy()])))
        if exterior is not None:
            outlines[str(name)] = exterior
    return outlines


def from_label_image(labels: np.ndarray, tolerance: float = 0.5) -> dict[int, np.ndarray]:
    """Outline (x = column, y = row, at pixel centres) of every positive label's pixels, simplified to within
    `tolerance` pixels."""
    import shapely
    from skimage.measure import find_contours, regionprops

    outlines = {}
    for region in regionprops(np.asarray(labels).astype(np.int64)):
        r0, c0, _, _ = region.bbox
        mask = np.pad(region.image, 1).astype(np.float32)
        contour = max(find_contours(mask, 0.5), key=len) + [r0 - 1, c0 - 1]
        if len(contour) < 4:
            continue
        exterior = _largest_exterior(shapely.Polygon(contour[:, ::-1]).simplify(tolerance))
        if exterior is not None:
            outlines[int(region.label)] = exterior
    return outlines
