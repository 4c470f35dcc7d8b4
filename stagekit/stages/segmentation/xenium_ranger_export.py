"""The files Xenium Ranger's `import-segmentation` takes for a transcript assignment (Baysor's route), so that
Xenium Explorer shows a segmentation of a Xenium run:

    xeniumranger import-segmentation --id=<name> --xenium-bundle=<the Xenium output folder> \\
        --transcript-assignment=xeniumranger/transcript_assignment.csv \\
        --viz-polygons=xeniumranger/cell_polygons.geojson --units=microns

- `transcript_assignment.csv`: transcript_id (the run's own ids), cell ("cell-<N>", empty where none), is_noise
  (true where unassigned), x, y, z (micron), one row per transcript segmented (control probes and low-quality
  transcripts are left out, as Baysor and proseg leave them out);
- `cell_polygons.geojson`: a GeoJSON GeometryCollection, one Polygon per cell with its integer N in "cell" (the
  form Xenium Ranger 3.x reads); `cell_polygons_features.geojson`: the same polygons as a FeatureCollection, the
  cell name "cell-<N>" as the feature's id and in properties.cell (the form Xenium Ranger 4 reads);
- `cell_id_map.csv`: stagekit's cell id beside the cell name and N.

Every cell named in the assignment has exactly one polygon and every polygon at least one transcript: Xenium
Ranger refuses either mismatch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

FOLDER = "xeniumranger"


def _rings(polygon) -> list:
    """A shapely Polygon's exterior as a closed GeoJSON ring of [x, y] pairs."""
    coords = np.asarray(polygon.exterior.coords)
    return [[[round(float(x), 4), round(float(y), 4)] for x, y in coords]]


def write_xenium_ranger(transcript_ids: np.ndarray, xy: np.ndarray, z: np.ndarray | None, cell: np.ndarray,
                        names: np.ndarray, polygons: list, folder: Path) -> Path:
    """`cell`: stagekit's cell id of each transcript ('' for none); `names`, `polygons`: one boundary per cell, as
    cell_boundaries.parquet has them. Writes `folder/xeniumranger/` and returns it."""
    out = folder / FOLDER
    out.mkdir()
    number = pd.Index(names).get_indexer(cell) + 1  # N of "cell-<N>", 1-based; 0 where unassigned
    assigned = cell != ""
    label = np.where(assigned, np.char.add("cell-", number.astype(str)), "")
    table = pd.DataFrame({"transcript_id": transcript_ids, "cell": label,
                          "is_noise": np.where(assigned, "false", "true"), "x": xy[:, 0], "y": xy[:, 1]})
    if z is not None:
        table["z"] = z
    table.to_csv(out / "transcript_assignment.csv", index=False)
    numbers = np.arange(1, len(names) + 1)
    collection = {"type": "GeometryCollection",
                  "geometries": [{"type": "Polygon", "coordinates": _rings(p), "cell": int(n)}
                                 for p, n in zip(polygons, numbers, strict=True)]}
    (out / "cell_polygons.geojson").write_text(json.dumps(collection))
    features = {"type": "FeatureCollection",
                "features": [{"type": "Feature", "id": f"cell-{n}", "properties": {"cell": f"cell-{n}"},
                              "geometry": {"type": "Polygon", "coordinates": _rings(p)}}
                             for p, n in zip(polygons, numbers, strict=True)]}
    (out / "cell_polygons_features.geojson").write_text(json.dumps(features))
    pd.DataFrame({"stagekit_cell_id": names, "cell": [f"cell-{n}" for n in numbers], "cell_number": numbers}).to_csv(
        out / "cell_id_map.csv", index=False)
    return out
