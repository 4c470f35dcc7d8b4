"""`segment` on a small synthetic Xenium sample with known truth: the graph, the leak-free labels, training that
learns, extract's outputs, evaluate against nucleus expansion, transfer with --from, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest

from stagekit.bundle import read_bundle
from stagekit.data.polygons import areas, point_distances, shape_features
from stagekit.data.spatial import read_sample
from stagekit.stages.segmentation.graph import TileRoles, build_graph, tile_data
from tests.conftest import run_cli, synthetic_xenium

FAST = ["--set", "model.hidden=32", "--set", "graph.max_tile_transcripts=800", "--set", "training.batch_size=2",
        "--set", "training.early_stopping_patience=0", "-q"]


@pytest.fixture(scope="module")
def sample_dir(xenium_small) -> Path:
    return xenium_small


@pytest.fixture(scope="module")
def trained(sample_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "seg.stk"
    from stagekit.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["segment", "--preset", "segger", str(sample_dir), "-o", str(out), "--set", "training.epochs=20",
              *FAST])
    assert exc.value.code == 0
    return out


def test_polygon_geometry_is_exact():
    square = np.array([[[0, 0], [2, 0], [2, 1], [0, 1], [0, 0], [0, 0]]], float)  # padded by the closing vertex
    shape = shape_features(square, np.array([4]))
    assert areas(square)[0] == 2.0 and shape["perimeter"][0] == 6.0  # an area, not a perimeter or hull length
    assert shape["elongation"][0] == pytest.approx(2.0) and shape["circularity"][0] == pytest.approx(8 * np.pi / 36)
    distance, inside = point_distances(np.array([[1, 0.5], [3, 0.5], [1, 2]]), np.repeat(square, 3, 0))
    assert inside.tolist() == [True, False, False] and distance[1:].tolist() == [1.0, 1.0]


def test_reading_filters_and_keeps_each_polygon_with_its_own_id(sample_dir, tmp_path):
    sample = read_sample(sample_dir, log=lambda m: None)
    table = pd.read_parquet(sample_dir / "transcripts.parquet")
    assert sample.dropped["control_probes"] == table.feature_name.str.startswith("NegControl").sum()
    assert sample.n == ((table.qv >= 20) & ~table.feature_name.str.startswith("NegControl")).sum()
    # the nucleus file in another order (ids not sorted): each polygon keeps its own id
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    (shuffled / "transcripts.parquet").symlink_to(sample_dir / "transcripts.parquet")
    nuclei = pd.read_parquet(sample_dir / "nucleus_boundaries.parquet")
    order = nuclei.cell_id.unique()[::-1]
    nuclei.set_index("cell_id").loc[order].reset_index().to_parquet(shuffled / "nucleus_boundaries.parquet")
    other = read_sample(shuffled, log=lambda m: None)
    centre = {i: v[:-1].mean(0) for i, v in zip(sample.nuclei.ids, sample.nuclei.vertices, strict=True)}
    for i, v in zip(other.nuclei.ids, other.nuclei.vertices, strict=True):
        first = nuclei[nuclei.cell_id == i][["vertex_x", "vertex_y"]].to_numpy()[0]
        assert np.allclose(v[0], first)
        assert i in centre


def test_tiles_cover_every_transcript_once_and_labels_never_carry_messages(sample_dir):
    sample = read_sample(sample_dir, log=lambda m: None)
    graph = build_graph(sample, sample.gene_codes, k_tx=8, dist_tx=5.0, dist_bd=10.0, max_tile_transcripts=500,
                        tile_margin=10.0)
    cores = np.concatenate([core for core, _ in graph.tiles])
    assert len(graph.tiles) > 4 and np.array_equal(np.sort(cores), np.arange(sample.n))
    assert (graph.cand_distance <= 10.0).all() and (graph.inside >= 0).sum() > 100
    rng = np.random.default_rng(0)
    for tile in range(len(graph.tiles)):
        inside = graph.inside[graph.tiles[tile][1]] >= 0
        message = inside & (rng.random(len(inside)) < 0.5)
        hidden = rng.random(len(graph.nucleus_xy)) < 0.2
        roles = TileRoles(message, inside & ~message, swap_geometry=0.5, neg_ratio=3, hidden=hidden)
        data = tile_data(graph, tile, roles, rng)
        index = data["tx"].index.numpy()
        senders = set(index[data["tx", "inside", "bd"].edge_index[0].numpy()])
        labelled = set(index[data["tx", "candidate", "bd"].edge_index[0].numpy()])
        assert not senders & labelled  # a label never reaches the nucleus it labels
        y = data["tx", "candidate", "bd"].y.numpy()
        assert set(np.unique(y)) <= {0, 1}
        owners = data["tx", "candidate", "bd"].edge_index[0].numpy()
        assert np.bincount(owners[y == 0]).max(initial=0) <= 3  # neg_ratio
        assert not set(data["bd"].index.numpy()) & set(np.flatnonzero(hidden))  # hidden nuclei are gone


def test_segment_learns_extract_writes_and_beats_nuclei_alone(trained, sample_dir, tmp_path, capsys):
    bundle = read_bundle(trained)
    history = bundle.history
    assert history["train_loss"][-1] < 0.7 * history["train_loss"][0]
    assert max(history["val_auroc"]) > 0.85 and bundle.final_metrics["val_auroc"] == max(history["val_auroc"])
    assert len(bundle.top_k) >= 1
    out = tmp_path / "seg"
    code, stdout, err = run_cli(capsys, "extract", trained, sample_dir, "-o", out)
    assert code == 0, err
    table = pd.read_parquet(out / "transcripts.parquet")
    source = pd.read_parquet(sample_dir / "transcripts.parquet")
    assert len(table) == len(source) and list(table.columns[: len(source.columns)]) == list(source.columns)
    assert set(table.stagekit_status) <= {"nucleus", "new_cell", "unassigned", "filtered"}
    cells = anndata.read_h5ad(out / "cells.h5ad")
    assigned = table[table.stagekit_cell_id != ""]
    assert cells.n_obs == assigned.stagekit_cell_id.nunique() and cells.X.sum() == len(assigned)
    assert cells.obsm["spatial"].shape == (cells.n_obs, 2) and (cells.obs.area > 0).mean() > 0.9
    assert (out / "region.png").stat().st_size > 1000
    code, stdout, err = run_cli(capsys, "evaluate", out, "-o", tmp_path / "report", "-q")
    assert code == 0, err
    report = json.loads((tmp_path / "report" / "metrics.json").read_text())
    ours, expansion = report["segmentation"]["stagekit"], report["segmentation"]["expansion_5um"]
    nuclei_only = read_sample(sample_dir, log=lambda m: None)
    from stagekit.stages.segmentation.report import expansion as expand

    naive = expand(nuclei_only, 1e-6)  # nuclei alone: the naive baseline
    truth_nucleus = np.isin(nuclei_only.truth, nuclei_only.nuclei.ids)
    naive_correct = np.where(truth_nucleus, naive == nuclei_only.truth, naive == "").mean()
    assert ours["correct"] > naive_correct + 0.2
    assert 0 < expansion["correct"] < 1 and "mecr" in ours and report["links"]["auroc"] > 0.85
    # markers from a file: the generator's programs (10 marker genes per cell type)
    markers = tmp_path / "markers.csv"
    markers.write_text("gene,group\n" + "".join(f"GENE{i:03d},type{i // 10}\n" for i in range(50)))
    code, _, err = run_cli(capsys, "evaluate", out, "-o", tmp_path / "report_markers", "--markers", markers, "-q")
    assert code == 0, err
    with_file = json.loads((tmp_path / "report_markers" / "metrics.json").read_text())
    assert with_file["marker_pairs"] == 10 * 100  # 5 groups: 10 group pairs x 10 x 10 genes
    scored = with_file["segmentation"]
    assert scored["stagekit"]["mecr"] < scored["expansion_5um"]["mecr"] + 0.05
    (tmp_path / "bad.csv").write_text("symbol,type\nGENE001,a\n")
    code, _, err = run_cli(capsys, "evaluate", out, "-o", tmp_path / "report_bad", "--markers", tmp_path / "bad.csv")
    assert code == 2 and "gene and group" in err
    # the bundle and its sample give the same assignment
    code, _, err = run_cli(capsys, "evaluate", trained, sample_dir, "-o", tmp_path / "report2", "-q")
    assert code == 0, err
    again = json.loads((tmp_path / "report2" / "metrics.json").read_text())
    assert again["segmentation"]["stagekit"]["correct"] == pytest.approx(ours["correct"])
    # the held-out links are scored as training validated them
    assert again["links"]["auroc"] == pytest.approx(bundle.final_metrics["val_auroc"], abs=1e-6)


def test_extract_replaces_only_its_own_earlier_output(trained, sample_dir, tmp_path, capsys):
    out = tmp_path / "seg"
    out.mkdir()
    (out / "segmentation.json").write_text("{}")  # an earlier extract output
    (out / "old.txt").write_text("old")
    code, _, err = run_cli(capsys, "extract", trained, tmp_path / "missing", "-o", out)
    assert code == 2 and (out / "old.txt").read_text() == "old"
    code, _, err = run_cli(capsys, "extract", trained, sample_dir, "-o", out)
    assert code == 0 and not (out / "old.txt").exists() and (out / "cells.h5ad").is_file()
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    for target in (other, sample_dir, sample_dir.parent, trained.parent):  # never emptied
        before = sorted(p.name for p in target.iterdir())
        code, _, err = run_cli(capsys, "extract", trained, sample_dir, "-o", target)
        assert code == 2 and "folder" in err and sorted(p.name for p in target.iterdir()) == before


def test_vendor_cell_ids_as_weaker_labels(sample_dir, tmp_path, capsys):
    out = tmp_path / "vendor.stk"
    code, _, err = run_cli(capsys, "segment", sample_dir, "-o", out, "--set", "labels.vendor_weight=0.3",
                           "--set", "training.epochs=2", *FAST[:-1])
    assert code == 0, err
    assert "weak labels for" in err and read_bundle(out).history["train_loss"][-1] > 0
    table = pd.read_parquet(sample_dir / "transcripts.parquet").drop(columns=["cell_id"])
    folder = tmp_path / "no_vendor"
    folder.mkdir()
    table.to_parquet(folder / "transcripts.parquet")
    (folder / "nucleus_boundaries.parquet").symlink_to(sample_dir / "nucleus_boundaries.parquet")
    code, _, err = run_cli(capsys, "segment", folder, "-o", tmp_path / "v2.stk", "--set", "labels.vendor_weight=0.3",
                           *FAST)
    assert code == 2 and "vendor_weight" in err


def test_transfer_with_from_loads_the_model_and_names_new_genes(trained, tmp_path, capsys):
    other = synthetic_xenium(tmp_path / "s1", seed=1)
    out = tmp_path / "seg2.stk"
    code, _, err = run_cli(capsys, "segment", other, "--from", trained, "-o", out, "--set", "training.epochs=1",
                           *FAST)
    assert code == 0, err
    bundle = read_bundle(out)
    assert bundle.lineage[0]["stage"] == "segment" and bundle.records["load_report"]["mismatched"] == []
    table = pd.read_parquet(other / "transcripts.parquet")
    table["feature_name"] = table.feature_name.replace({"GENE001": "NEWGENE"})
    table.to_parquet(other / "transcripts.parquet")
    code, _, err = run_cli(capsys, "segment", other, "--from", trained, "-o", tmp_path / "seg3.stk", *FAST)
    assert code == 2 and "NEWGENE" in err and "--allow-new-genes" in err
    code, _, err = run_cli(capsys, "segment", other, "--from", trained, "--allow-new-genes", "-o",
                           tmp_path / "seg3.stk", "--set", "training.epochs=1", *FAST)
    assert code == 0, err
    assert read_bundle(tmp_path / "seg3.stk").var_names[-1] == "NEWGENE"


@pytest.mark.parametrize("case", ["no_transcripts", "missing_column", "no_nuclei_file", "zero_nuclei",
                                  "text_coordinates", "dist_bd", "other_model", "empty_region"])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case, sample_dir, tmp_path, capsys, small_bundle):
    folder = tmp_path / "sample"
    folder.mkdir()
    table = pd.read_parquet(sample_dir / "transcripts.parquet")
    nuclei = pd.read_parquet(sample_dir / "nucleus_boundaries.parquet")
    extra: list[str] = []
    expected = ""
    if case != "no_transcripts":
        if case == "missing_column":
            table = table.drop(columns=["feature_name"])
            expected = "feature_name"
        if case == "text_coordinates":
            table["x_location"] = table.x_location.astype(str)
            table.loc[3, "x_location"] = "n/a"
            expected = "x_location"
        table.to_parquet(folder / "transcripts.parquet")
    else:
        expected = "transcripts"
    if case == "zero_nuclei":
        nuclei.iloc[:0].to_parquet(folder / "nucleus_boundaries.parquet")
        expected = "nucleus"
    elif case != "no_nuclei_file":
        nuclei.to_parquet(folder / "nucleus_boundaries.parquet")
    else:
        expected = "nucleus boundaries"
    if case == "dist_bd":
        extra, expected = ["--set", "graph.dist_bd=0"], "dist_bd"
    if case == "other_model":
        extra, expected = ["--from", str(small_bundle)], "segment"
    if case == "empty_region":
        extra, expected = ["--region", "500,500,600,600"], "data.region"
    out = tmp_path / "out.stk"
    code, stdout, err = run_cli(capsys, "segment", folder, "-o", out, *extra, *FAST)
    assert code == 2 and expected in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_a_model_trained_on_a_region_predicts_the_whole_sample(sample_dir, tmp_path, capsys):
    out = tmp_path / "crop.stk"
    code, _, err = run_cli(capsys, "segment", sample_dir, "--region", "0,0,50,50", "-o", out,
                           "--set", "training.epochs=1", *FAST)
    assert code == 0, err
    whole = read_sample(sample_dir, log=lambda m: None)
    assert 0 < read_bundle(out).data["n_obs"] < whole.n
    code, _, err = run_cli(capsys, "extract", out, sample_dir, "-o", tmp_path / "seg")
    assert code == 0, err
    table = pd.read_parquet(tmp_path / "seg" / "transcripts.parquet")
    assert (table.stagekit_status != "filtered").sum() == whole.n
    code, _, err = run_cli(capsys, "evaluate", out, sample_dir, "-o", tmp_path / "report", "-q")
    report = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert code == 0 and report["transcripts"] == whole.n and report["links"] == {}  # held-out links: the crop's


def test_a_bundle_of_an_earlier_model_version_is_refused_by_name(trained):
    from stagekit.errors import UserError
    from stagekit.stages.segmentation.segment import load_model

    bundle = read_bundle(trained)
    del bundle.weights["profile.weight"]  # as written before the expression profiles
    with pytest.raises(UserError, match="profile.weight.*another version"):
        load_model(bundle)


def test_extract_writes_the_files_xenium_ranger_imports(trained, sample_dir, tmp_path, capsys):
    geopandas = pytest.importorskip("geopandas")
    shapely = pytest.importorskip("shapely")
    pytest.importorskip("spatialdata")
    out = tmp_path / "seg"
    code, _, err = run_cli(capsys, "extract", trained, sample_dir, "-o", out, "-q")
    assert code == 0, err
    ranger = out / "xeniumranger"
    assignment = pd.read_csv(ranger / "transcript_assignment.csv", keep_default_na=False,
                             dtype={"cell": str, "is_noise": str})
    assert list(assignment.columns) == ["transcript_id", "cell", "is_noise", "x", "y", "z"]
    # keyed by the run's own transcript ids: the rows extract segmented (quality and control filters passed)
    table = pd.read_parquet(out / "transcripts.parquet")
    kept = table[table.stagekit_status != "filtered"]
    assert assignment.transcript_id.tolist() == kept.transcript_id.astype(np.int64).tolist()
    assert assignment.transcript_id.min() >= 2**48  # the generator's ids, not row numbers
    assert set(assignment.is_noise.astype(str)) <= {"true", "false"}  # Baysor's spelling
    noise = assignment.is_noise.astype(str) == "true"
    assert ((assignment.cell == "") == noise).all() and assignment.cell[~noise].str.match(r"^cell-\d+$").all()
    # the same cells as extract's own: one name per stagekit cell id, transcript for transcript
    names = pd.read_csv(ranger / "cell_id_map.csv")
    own = dict(zip(names.cell, names.stagekit_cell_id, strict=True))
    assert (assignment.cell[~noise].map(own).to_numpy() == kept.stagekit_cell_id[~noise.to_numpy()].to_numpy()).all()
    # every named cell has exactly one closed, valid polygon and every polygon a transcript, in both GeoJSON forms
    legacy = json.loads((ranger / "cell_polygons.geojson").read_text())
    assert legacy["type"] == "GeometryCollection"
    numbers = [g["cell"] for g in legacy["geometries"]]
    assert all(isinstance(n, int) for n in numbers)
    assert sorted(f"cell-{n}" for n in numbers) == sorted(set(assignment.cell[~noise]))
    features = json.loads((ranger / "cell_polygons_features.geojson").read_text())
    assert [f["properties"]["cell"] for f in features["features"]] == [f"cell-{n}" for n in numbers]
    boundaries = geopandas.read_parquet(out / "cell_boundaries.parquet").set_index("cell_id")
    for geometry, n in zip(legacy["geometries"], numbers, strict=True):
        ring = geometry["coordinates"][0]
        assert geometry["type"] == "Polygon" and ring[0] == ring[-1] and len(ring) >= 4
        polygon = shapely.Polygon(ring)
        assert polygon.is_valid and polygon.equals_exact(boundaries.geometry[own[f"cell-{n}"]], 1e-3)
