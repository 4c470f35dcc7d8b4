"""Imaging-based spatial samples (Xenium, MERSCOPE, CosMx exports): transcripts and nucleus polygons.

A column map per vendor says which file and column hold what; the data section of a preset picks one and may
override any entry. Reading never writes into the sample folder.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from stagekit.errors import UserError

# file patterns are tried in order; columns: role -> column name ("" = the export has none)
FORMATS: dict[str, dict] = {
    "xenium": {"transcripts": ("transcripts.parquet", "transcripts.csv.gz", "transcripts.csv"),
               "nuclei": ("nucleus_boundaries.parquet", "nucleus_boundaries.csv.gz", "nucleus_boundaries.csv"),
               "columns": {"id": "transcript_id", "x": "x_location", "y": "y_location", "z": "z_location",
                           "gene": "feature_name", "qv": "qv", "cell": "cell_id", "truth": "true_cell_id"},
               "nucleus_columns": {"cell": "cell_id", "x": "vertex_x", "y": "vertex_y"},
               "unassigned": ("UNASSIGNED", "-1", ""), "micron_per_unit": 1.0},
    # MERSCOPE: detected_transcripts.csv; nucleus polygons as a vertex table (cell id, x, y in microns)
    "merscope": {"transcripts": ("detected_transcripts.parquet", "detected_transcripts.csv"),
                 "nuclei": ("nucleus_boundaries.parquet", "nucleus_boundaries.csv"),
                 "columns": {"id": "transcript_id", "x": "global_x", "y": "global_y", "z": "global_z",
                             "gene": "gene", "qv": "", "cell": "cell_id", "truth": ""},
                 "nucleus_columns": {"cell": "cell_id", "x": "vertex_x", "y": "vertex_y"},
                 "unassigned": ("-1", ""), "micron_per_unit": 1.0},
    # CosMx: *_tx_file.csv in pixels (0.12028 micron per pixel); its *-polygons.csv outline whole cells, so nucleus
    # outlines come as a vertex table in the same pixel coordinates
    "cosmx": {"transcripts": ("*_tx_file.csv.gz", "*_tx_file.csv"),
              "nuclei": ("nucleus_boundaries.parquet", "nucleus_boundaries.csv.gz", "nucleus_boundaries.csv"),
              "columns": {"id": "", "x": "x_global_px", "y": "y_global_px", "z": "z", "gene": "target", "qv": "",
                          "cell": "cell", "truth": ""},
              "nucleus_columns": {"cell": "cell", "x": "x_global_px", "y": "y_global_px"},
              "unassigned": ("0", "", "-1"), "micron_per_unit": 0.12028},
}

CONTROL_PREFIXES = ("NegControlProbe_", "NegControlCodeword", "BLANK_", "antisense_", "Unassigned", "Deprecated")


@dataclass
class Nuclei:
    ids: list[str]  # one per polygon, taken from the polygon's own rows
    vertices: np.ndarray  # (n, V, 2) float64, each polygon closed and padded by repeating its last vertex
    n_vertices: np.ndarray  # (n,) distinct vertices before padding


@dataclass
class Sample:
    folder: Path
    table: pd.DataFrame  # every input row and column, in file order
    keep: np.ndarray  # (rows,) bool: passed the filters
    xy: np.ndarray  # (kept, 2) float64 microns
    gene_codes: np.ndarray  # (kept,) int64 into `genes`
    genes: list[str]
    nuclei: Nuclei
    vendor_cell: np.ndarray | None  # (kept,) str, '' where the vendor assigned none
    truth: np.ndarray | None  # (kept,) str ground truth (synthetic samples)
    dropped: dict[str, int] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.xy)

    def fingerprint(self) -> dict:
        dropped = ", ".join(f"{n:,} {why.replace('_', ' ')}" for why, n in self.dropped.items())
        return {"path": str(self.folder.resolve()), "sha256": self.files_sha256(), "n_obs": int(self.n),
                "n_vars": len(self.genes), "units": "transcripts", "n_nuclei": len(self.nuclei.ids),
                "design": f"{len(self.nuclei.ids):,} nuclei; dropped {dropped}"} | {
            f"file_{k}": v for k, v in self.files.items()}

    def files_sha256(self) -> str:
        digest = hashlib.sha256()
        for name in sorted(self.files):
            digest.update(_file_digest(Path(self.files[name])).encode())
        return digest.hexdigest()


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _find(folder: Path, patterns: tuple[str, ...], what: str, fmt: str) -> Path:
    for pattern in patterns:
        found = sorted(folder.glob(pattern))
        if found:
            return found[0]
    raise UserError(f"{folder}: no {what} file ({' or '.join(patterns)}) for data.format = '{fmt}'")


def _read_table(path: Path) -> pd.DataFrame:
    try:
        if path.name.endswith(".parquet"):
            return pd.read_parquet(path)
        return pd.read_csv(path)
    except Exception as exc:  # any unreadable file means the same to a user
        raise UserError(f"{path} is not a readable table ({type(exc).__name__}: {str(exc)[:120]})") from None


def _require(table: pd.DataFrame, path: Path, columns: dict[str, str], roles: tuple[str, ...], fmt: str) -> None:
    missing = [columns[r] for r in roles if columns[r] and columns[r] not in table.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)} (data.format = '{fmt}' expects "
                        f"{', '.join(columns[r] for r in roles if columns[r])}; rename the columns or choose "
                        "another --format)")


def _strings(column: pd.Series) -> np.ndarray:
    """Text values; older Xenium files store names as bytes (b'...'), decoded rather than printed."""
    values = column.to_numpy()
    if len(values) and isinstance(values[0], bytes):
        return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values])
    return column.astype(str).to_numpy()


def _numeric(table: pd.DataFrame, column: str, path: Path) -> np.ndarray:
    values = pd.to_numeric(table[column], errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise UserError(f"{path}: column {column} holds a non-numeric or missing coordinate "
                        f"({table[column].iloc[row]!r} in row {row}); fix or drop those rows")
    return values


def read_nuclei(path: Path, columns: dict[str, str], scale: float, fmt: str, log=print) -> Nuclei:
    """Polygons grouped by cell id in file order; each id is attached to its own rows (never by sorted order)."""
    table = _read_table(path)
    _require(table, path, columns, ("cell", "x", "y"), fmt)
    x, y = _numeric(table, columns["x"], path) * scale, _numeric(table, columns["y"], path) * scale
    cells = _strings(table[columns["cell"]])
    ids, first = np.unique(cells, return_index=True)
    ids = ids[np.argsort(first)]  # file order
    code = pd.Categorical(cells, categories=ids).codes
    order = np.argsort(code, kind="stable")
    starts = np.searchsorted(code[order], np.arange(len(ids) + 1))
    polygons = []
    for i in range(len(ids)):
        rows = order[starts[i]:starts[i + 1]]
        pts = np.stack([x[rows], y[rows]], 1)
        if len(pts) > 1 and np.allclose(pts[0], pts[-1]):
            pts = pts[:-1]
        polygons.append(pts)
    good = [i for i, p in enumerate(polygons) if len(np.unique(p, axis=0)) >= 3]
    if not good:
        raise UserError(f"{path}: no nucleus polygon with 3 or more vertices; segmentation needs nuclei")
    if len(good) < len(polygons):
        log(f"warning: {path}: {len(polygons) - len(good):,} nucleus polygon(s) with fewer than 3 distinct "
            "vertices left out")
    width = max(len(polygons[i]) for i in good) + 1
    vertices = np.zeros((len(good), width, 2))
    for row, i in enumerate(good):
        p = polygons[i]
        vertices[row, :len(p)] = p
        vertices[row, len(p):] = p[0]  # closing vertex, repeated as padding (zero-length edges)
    return Nuclei([str(ids[i]) for i in good], vertices, np.array([len(polygons[i]) for i in good]))


def _in_region(xy: np.ndarray, region: list[float]) -> np.ndarray:
    x0, y0, x1, y1 = region
    return (xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1)


def read_sample(folder: Path, fmt: str = "xenium", min_qv: float = 20.0, columns: dict[str, str] | None = None,
                control_prefixes: tuple[str, ...] = CONTROL_PREFIXES, region: list[float] | None = None,
                log=print) -> Sample:
    """Transcripts that pass the quality and control-probe filters (and lie in `region`, [x0, y0, x1, y1] in
    micron, when given), and the nucleus polygons of a sample folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder; give the sample's output folder (e.g. a Xenium output)")
    spec = FORMATS[fmt]
    cols = spec["columns"] | (columns or {})
    tx_path = _find(folder, spec["transcripts"], "transcripts", fmt)
    nuc_path = _find(folder, spec["nuclei"], "nucleus boundaries", fmt)
    table = _read_table(tx_path)
    _require(table, tx_path, cols, ("x", "y", "gene"), fmt)
    if len(table) == 0:
        raise UserError(f"{tx_path}: no transcripts")
    scale = spec["micron_per_unit"]
    genes_all = _strings(table[cols["gene"]])
    control = np.zeros(len(table), bool)
    for prefix in control_prefixes:
        control |= np.char.startswith(genes_all.astype(str), prefix)
    low_qv = np.zeros(len(table), bool)
    if cols["qv"] and cols["qv"] in table.columns and min_qv > 0:
        low_qv = pd.to_numeric(table[cols["qv"]], errors="coerce").to_numpy() < min_qv
    keep = ~control & ~low_qv
    dropped = {"control_probes": int(control.sum()), f"qv_below_{min_qv:g}": int((low_qv & ~control).sum())}
    if region and (len(region) != 4 or region[0] >= region[2] or region[1] >= region[3]):
        raise UserError(f"data.region {region}: give [x0, y0, x1, y1] in micron with x0 < x1 and y0 < y1")
    xy_all = None  # coordinates of every row, read once when the region needs them
    if region:
        xy_all = np.stack([_numeric(table, cols["x"], tx_path), _numeric(table, cols["y"], tx_path)], 1) * scale
        outside = ~_in_region(xy_all, region) & keep
        if outside.all() or not (keep & ~outside).any():
            lo, hi = xy_all.min(0), xy_all.max(0)
            raise UserError(f"data.region {region} holds no transcript of {tx_path} (its transcripts span x "
                            f"{lo[0]:.0f}..{hi[0]:.0f}, y {lo[1]:.0f}..{hi[1]:.0f} micron)")
        keep &= ~outside
        dropped["outside_region"] = int(outside.sum())
    log(f"{tx_path.name}: {len(table):,} transcripts; dropped {dropped['control_probes']:,} control-probe and "
        f"{dropped[f'qv_below_{min_qv:g}']:,} low-quality (qv < {min_qv:g})"
        + (f" and {dropped['outside_region']:,} outside the region" if region else "") + f"; {int(keep.sum()):,} kept")
    if not keep.any():
        raise UserError(f"{tx_path}: every transcript was filtered out (data.min_qv = {min_qv:g}, control probes)")
    kept = table.loc[keep]
    xy = xy_all[keep] if xy_all is not None else \
        np.stack([_numeric(kept, cols["x"], tx_path), _numeric(kept, cols["y"], tx_path)], 1) * scale
    genes, codes = np.unique(genes_all[keep], return_inverse=True)
    nuclei = read_nuclei(nuc_path, spec["nucleus_columns"], scale, fmt, log)
    if region:  # nuclei reaching into the region stay: transcripts at its edge may belong to them
        reach = np.array([_in_region(v, region).any() for v in nuclei.vertices])
        nuclei = Nuclei([i for i, r in zip(nuclei.ids, reach, strict=True) if r], nuclei.vertices[reach],
                        nuclei.n_vertices[reach])
        if not nuclei.ids:
            raise UserError(f"data.region {region} holds no nucleus of {nuc_path}")
    log(f"{nuc_path.name}: {len(nuclei.ids):,} nuclei")

    def strings(role: str) -> np.ndarray | None:
        if not cols[role] or cols[role] not in kept.columns:
            return None
        return kept[cols[role]].astype(str).to_numpy()

    vendor = strings("cell")
    if vendor is not None:
        vendor = np.where(pd.Series(vendor).isin(set(spec["unassigned"])).to_numpy(), "", vendor)
    return Sample(folder, table, keep, xy, codes.astype(np.int64), [str(g) for g in genes], nuclei, vendor,
                  strings("truth"), dropped, {"transcripts": str(tx_path), "nuclei": str(nuc_path)})
