"""`segment` -> `extract` -> `evaluate` on the real MERSCOPE, CosMx and ISS crops in ../shared/data/spatial_minis/,
read in their vendors' export layouts: the vendor's own cells as the prior outlines (MERSCOPE, CosMx), pciSeq's
nucleus label image as it is kept (ISS)."""

from __future__ import annotations

import json
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest

from stagekit.bundle import read_bundle
from stagekit.data.polygons import point_distances
from stagekit.data.spatial import read_sample
from tests.conftest import run_cli
from tests.segmentation import vendor_layouts

shapely = pytest.importorskip("shapely")
geopandas = pytest.importorskip("geopandas")
spatialdata = pytest.importorskip("spatialdata")
pytest.importorskip("tifffile")
pytest.importorskip("skimage")
if not vendor_layouts.MINIS.is_dir():
    pytest.skip(f"{vendor_layouts.MINIS} not found", allow_module_level=True)

FAST = ["--set", "training.batch_size=2", "--set", "training.early_stopping_patience=0",
        "-q"]
CROPS = {"merscope": vendor_layouts.merscope, "cosmx": vendor_layouts.cosmx, "iss": vendor_layouts.iss}
# the ISS sample's pixel size is not published with it: 0.325 micron (a 20x objective on a 6.5 micron-pixel camera)
# makes its median nucleus 12 micron across
MICRON_PER_UNIT = {"iss": 0.325}


@pytest.fixture(scope="module", params=sorted(CROPS))
def crop(request, tmp_path_factory) -> tuple[str, Path]:
    fmt = request.param
    return fmt, CROPS[fmt](tmp_path_factory.mktemp(fmt) / "sample")


def _read(folder: Path, fmt: str):
    return read_sample(folder, fmt, micron_per_unit=MICRON_PER_UNIT.get(fmt, 0.0), log=lambda m: None)


def test_the_vendor_outlines_are_read_as_exported(crop):
    fmt, folder = crop
    sample = _read(folder, fmt)
    assert sample.nuclei.what == ("nucleus" if fmt == "iss" else "cell") and len(sample.nuclei.ids) > 100
    if fmt != "iss":
        assert len(sample.control_xy) > 0  # MERSCOPE's Blank- codewords, CosMx's NegPrb probes
    if fmt == "cosmx":  # ids of the label images and of the transcripts meet: FOV_CELL
        assigned = sample.vendor_cell != ""
        assert 0.7 < assigned.mean() < 0.8 and set(sample.vendor_cell[assigned]) <= set(sample.nuclei.ids)
        index = {name: i for i, name in enumerate(sample.nuclei.ids)}
        own = sample.nuclei.vertices[[index[c] for c in sample.vendor_cell[assigned]]]
        _, inside = point_distances(sample.xy[assigned], own)
        assert inside.mean() > 0.97  # each transcript lies in the outline of the cell the vendor gave it


def test_segment_extract_evaluate_on_a_real_crop(crop, tmp_path, capsys):
    fmt, folder = crop
    out = tmp_path / "seg.stk"
    scale = ["--micron-per-unit", str(MICRON_PER_UNIT[fmt])] if fmt in MICRON_PER_UNIT else []
    code, _, err = run_cli(capsys, "segment", folder, "--format", fmt, *scale, "-o", out, "--set", "training.epochs=6",
                           *FAST)
    assert code == 0, err
    history = read_bundle(out).history
    assert history["train_loss"][-1] < history["train_loss"][0] and max(history["val_auroc"]) > 0.7  # chance: 0.5
    code, _, err = run_cli(capsys, "extract", out, folder, "-o", tmp_path / "seg")
    assert code == 0, err
    table = pd.read_parquet(tmp_path / "seg" / "transcripts.parquet")
    assert len(table) == len(_read(folder, fmt).table)
    assert (tmp_path / "seg" / "region.png").stat().st_size > 1000
    cells = anndata.read_h5ad(tmp_path / "seg" / "cells.h5ad")
    assert cells.n_obs > 100
    # one valid boundary polygon per cell, holding the cell's prior outline
    boundaries = geopandas.read_parquet(tmp_path / "seg" / "cell_boundaries.parquet")
    assert list(boundaries.cell_id) == list(cells.obs_names) and boundaries.is_valid.all()
    assert (boundaries.geom_type == "Polygon").all() and (boundaries.area > 0).all()
    sample = _read(folder, fmt)
    # the SpatialData store: transcripts as points, both kinds of outline as shapes, the table on the cell shapes
    store = spatialdata.read_zarr(tmp_path / "seg" / "spatialdata.zarr")
    linked = store.tables["table"]
    assert linked.uns["spatialdata_attrs"]["region"] == "cell_boundaries"
    assert list(linked.obs["cell_id"]) == list(store.shapes["cell_boundaries"].index) == list(cells.obs_names)
    assert len(store.points["transcripts"]) == sample.n
    outlines = "nucleus_boundaries" if fmt == "iss" else "vendor_cell_boundaries"
    assert len(store.shapes[outlines]) == len(sample.nuclei.ids)
    index = {name: i for i, name in enumerate(sample.nuclei.ids)}
    with_outline = boundaries[boundaries.has_nucleus]
    assert len(with_outline) > 50
    for name, polygon in zip(with_outline.cell_id, with_outline.geometry, strict=True):
        j = index[name]
        outline = shapely.make_valid(shapely.Polygon(sample.nuclei.vertices[j, :sample.nuclei.n_vertices[j]]))
        assert polygon.buffer(1e-6).covers(outline), name
    code, _, err = run_cli(capsys, "evaluate", tmp_path / "seg", "-o", tmp_path / "report", "-q")
    assert code == 0, err
    methods = json.loads((tmp_path / "report" / "metrics.json").read_text())["segmentation"]
    for scores in methods.values():
        assert 0 < scores["assigned"] <= 1 and scores["transcripts_per_cell_median"] > 0 and np.isfinite(scores["mecr"])
    if fmt == "iss":  # no vendor cells and no control probes: the model beside nucleus expansion
        assert set(methods) == {"stagekit", "expansion_5um"}
        assert methods["stagekit"]["mecr"] < methods["expansion_5um"]["mecr"]
        return
    assert set(methods) == {"stagekit", "expansion_5um", "vendor"}  # the vendor's own cells side by side
    assert all(np.isfinite(scores["control_probes_per_1k"]) for scores in methods.values())
    # the model keeps most of what lies inside the vendor's cells and takes in part of what lies outside them
    assert methods["stagekit"]["assigned_to_nucleus"] > 0.8 * methods["vendor"]["assigned"]
    assert methods["stagekit"]["assigned"] > methods["vendor"]["assigned"]


def test_pixels_of_unknown_size_are_refused_by_name(tmp_path, capsys):
    code, _, err = run_cli(capsys, "segment", vendor_layouts.MINIS / "iss_ca1_pciseq", "--format", "iss", "-o",
                           tmp_path / "seg.stk", "-q")
    assert code == 2 and "data.micron_per_unit" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "seg.stk").exists()
    folder = tmp_path / "iss"
    folder.mkdir()
    (folder / "spots.csv").write_text("Gene,x,y\nA,1,1\nB,2,2\n")
    np.save(folder / "label_image.npy", np.ones((4, 4)))  # floats are not labels
    code, _, err = run_cli(capsys, "segment", folder, "--format", "iss", "--micron-per-unit", "0.3", "-o",
                           tmp_path / "seg.stk", "-q")
    assert code == 2 and "label_image.npy" in err and "integer labels" in err
