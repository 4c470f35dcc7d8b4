"""Cell boundary polygons of a segmentation: for every assigned cell, the concave hull of its transcripts joined
with its prior outline (nucleus or vendor cell), so the outline lies inside the boundary.

A cell with fewer than four distinct transcript positions takes their convex hull grown by half a micron (a
point or a line has no area). Where the hull and the outline do not meet, or shapely's repair splits the union,
the convex hull of the union is the boundary: one valid polygon per cell, always.
"""

from __future__ import annotations

import numpy as np

from stagekit.data.spatial import Nuclei

CONCAVE_RATIO = 0.3  # shapely's concave_hull ratio: 0 follows the points closely, 1 is the convex hull
SMALL_CELL_BUFFER = 0.5  # micron around the convex hull of a cell with fewer than four distinct positions


def outline_polygons(outlines: Nuclei) -> list:
    """The prior outlines as valid shapely shapes, in `outlines.ids` order."""
    import shapely

    return [shapely.make_valid(shapely.Polygon(v[:n])) for v, n in zip(outlines.vertices, outlines.n_vertices,
                                                                        strict=True)]


def cell_polygons(xy: np.ndarray, cell: np.ndarray, outlines: Nuclei, prior_shapes: list) -> tuple[np.ndarray, list]:
    """Cell ids (sorted, as in cells.h5ad) and one shapely Polygon per cell (micron); `prior_shapes`: the
    outlines' `outline_polygons`."""
    import shapely

    assigned = cell != ""
    names, code = np.unique(cell[assigned], return_inverse=True)
    points = xy[assigned]
    order = np.argsort(code, kind="stable")
    bounds = np.searchsorted(code[order], np.arange(len(names) + 1))
    prior = {name: i for i, name in enumerate(outlines.ids)}
    polygons = []
    for i, name in enumerate(names):
        pts = np.unique(points[order[bounds[i]:bounds[i + 1]]], axis=0)
        cloud = shapely.MultiPoint(pts)
        hull = (shapely.concave_hull(cloud, ratio=CONCAVE_RATIO) if len(pts) >= 4
                else cloud.convex_hull.buffer(SMALL_CELL_BUFFER))
        if name in prior:
            hull = shapely.union_all([shapely.make_valid(hull), prior_shapes[prior[name]]])
        if hull.geom_type != "Polygon" or not hull.is_valid or hull.area <= 0:
            hull = hull.convex_hull
            if hull.geom_type != "Polygon":  # collinear points and no outline
                hull = hull.buffer(SMALL_CELL_BUFFER)
        polygons.append(hull)
    return names.astype(str), polygons


def write_geoparquet(names: np.ndarray, polygons: list, has_outline: np.ndarray, path) -> None:
    """GeoParquet (geopandas): one row per cell, `cell_id`, `has_nucleus` and the polygon in micron."""
    import geopandas

    frame = geopandas.GeoDataFrame({"cell_id": names, "has_nucleus": has_outline}, geometry=polygons)
    frame.to_parquet(path, index=False)
