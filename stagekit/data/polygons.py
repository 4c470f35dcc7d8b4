"""Geometry of nucleus polygons, vectorised over padded (n, V, 2) vertex arrays (closed: the first vertex is
repeated after the last, padding repeats it again and adds zero-length edges that change nothing)."""

from __future__ import annotations

import numpy as np


def _edges(vertices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return vertices[:, :-1], vertices[:, 1:]


def areas(vertices: np.ndarray) -> np.ndarray:
    """Enclosed area by the shoelace formula (not a perimeter, and not of a hull)."""
    a, b = _edges(vertices)
    return 0.5 * np.abs((a[..., 0] * b[..., 1] - b[..., 0] * a[..., 1]).sum(1))


def perimeters(vertices: np.ndarray) -> np.ndarray:
    a, b = _edges(vertices)
    return np.hypot(*(b - a).transpose(2, 0, 1)).sum(1)


def centroids(vertices: np.ndarray) -> np.ndarray:
    """Area centroids (the vertex mean where a polygon is degenerate)."""
    a, b = _edges(vertices)
    cross = a[..., 0] * b[..., 1] - b[..., 0] * a[..., 1]
    signed = 0.5 * cross.sum(1)
    cx = ((a[..., 0] + b[..., 0]) * cross).sum(1)
    cy = ((a[..., 1] + b[..., 1]) * cross).sum(1)
    safe = np.abs(signed) > 1e-12
    mean = a.mean(1)
    out = mean.copy()
    out[safe] = np.stack([cx[safe], cy[safe]], 1) / (6 * signed[safe, None])
    return out


def shape_features(vertices: np.ndarray, n_vertices: np.ndarray) -> dict[str, np.ndarray]:
    """Area, perimeter, elongation (major / minor axis of the vertex spread, >= 1) and circularity
    (4 pi area / perimeter^2, 1 for a disc): finite for every polygon with three or more vertices."""
    area, perimeter = areas(vertices), perimeters(vertices)
    elongation = np.ones(len(vertices))
    for i, (poly, n) in enumerate(zip(vertices, n_vertices, strict=True)):
        pts = poly[:n] - poly[:n].mean(0)
        eig = np.linalg.eigvalsh(pts.T @ pts / max(n, 1))
        elongation[i] = np.sqrt(eig[1] / max(eig[0], 1e-12))
    circularity = 4 * np.pi * area / np.maximum(perimeter, 1e-12) ** 2
    return {"area": area, "perimeter": perimeter, "elongation": elongation, "circularity": circularity}


def point_distances(points: np.ndarray, vertices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For pairs (points[i], vertices[i]): the distance from the point to the polygon's outline and whether the
    point lies inside (even-odd rule). The distance to the polygon is 0 inside."""
    a, b = _edges(vertices)
    ab = b - a
    ap = points[:, None, :] - a
    length2 = (ab ** 2).sum(-1)
    t = np.clip((ap * ab).sum(-1) / np.where(length2 > 0, length2, 1.0), 0.0, 1.0)
    nearest = a + t[..., None] * ab
    to_outline = np.hypot(*(points[:, None, :] - nearest).transpose(2, 0, 1)).min(1)
    px, py = points[:, 0, None], points[:, 1, None]
    straddles = (a[..., 1] > py) != (b[..., 1] > py)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_cross = a[..., 0] + (py - a[..., 1]) * ab[..., 0] / ab[..., 1]
    inside = (straddles & (px < x_cross)).sum(1) % 2 == 1
    return to_outline, inside
