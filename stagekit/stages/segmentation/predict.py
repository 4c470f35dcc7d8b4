"""`stagekit extract SEG.stk SAMPLE_DIR -o OUT_DIR`: every transcript scored against its candidate nuclei from the
tile where it is not in the margin, assigned to the best one above `score_cut`; the rest grouped into new cells.

OUT_DIR gets transcripts.parquet (the input rows and columns + stagekit_cell_id, stagekit_score, stagekit_status),
cells.h5ad (cells x genes counts, centroid in obsm['spatial'], convex-hull area, transcript count), segmentation.json
(provenance and summary) and region.png.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import connected_components

from stagekit.bundle import Bundle, atomic_folder, ensure_writable_folder, file_sha256
from stagekit.data.spatial import FORMATS, Sample
from stagekit.errors import UserError
from stagekit.stages.segmentation.graph import SampleGraph, tile_data
from stagekit.stages.segmentation.model_config import PredictSettings, SampleReading, SeggerConfig
from stagekit.stages.segmentation.refine import farther_than_nearest, profile_evidence
from stagekit.stages.spec import CellsRequest

NEW_CELL_PREFIX = "stagekit-"


@dataclass
class Assignment:
    cell: np.ndarray  # (kept,) str: nucleus id, new-cell id or '' (unassigned)
    score: np.ndarray  # (kept,) best link probability, NaN without a candidate
    status: np.ndarray  # (kept,) 'nucleus' | 'new_cell' | 'unassigned'
    pair_probability: np.ndarray  # (pairs,) refined probability of every candidate pair


def scored_links(model, graph: SampleGraph, steps: list[list[int]], roles_of=None):
    """(pair index, link probability, label) of the candidate pairs of each step's tiles, in order; `roles_of(tile)`
    gives a tile's (TileRoles, rng), or none for prediction (every core transcript scored)."""
    from torch_geometric.data import Batch

    pairs, probability, labels = [], [], []
    model.eval()
    with torch.no_grad():
        for tiles in steps:
            batch = Batch.from_data_list([tile_data(graph, t, *(roles_of(t) if roles_of else ())) for t in tiles])
            links = batch["tx", "candidate", "bd"]
            pairs.append(links.pair.numpy())
            probability.append(torch.sigmoid(model(batch)).numpy())
            labels.append(links.y.numpy())
    if not pairs:
        return np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64)
    return np.concatenate(pairs), np.concatenate(probability), np.concatenate(labels)


def link_probabilities(model, graph: SampleGraph, tiles_per_batch: int = 8) -> np.ndarray:
    """The probability of every candidate pair, each scored in the tile where its transcript is core."""
    tiles = list(range(len(graph.tiles)))
    pairs, scores, _ = scored_links(model, graph, [tiles[i:i + tiles_per_batch]
                                                   for i in range(0, len(tiles), tiles_per_batch)])
    probability = np.full(len(graph.cand_tx), np.nan, np.float32)
    probability[pairs] = scores
    return probability


def best_candidates(graph: SampleGraph, probability: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(best pair or -1, its probability or NaN) of every transcript; ties go to the first (nearest) candidate."""
    n = len(graph.xy)
    has = np.diff(graph.cand_start) > 0
    best_pair = np.full(n, -1, np.int64)
    score = np.full(n, np.nan, np.float32)
    if len(probability):
        starts = graph.cand_start[:-1][has]
        best = np.maximum.reduceat(probability, starts)
        score[has] = best
        is_max = probability == np.repeat(best, np.diff(graph.cand_start)[has])
        position = np.where(is_max, np.arange(len(probability)), len(probability))
        best_pair[has] = np.minimum.reduceat(position, starts)
    return best_pair, score


def chosen_nucleus(graph: SampleGraph, probability: np.ndarray, score_cut: float) -> np.ndarray:
    """The nucleus each transcript joins (-1: none), its best candidate when at least `score_cut`."""
    best_pair, score = best_candidates(graph, probability)
    chosen = (best_pair >= 0) & (score >= score_cut)
    return np.where(chosen, graph.cand_bd[np.maximum(best_pair, 0)], -1)


def assign(graph: SampleGraph, probability: np.ndarray, nucleus_ids: list[str], score_cut: float,
           min_transcripts: int) -> Assignment:
    n = len(graph.xy)
    best_pair, score = best_candidates(graph, probability)
    chosen = (best_pair >= 0) & (score >= score_cut)
    ids = np.asarray(nucleus_ids, dtype=object)
    cell = np.full(n, "", dtype=object)
    cell[chosen] = ids[graph.cand_bd[best_pair[chosen]]]
    status = np.where(chosen, "nucleus", "unassigned").astype(object)
    if min_transcripts > 0:
        left = np.flatnonzero(~chosen)
        new_cell = _components(graph, left, min_transcripts)
        grouped = new_cell >= 0
        cell[left[grouped]] = [f"{NEW_CELL_PREFIX}{c + 1}" for c in new_cell[grouped]]
        status[left[grouped]] = "new_cell"
    return Assignment(cell.astype(str), score, status.astype(str), probability)


def refined_probabilities(graph: SampleGraph, probability: np.ndarray, settings: PredictSettings) -> np.ndarray:
    """The network's link probabilities re-scored with what the whole sample shows (see refine.py): logits lose
    `farther_penalty` per micron a candidate is farther than the nearest, nuclei beyond `max_distance` are out of
    reach, and for `profile_rounds` rounds each link gains how well the transcript's gene (`profile_weight`) and
    its neighbours' genes (`profile_context_weight`) fit the expression group of the cell its nucleus has become."""
    p = probability.astype(np.float64)
    logit = np.log(np.clip(p, 1e-6, 1.0)) - np.log(np.clip(1.0 - p, 1e-6, 1.0))
    logit -= settings.farther_penalty * farther_than_nearest(graph)
    reachable = graph.cand_distance <= settings.max_distance

    def with_evidence(evidence: np.ndarray | float) -> np.ndarray:
        return np.where(reachable, 1.0 / (1.0 + np.exp(-(logit + evidence))), 0.0).astype(np.float32)

    refined = with_evidence(0.0)
    weighted = settings.profile_weight > 0 or settings.profile_context_weight > 0
    for _ in range(settings.profile_rounds if weighted else 0):
        nucleus_of = chosen_nucleus(graph, refined, settings.score_cut)
        refined = with_evidence(profile_evidence(graph, nucleus_of, len(graph.nucleus_xy), settings.profile_groups,
                                                 settings.profile_weight, settings.profile_context_weight))
    return refined


def _components(graph: SampleGraph, left: np.ndarray, min_size: int) -> np.ndarray:
    """Connected components of the transcript graph among `left`; -1 for those in components below min_size."""
    position = np.full(len(graph.xy), -1, np.int64)
    position[left] = np.arange(len(left))
    nbr = graph.knn[left]
    ok = (nbr >= 0) & (position[np.maximum(nbr, 0)] >= 0)
    rows = np.repeat(np.arange(len(left)), ok.sum(1))
    cols = position[nbr[ok]]
    adjacency = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(left), len(left)))
    _, label = connected_components(adjacency, directed=False)
    sizes = np.bincount(label)
    big = sizes >= min_size
    renumber = np.full(len(sizes), -1, np.int64)
    renumber[big] = np.arange(big.sum())
    return renumber[label]


def cells_anndata(sample: Sample, cell: np.ndarray, nucleus_ids: list[str]):
    """Cells x genes counts of the assigned transcripts, centroid in obsm['spatial'], convex-hull area."""
    import anndata
    import pandas as pd
    from scipy.spatial import ConvexHull, QhullError

    assigned = cell != ""
    names, code = np.unique(cell[assigned], return_inverse=True)
    counts = csr_matrix((np.ones(assigned.sum(), np.float32), (code, sample.gene_codes[assigned])),
                        shape=(len(names), len(sample.genes)))
    counts.sum_duplicates()
    xy = sample.xy[assigned]
    n = np.bincount(code, minlength=len(names))
    centre = np.stack([np.bincount(code, xy[:, d], len(names)) for d in (0, 1)], 1) / np.maximum(n, 1)[:, None]
    area = np.zeros(len(names))
    order = np.argsort(code, kind="stable")
    bounds = np.searchsorted(code[order], np.arange(len(names) + 1))
    for i in range(len(names)):
        pts = xy[order[bounds[i]:bounds[i + 1]]]
        if len(pts) >= 3:
            try:
                area[i] = ConvexHull(pts).volume  # in 2-D, `volume` is the enclosed area
            except QhullError:  # collinear points
                area[i] = 0.0
    obs = pd.DataFrame({"n_transcripts": n, "area": area, "has_nucleus": pd.Index(names).isin(set(nucleus_ids))},
                       index=pd.Index(names.astype(str), name="cell_id"))
    adata = anndata.AnnData(counts, obs=obs, var=pd.DataFrame(index=pd.Index(sample.genes, name="gene")))
    adata.obsm["spatial"] = centre
    return adata


def transcripts_table(sample: Sample, result: Assignment):
    """The input rows and columns, with the assignment of every kept transcript ('filtered' for the others)."""
    table = sample.table.copy()
    rows = np.flatnonzero(sample.keep)
    cell = np.full(len(table), "", dtype=object)
    score = np.full(len(table), np.nan, np.float32)
    status = np.full(len(table), "filtered", dtype=object)
    cell[rows], score[rows], status[rows] = result.cell, result.score, result.status
    table["stagekit_cell_id"], table["stagekit_score"], table["stagekit_status"] = cell, score, status
    return table


def summary(result: Assignment) -> dict:
    nucleus = result.status == "nucleus"
    cells, counts = np.unique(result.cell[result.cell != ""], return_counts=True)
    return {"transcripts": int(len(result.cell)), "assigned_to_nucleus": float(nucleus.mean()),
            "in_new_cells": float((result.status == "new_cell").mean()),
            "unassigned": float((result.status == "unassigned").mean()), "cells": int(len(cells)),
            "new_cells": int(sum(c.startswith(NEW_CELL_PREFIX) for c in cells)),
            "transcripts_per_cell_median": float(np.median(counts)) if len(counts) else 0.0}


def predict_sample(bundle: Bundle, folder: Path, log) -> tuple[Sample, SampleGraph, Assignment]:
    from stagekit.stages.segmentation.segment import load_model, read_for, sample_graph, vocabulary

    stored = SeggerConfig.of(bundle)
    model = load_model(bundle)  # first: a bundle this version cannot read fails before the sample is read
    sample = read_for(stored.data, folder, log)
    _, codes, new = vocabulary(sample, bundle.var_names)
    if new:
        log(f"warning: {len(new)} gene(s) the model never saw ({', '.join(new[:5])}"
            f"{' ...' if len(new) > 5 else ''}) are read as its unknown-gene token")
        codes = np.where(codes >= len(bundle.var_names), 0, codes)
    graph = sample_graph(sample, codes, stored.graph, log)
    settings = stored.predict
    probability = refined_probabilities(graph, link_probabilities(model, graph), settings)
    result = assign(graph, probability, sample.nuclei.ids, settings.score_cut, settings.min_transcripts)
    return sample, graph, result


def check_output_folder(output: Path, sample: Path, bundle: Path) -> Path:
    """The folder extract may fill (absolute): new, or an earlier extract output (it holds segmentation.json); never
    the sample folder, a folder holding the sample or the bundle, nor any other existing folder."""
    output = output.resolve()
    if output.suffix in (".h5ad", ".stk") or output.is_file():
        raise UserError(f"output {output}: a segment bundle extracts into a folder; give a new folder path")
    if output == sample.resolve() or output in sample.resolve().parents or output in bundle.resolve().parents:
        raise UserError(f"output {output} holds the sample or the bundle; give a new folder beside them, such as "
                        f"{output.parent / (output.name + '_seg')}")
    if output.is_dir() and any(output.iterdir()) and not (output / "segmentation.json").is_file():
        raise UserError(f"output {output} is a folder that is not an earlier `stagekit extract` output; give a new "
                        "folder (an earlier output is replaced once the new one is complete)")
    if not output.parent.is_dir():
        raise UserError(f"output folder {output.parent} does not exist; create it first")
    ensure_writable_folder(output.parent)
    return output


def xenium_columns(sample: Sample, reading: SampleReading) -> tuple[np.ndarray, np.ndarray | None] | None:
    """The kept transcripts' own ids and z (micron) of a Xenium run read in micron, which Xenium Ranger can import a
    segmentation of; None for other inputs."""
    columns = FORMATS["xenium"]["columns"]
    if reading.format != "xenium" or reading.micron_per_unit not in (0, 1) or columns["id"] not in sample.table:
        return None
    kept = sample.table.loc[sample.keep]
    z = kept[columns["z"]].to_numpy(np.float64) if columns["z"] in kept else None
    return kept[columns["id"]].to_numpy(), z


def spatial_outputs(sample: Sample, cell: np.ndarray, cells_table, folder: Path, log,
                    xenium: tuple[np.ndarray, np.ndarray | None] | None = None) -> dict[str, np.ndarray] | None:
    """Every assigned cell's boundary polygon as GeoParquet (`cell_boundaries.parquet`), the whole segmentation as
    a SpatialData store (`spatialdata.zarr`) and, for a Xenium run (`xenium`: its transcript ids and z), the files
    of Xenium Ranger's import-segmentation, with the `spatial` extra (skipped with a note without it); returns the
    boundaries' exteriors by cell id for the region plot."""
    import importlib.util

    missing = [m for m in ("shapely", "geopandas", "spatialdata") if importlib.util.find_spec(m) is None]
    if missing:
        log(f"note: cell boundary polygons and the SpatialData store need {', '.join(missing)} "
            "(pip install 'stagekit[spatial]'); skipped")
        return None
    from stagekit.stages.segmentation.boundaries import cell_polygons, outline_polygons, write_geoparquet
    from stagekit.stages.segmentation.spatialdata_export import write_spatialdata

    outlines = outline_polygons(sample.nuclei)
    names, polygons = cell_polygons(sample.xy, cell, sample.nuclei, outlines)
    write_geoparquet(names, polygons, np.isin(names, sample.nuclei.ids), folder / "cell_boundaries.parquet")
    write_spatialdata(sample, cell, cells_table, names, polygons, outlines, folder / "spatialdata.zarr")
    if xenium is not None:
        from stagekit.stages.segmentation.xenium_ranger_export import write_xenium_ranger

        write_xenium_ranger(xenium[0], sample.xy, xenium[1], cell, names, polygons, folder)
    return {name: np.asarray(p.exterior.coords) for name, p in zip(names, polygons, strict=True)}


def write(request: CellsRequest, output: Path) -> Path:
    """extract for segment bundles: the output is a folder, replaced only once every file in it is written."""
    bundle, data, log = request.bundle, request.data, request.log
    if len(data) > 1:
        raise UserError(f"extract of a segment bundle reads one sample folder; got {len(data)}")
    folder = Path(data[0]) if data else Path(bundle.data.get("path", ""))
    if not data and not folder.is_dir():
        raise UserError(f"{bundle.path} was trained on {folder}, which is gone; give the sample folder")
    output = check_output_folder(output, folder, Path(bundle.path))
    sample, graph, result = predict_sample(bundle, folder, log)
    with atomic_folder(output) as tmp:
        transcripts_table(sample, result).to_parquet(tmp / "transcripts.parquet", index=False)
        adata = cells_anndata(sample, result.cell, sample.nuclei.ids)
        provenance = {"bundle": str(Path(bundle.path).resolve()), "bundle_sha256": file_sha256(bundle.path),
                      "stage": bundle.stage, "model": bundle.model,
                      "sample": str(folder.resolve()), "config": bundle.config_toml,
                      "lineage": json.dumps(bundle.lineage)}
        adata.uns["stagekit"] = provenance
        adata.write_h5ad(tmp / "cells.h5ad")
        info = provenance | {"summary": summary(result), "dropped": sample.dropped,
                             "val_link_metrics": {k: v for k, v in bundle.final_metrics.items()
                                                  if k in ("val_auroc", "val_f1")}}
        (tmp / "segmentation.json").write_text(json.dumps(info, indent=1))
        from stagekit.metrics.plots import plot_segmentation_region

        xenium = xenium_columns(sample, SeggerConfig.of(bundle).data)
        shapes = spatial_outputs(sample, result.cell, adata, tmp, log, xenium)
        plot_segmentation_region(sample.xy, result.cell, sample.nuclei.vertices, tmp / "region.png",
                                 boundaries=shapes)
    s = summary(result)
    log(f"{s['transcripts']:,} transcripts: {s['assigned_to_nucleus']:.1%} to a nucleus, {s['in_new_cells']:.1%} in "
        f"{s['new_cells']:,} new cells, {s['unassigned']:.1%} unassigned; {s['cells']:,} cells")
    return output
