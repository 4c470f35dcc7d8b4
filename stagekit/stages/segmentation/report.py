"""`stagekit evaluate` of a segmentation (an extract folder, or a segment bundle with its sample), with nucleus
expansion scored side by side on the same transcripts.

Correct assignment (where the sample has a ground-truth column): a transcript is correct when it goes to its true
cell or, for a background transcript or one of a cell whose nucleus is missing, when it goes to no nucleus-bearing
cell. MECR (mutually exclusive co-expression rate): for marker genes of different cell groups, the share of cells
expressing both among cells expressing either, averaged over the pairs; lower is better.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from stagekit import toml_text
from stagekit.bundle import Bundle
from stagekit.data.polygons import centroids
from stagekit.data.spatial import Sample
from stagekit.errors import UserError
from stagekit.metrics.plots import plot_segmentation_region
from stagekit.stages.segmentation.graph import SampleGraph, candidate_links
from stagekit.stages.segmentation.model_config import SampleReading, SeggerConfig
from stagekit.stages.spec import Report, ReportRequest, Table


def expansion(sample: Sample, distance: float) -> np.ndarray:
    """Nucleus expansion (what 10x does): each transcript to the nearest nucleus whose outline is within
    `distance` micron; '' otherwise."""
    vertices = sample.nuclei.vertices
    tx, bd, _, _ = candidate_links(sample.xy, vertices, centroids(vertices), distance)
    cell = np.full(sample.n, "", dtype=object)
    first = np.diff(tx, prepend=-1) != 0  # candidates come nearest first
    cell[tx[first]] = np.asarray(sample.nuclei.ids, dtype=object)[bd[first]]
    return cell.astype(str)


def marker_pairs(sample: Sample, inside: np.ndarray, n_groups: int = 8, per_group: int = 3,
                 seed: int = 0) -> list[tuple[str, str]]:
    """Markers from the nuclei's own transcripts (independent of any segmentation): nuclei clustered by k-means
    on log-normalised counts, the `per_group` genes most enriched in each cluster, paired across clusters."""
    from scipy.sparse import csr_matrix
    from sklearn.cluster import KMeans

    rows = inside >= 0
    counts = csr_matrix((np.ones(rows.sum()), (inside[rows], sample.gene_codes[rows])),
                        shape=(len(sample.nuclei.ids), len(sample.genes))).toarray()
    counts = counts[counts.sum(1) >= 5]
    k = min(n_groups, len(counts) // 5)
    if k < 2:
        return []
    logged = np.log1p(counts / counts.sum(1, keepdims=True) * 100)
    groups = KMeans(k, n_init=10, random_state=seed).fit_predict(logged)
    markers = []
    for g in range(k):
        enrichment = logged[groups == g].mean(0) - logged[groups != g].mean(0)
        markers.append([i for i in np.argsort(-enrichment)[:per_group] if enrichment[i] > 0])
    return [(sample.genes[a], sample.genes[b]) for g in range(k) for h in range(g + 1, k)
            for a in markers[g] for b in markers[h] if a != b]


def markers_from_file(path: Path, sample: Sample) -> list[tuple[str, str]]:
    """Pairs of marker genes of different groups from a table with columns gene and group."""
    import pandas as pd

    try:
        table = pd.read_csv(path, sep=None, engine="python")
    except Exception as exc:  # any unreadable file means the same to a user
        raise UserError(f"--markers {path} is not a readable CSV/TSV table ({type(exc).__name__})") from None
    if not {"gene", "group"} <= set(table.columns):
        raise UserError(f"--markers {path}: needs columns gene and group (it has {', '.join(map(str, table.columns))})")
    known = set(sample.genes)
    table = table[table.gene.astype(str).isin(known)]
    groups = {g: sorted(set(t.gene.astype(str))) for g, t in table.groupby("group")}
    if len(groups) < 2:
        raise UserError(f"--markers {path}: fewer than two groups with genes of this sample; MECR pairs markers of "
                        "different groups")
    names = sorted(groups)
    return [(a, b) for i, g in enumerate(names) for h in names[i + 1:] for a in groups[g] for b in groups[h] if a != b]


def mecr(sample: Sample, cell: np.ndarray, pairs: list[tuple[str, str]], min_transcripts: int = 10) -> float:
    from scipy.sparse import csr_matrix

    if not pairs:
        return float("nan")
    assigned = cell != ""
    names, code = np.unique(cell[assigned], return_inverse=True)
    expressed = csr_matrix((np.ones(assigned.sum()), (code, sample.gene_codes[assigned])),
                           shape=(len(names), len(sample.genes))).toarray()
    expressed = expressed[expressed.sum(1) >= min_transcripts] > 0
    column = {g: i for i, g in enumerate(sample.genes)}
    rates = []
    for a, b in pairs:
        ea, eb = expressed[:, column[a]], expressed[:, column[b]]
        either = (ea | eb).sum()
        if either:
            rates.append((ea & eb).sum() / either)
    return float(np.mean(rates)) if rates else float("nan")


def is_in(values: np.ndarray, names: list[str]) -> np.ndarray:
    """Membership of strings by hashing (numpy's isin compares object arrays element by element)."""
    import pandas as pd

    return pd.Series(values).isin(set(names)).to_numpy()


def control_probe_rate(sample: Sample, cell: np.ndarray) -> float:
    """Control probes (negative probes, blank codewords) per 1,000 transcripts in cells: each probe goes where its
    nearest transcript went. Background swallowed into cells raises it; lower is better."""
    from scipy.spatial import cKDTree

    in_cells = int((cell != "").sum())
    if not len(sample.control_xy) or not in_cells:
        return float("nan")
    nearest = cKDTree(sample.xy).query(sample.control_xy)[1]
    return float(1000 * (cell[nearest] != "").sum() / in_cells)


def scores(sample: Sample, cell: np.ndarray, pairs: list[tuple[str, str]]) -> dict:
    ids = sample.nuclei.ids
    nucleus_cell = is_in(cell, ids)
    names, counts = np.unique(cell[cell != ""], return_counts=True)
    out = {"assigned": float((cell != "").mean()), "assigned_to_nucleus": float(nucleus_cell.mean()),
           "cells": int(len(names)), "transcripts_per_cell_median": float(np.median(counts)) if len(counts) else 0.0,
           "transcripts_per_cell_mean": float(counts.mean()) if len(counts) else 0.0,
           "mecr": mecr(sample, cell, pairs)}
    if len(sample.control_xy):
        out["control_probes_per_1k"] = control_probe_rate(sample, cell)
    if sample.vendor_cell is not None and (sample.vendor_cell != "").any():
        vendor = sample.vendor_cell != ""
        out["same_cell_as_vendor"] = float((cell[vendor] == sample.vendor_cell[vendor]).mean())
    if sample.truth is not None:
        truth_has_nucleus = is_in(sample.truth, ids)
        correct = np.where(truth_has_nucleus, cell == sample.truth, ~nucleus_cell)
        out["correct"] = float(correct.mean())
        out["correct_nucleus_cells"] = float(correct[truth_has_nucleus].mean()) if truth_has_nucleus.any() else 0.0
        out["correct_without_nucleus"] = (float(correct[~truth_has_nucleus].mean())
                                          if (~truth_has_nucleus).any() else 0.0)
    return out


def held_out_links(bundle: Bundle, graph: SampleGraph, model) -> dict:
    """AUROC / F1 of the held-out links as training validated them (the validation transcripts' candidate pairs,
    the other inside transcripts carrying messages, the same fixed hidden nuclei and swapped geometry)."""
    from stagekit.stages.segmentation.predict import scored_links
    from stagekit.stages.segmentation.segment import SegmentationTask
    from stagekit.train.metrics import binary_scores

    config = bundle.config()
    task = SegmentationTask(model, graph, np.asarray(bundle.results["validation"], dtype=np.int64),
                            config["labels"], 1, bundle.seed)
    _, probability, target = scored_links(model, graph, [tiles for _, _, tiles in task.val_plan(0, 1)],
                                          lambda tile: task.roles("val", 0, tile))
    if not len(target):
        return {}
    found = binary_scores(probability, target)
    return {"auroc": found["auroc"], "f1": found["f1"], "links": int(len(target))}


def _report(sample: Sample, cell: np.ndarray, inside: np.ndarray, output: Path, expansion_distance: float,
            links: dict, source: str, markers: Path | None) -> dict:
    pairs = markers_from_file(markers, sample) if markers else marker_pairs(sample, inside)
    output.mkdir(parents=True, exist_ok=True)
    expanded = expansion(sample, expansion_distance)
    methods = {"stagekit": scores(sample, cell, pairs),
               f"expansion_{expansion_distance:g}um": scores(sample, expanded, pairs)}
    if sample.vendor_cell is not None and (sample.vendor_cell != "").any():  # the vendor's own cells, as exported
        methods["vendor"] = scores(sample, sample.vendor_cell, pairs)
    elif sample.nuclei.what == "cell":  # no ids in the transcripts: the vendor's cells are what lies inside them
        inside_cell = np.where(inside >= 0, np.asarray(sample.nuclei.ids, dtype=object)[inside], "").astype(str)
        methods["vendor"] = scores(sample, inside_cell, pairs)
    report = {"source": source, "sample": str(sample.folder), "transcripts": int(sample.n), "dropped": sample.dropped,
              "segmentation": methods,
              "links": links, "marker_pairs": len(pairs),
              "markers_from": str(markers) if markers else "k-means groups of the nuclei's transcripts", "plots": []}
    for name, assigned, method in (("stagekit", cell, "stagekit"),
                                   ("expansion", expanded, f"nucleus expansion {expansion_distance:g} um")):
        path = plot_segmentation_region(sample.xy, assigned, sample.nuclei.vertices, output / f"region_{name}.png",
                                        method)
        report["plots"].append(str(path))
    return report


def table(report: dict) -> Table:
    """Each metric for stagekit and the baseline side by side, and the held-out links' scores."""
    methods = report["segmentation"]
    metrics = next(iter(methods.values()))
    rows = [[metric.replace("_", " "), *(m[metric] for m in methods.values())] for metric in metrics]
    rows += [[f"held-out links: {name}", value, *[""] * (len(methods) - 1)] for name, value in report["links"].items()]
    return Table(f"segmentation of {report['transcripts']:,} transcripts (correct, assigned: higher is better; MECR, "
                 "control probes per 1k: lower)", ["metric", *(name.replace("_", " ") for name in methods)], rows)


def report(request: ReportRequest) -> Report:
    """A segment bundle (segmenting its sample again) or a folder `extract` wrote."""
    expansion_distance, markers = request.options["expansion_um"], request.options.get("markers")
    if request.cells is not None:
        raise UserError(f"{request.source}: evaluate the folder `stagekit extract` wrote (it holds the transcripts' "
                        "assignments), or the segment bundle")
    if request.folder is not None:
        found = from_folder(request.folder, request.output_dir, expansion_distance, markers)
    else:
        found = from_bundle(request.bundle, request.data, request.output_dir, expansion_distance, markers)
    return Report(found, [table(found)])


def from_bundle(bundle: Bundle, data: Path | None, output: Path, expansion_distance: float = 5.0,
                markers: Path | None = None) -> dict:
    from stagekit.stages.segmentation.predict import predict_sample
    from stagekit.stages.segmentation.segment import load_model

    folder = Path(data) if data else Path(bundle.data.get("path", ""))
    if not folder.is_dir():
        raise UserError(f"{bundle.path} was trained on {folder}, which is gone; give the sample folder")
    sample, graph, result = predict_sample(bundle, folder, lambda m: None)
    # the held-out links are positions in the transcripts the model was trained on: the same files, no crop
    same_sample = (bundle.data.get("sha256") == sample.files_sha256() and not SeggerConfig.of(bundle).data.region
                   and "validation" in bundle.results)
    links = held_out_links(bundle, graph, load_model(bundle)) if same_sample else {}
    return _report(sample, result.cell, graph.inside, output, expansion_distance, links, str(bundle.path), markers)


def from_folder(folder: Path, output: Path, expansion_distance: float = 5.0, markers: Path | None = None) -> dict:
    """An extract folder: its transcripts.parquet and segmentation.json (which names the sample)."""
    import pandas as pd

    from stagekit.stages.segmentation.segment import read_for

    info_path = folder / "segmentation.json"
    if not info_path.is_file() or not (folder / "transcripts.parquet").is_file():
        raise UserError(f"{folder} is not a `stagekit extract` output of a segment bundle (no segmentation.json "
                        "or transcripts.parquet)")
    info = json.loads(info_path.read_text())
    stored = toml_text.parse(info["config"], info_path)["data"]
    sample = read_for(SampleReading(**stored), Path(info["sample"]), lambda m: None)
    try:
        table = pd.read_parquet(folder / "transcripts.parquet", columns=["stagekit_cell_id"])
    except Exception:  # a parquet without the column, or not a parquet
        raise UserError(f"{folder}/transcripts.parquet has no readable column stagekit_cell_id; "
                        "extract again") from None
    if len(table) != len(sample.table):
        raise UserError(f"{folder}/transcripts.parquet has {len(table):,} rows, the sample {info['sample']} "
                        f"{len(sample.table):,}; extract again")
    cell = table["stagekit_cell_id"].fillna("").astype(str).to_numpy()[sample.keep]
    vertices = sample.nuclei.vertices
    tx, bd, _, inside_flag = candidate_links(sample.xy, vertices, centroids(vertices), 1e-6)
    inside = np.full(sample.n, -1, np.int64)
    inside[tx[inside_flag]] = bd[inside_flag]
    links = {k.removeprefix("val_"): v for k, v in info.get("val_link_metrics", {}).items()}
    return _report(sample, cell, inside, output, expansion_distance, links, str(folder), markers)
