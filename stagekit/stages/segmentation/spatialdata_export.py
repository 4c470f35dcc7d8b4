"""A segmentation as a SpatialData Zarr store (scverse's format, read by napari-spatialdata and sopa): the
transcripts as points with their cell, the cell boundaries and the prior outlines as shapes, and the cells x genes
table annotating the cell shapes. Coordinates in micron, in the store's default "global" coordinate system."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from stagekit.data.spatial import Sample

CELLS, TRANSCRIPTS = "cell_boundaries", "transcripts"


def write_spatialdata(sample: Sample, cell: np.ndarray, cells_table, names: np.ndarray, polygons: list,
                      outlines: list, path: Path) -> None:
    """`cells_table`: the cells x genes AnnData of extract (rows in `names` order, as `polygons`); `outlines`: the
    prior outlines' shapes in `sample.nuclei.ids` order."""
    import geopandas
    import pandas as pd
    import spatialdata
    from spatialdata.models import PointsModel, ShapesModel, TableModel

    genes = np.asarray(sample.genes)[sample.gene_codes]
    points = PointsModel.parse(pd.DataFrame({"x": sample.xy[:, 0], "y": sample.xy[:, 1], "gene": pd.Categorical(genes),
                                             "cell_id": cell}), coordinates={"x": "x", "y": "y"}, feature_key="gene")
    prior_name = "nucleus_boundaries" if sample.nuclei.what == "nucleus" else "vendor_cell_boundaries"
    shapes = {name: ShapesModel.parse(geopandas.GeoDataFrame(geometry=shapes, index=pd.Index(ids, name="cell_id")))
              for name, shapes, ids in ((CELLS, polygons, names), (prior_name, outlines, sample.nuclei.ids))}
    table = cells_table.copy()
    table.obs["region"] = pd.Categorical([CELLS] * table.n_obs)
    table.obs["cell_id"] = np.asarray(names)
    table = TableModel.parse(table, region=CELLS, region_key="region", instance_key="cell_id")
    store = spatialdata.SpatialData(points={TRANSCRIPTS: points}, shapes=shapes, tables={"table": table})
    with warnings.catch_warnings():  # zarr's notice of a future default, addressed to developers, not users
        warnings.filterwarnings("ignore", message=".*autosharding.*", category=UserWarning)
        store.write(path)
