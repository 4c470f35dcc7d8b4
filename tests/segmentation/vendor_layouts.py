"""The real crops in ../shared/data/spatial_minis/ put back into their vendors' export layouts.

- MERSCOPE: the crop keeps Vizgen's transcripts as a table (global_x, global_y, gene, global_z) and the cell
  boundaries of z-planes 0 and 1 as vertex tables with y negated (Giotto's convention). Written here as Vizgen
  exports them: detected_transcripts.csv and cell_boundaries.parquet (EntityID, ZIndex, Geometry as WKB
  MultiPolygons in micron, y as in the transcripts).
- CosMx: the transcripts and fov positions are the vendor's files, unchanged. The two CellLabels images were cut
  to 648 x 672 pixels from the vendor's 3,648 x 5,472 per field of view: the top rows of the right edge of fov 2
  and of the left edge of fov 3 (found by reading the vendor's cell_ID of each transcript off the image: 98.9 %
  and 98.8 % agree at these offsets). They are put back at those offsets into full-size images.
- ISS: pciSeq's own inputs (spots.csv and the nucleus label image as a scipy sparse .npz), read where they are.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd

MINIS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "spatial_minis"
COSMX_FOV_PIXELS = (3648, 5472)  # rows, columns of a CosMx field of view
COSMX_CROP_COLUMN = {2: 5472 - 672, 3: 0}  # where each crop's first column sits in its field of view


def merscope(folder: Path) -> Path:
    import shapely

    source = MINIS / "merscope_mousebrain_mini"
    folder.mkdir(parents=True, exist_ok=True)
    tx = pd.read_csv(source / "vizgen_transcripts.gz")
    tx.insert(0, "transcript_id", np.arange(len(tx)))
    tx.to_csv(folder / "detected_transcripts.csv", index=False)
    rows = []
    for z in (0, 1):
        vertices = pd.read_csv(source / f"z{z}_polygons.gz")
        for entity, polygon in vertices.groupby("poly_ID", sort=False):
            shape = shapely.MultiPolygon([shapely.Polygon(np.stack([polygon.x, -polygon.y], 1))])
            # Giotto's 38-digit poly_ID does not fit Vizgen's int64 EntityID: reduced modulo 2^62 (still unique here)
            rows.append({"EntityID": int(entity) % (1 << 62), "ZIndex": z, "Geometry": shapely.to_wkb(shape)})
    pd.DataFrame(rows).to_parquet(folder / "cell_boundaries.parquet")
    return folder


def cosmx(folder: Path) -> Path:
    import tifffile

    source = MINIS / "cosmx_lung12_mini"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("Lung12_tx_file.csv", "Lung12_fov_positions_file.csv"):
        shutil.copy(source / name, folder / name)
    for fov, column in COSMX_CROP_COLUMN.items():
        crop = tifffile.imread(source / f"CellLabels_F{fov:03d}.tif").astype(np.uint32)
        full = np.zeros(COSMX_FOV_PIXELS, np.uint32)
        full[:crop.shape[0], column:column + crop.shape[1]] = crop
        tifffile.imwrite(folder / f"CellLabels_F{fov:03d}.tif", full, compression="zlib")
    return folder


def iss(folder: Path) -> Path:  # noqa: ARG001 - the read-only shared folder itself: reading writes nothing there
    return MINIS / "iss_ca1_pciseq"
