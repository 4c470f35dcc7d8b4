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

# file patterns are tried in order; columns: role -> column name ("" = the export has none). "outlines": the prior
# outlines each vendor exports (the segmentation's boundary nodes), alternatives tried in order
FORMATS: dict[str, dict] = {
    "xenium": {"transcripts": ("transcripts.parquet", "transcripts.csv.gz", "transcripts.csv"),
               "outlines": ({"kind": "vertices", "what": "nucleus",
                             "files": ("nucleus_boundaries.parquet", "nucleus_boundaries.csv.gz",
                                       "nucleus_boundaries.csv"),
                             "columns": {"fov": "", "cell": "cell_id", "x": "vertex_x", "y": "vertex_y"}},),
               "columns": {"id": "transcript_id", "x": "x_location", "y": "y_location", "z": "z_location",
                           "gene": "feature_name", "qv": "qv", "cell": "cell_id", "fov": "", "truth": "true_cell_id"},
               "unassigned": ("UNASSIGNED", "-1", ""), "micron_per_unit": 1.0},
    # MERSCOPE: detected_transcripts.csv in micron; the cells of Vizgen's DAPI/PolyT segmentation as WKB
    # (Multi)Polygons per z-plane in cell_boundaries.parquet
    "merscope": {"transcripts": ("detected_transcripts.parquet", "detected_transcripts.csv.gz",
                                 "detected_transcripts.csv"),
                 "outlines": ({"kind": "wkb", "what": "cell", "files": ("cell_boundaries.parquet",),
                               "columns": {"cell": "EntityID", "geometry": "Geometry"}},),
                 "columns": {"id": "transcript_id", "x": "global_x", "y": "global_y", "z": "global_z",
                             "gene": "gene", "qv": "", "cell": "cell_id", "fov": "", "truth": ""},
                 "unassigned": ("-1", ""), "micron_per_unit": 1.0},
    # CosMx: *_tx_file.csv in pixels (0.12028 micron per pixel), cell ids numbered within each field of view; the
    # vendor's cells as a vertex table (*-polygons.csv) or as one label image per field of view (CellLabels_F*.tif,
    # pixel rows counting down from the top, placed by the fov positions file)
    "cosmx": {"transcripts": ("*_tx_file.csv.gz", "*_tx_file.csv"),
              "outlines": ({"kind": "vertices", "what": "cell", "files": ("*-polygons.csv.gz", "*-polygons.csv"),
                            "columns": {"fov": "fov", "cell": "cellID", "x": "x_global_px", "y": "y_global_px"}},
                           {"kind": "labels", "what": "cell", "files": ("CellLabels_F*.tif",),
                            "positions": ("*fov_positions_file.csv.gz", "*fov_positions_file.csv"),
                            "columns": {"fov": "fov", "x": "x_global_px", "y": "y_global_px"}}),
              "columns": {"id": "", "x": "x_global_px", "y": "y_global_px", "z": "z", "gene": "target", "qv": "",
                          "cell": "cell_ID", "fov": "fov", "truth": ""},
              "unassigned": ("0", "", "-1"), "micron_per_unit": 0.12028},
    # in situ sequencing as pciSeq takes it: spots.csv (Gene, x, y in pixels: x the column, y the row) and one label
    # image of the DAPI-segmented nuclei (scipy sparse .npz as pciSeq keeps it, .npy or TIFF); the pixel size is the
    # microscope's, so data.micron_per_unit must be given
    "iss": {"transcripts": ("spots.csv.gz", "spots.csv"),
            "outlines": ({"kind": "label_image", "what": "nucleus",
                          "files": ("label_image*.npz", "label_image*.npy", "label_image*.tif",
                                    "label_image*.tiff")},),
            "columns": {"id": "", "x": "x", "y": "y", "z": "", "gene": "Gene", "qv": "", "cell": "", "fov": "",
                        "truth": ""},
            "unassigned": (), "micron_per_unit": None},
}

CONTROL_PREFIXES = ("NegControlProbe_", "NegControlCodeword", "BLANK_", "antisense_", "Unassigned", "Deprecated",
                    "Blank-", "NegPrb", "SystemControl")


@dataclass
class Nuclei:
    """The prior outlines a segmentation links transcripts to: nuclei (Xenium) or the vendor's cells."""

    ids: list[str]  # one per polygon, taken from the polygon's own rows
    vertices: np.ndarray  # (n, V, 2) float64, each polygon closed and padded by repeating its last vertex
    n_vertices: np.ndarray  # (n,) distinct vertices before padding
    what: str = "nucleus"  # or "cell": what the outlines are


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
    # micron coordinates of the control probes (negative probes, blank codewords) in the region, for their rate
    control_xy: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))

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


def _ids(table: pd.DataFrame, columns: dict[str, str]) -> np.ndarray:
    """Cell ids as text; "FOV_CELL" where the export numbers cells within each field of view (CosMx)."""
    cells = _strings(table[columns["cell"]])
    if columns.get("fov"):
        return np.char.add(np.char.add(_strings(table[columns["fov"]]), "_"), cells)
    return cells


def _padded(outlines: dict[str, np.ndarray], what: str, where: Path, log) -> Nuclei:
    """Polygons of three or more distinct vertices as padded (n, V, 2) arrays."""
    good = [name for name, pts in outlines.items() if len(np.unique(pts, axis=0)) >= 3]
    if not good:
        raise UserError(f"{where}: no {what} outline with 3 or more vertices; segmentation needs them")
    if len(good) < len(outlines):
        log(f"warning: {where}: {len(outlines) - len(good):,} {what} outline(s) with fewer than 3 distinct vertices "
            "left out")
    width = max(len(outlines[name]) for name in good) + 1
    vertices = np.zeros((len(good), width, 2))
    for row, name in enumerate(good):
        p = outlines[name]
        vertices[row, :len(p)] = p
        vertices[row, len(p):] = p[0]  # closing vertex, repeated as padding (zero-length edges)
    return Nuclei(good, vertices, np.array([len(outlines[name]) for name in good]), what)


def _label_outlines(folder: Path, source: dict, paths: list[Path], fmt: str) -> dict[str, np.ndarray]:
    """Each field of view's label image placed by its position: x = fov x + column, y = fov y + (rows - row),
    pixel centres (CosMx's local y counts up from the image's bottom row)."""
    import tifffile

    from stagekit.data.outlines import from_label_image

    positions_path = _find(folder, source["positions"], "field-of-view positions", fmt)
    positions = _read_table(positions_path)
    columns = source["columns"]
    _require(positions, positions_path, columns, ("fov", "x", "y"), fmt)
    where = dict(zip(_strings(positions[columns["fov"]]),
                     zip(_numeric(positions, columns["x"], positions_path),
                         _numeric(positions, columns["y"], positions_path), strict=True), strict=True))
    outlines = {}
    for path in paths:
        digits = "".join(ch for ch in path.stem.rsplit("_F", 1)[-1] if ch.isdigit())
        fov = str(int(digits)) if digits else ""
        if fov not in where:
            raise UserError(f"{path}: field of view '{fov}' is not in {positions_path}; the label images are named "
                            "CellLabels_F<fov>.tif")
        try:
            labels = tifffile.imread(path)
        except Exception as exc:  # any unreadable image means the same to a user
            raise UserError(f"{path} is not a readable TIFF label image ({type(exc).__name__})") from None
        x0, y0 = where[fov]
        for label, pts in from_label_image(labels).items():
            outlines[f"{fov}_{label}"] = np.stack([x0 + pts[:, 0] + 0.5, y0 + labels.shape[0] - pts[:, 1] - 0.5], 1)
    return outlines


def _read_label_image(path: Path) -> np.ndarray:
    """One label image: a scipy sparse matrix saved with save_npz (pciSeq's coo_matrix), a .npy array or a TIFF."""
    try:
        if path.suffix == ".npz":
            import scipy.sparse

            labels = scipy.sparse.load_npz(path).toarray()
        elif path.suffix == ".npy":
            labels = np.load(path, allow_pickle=False)
        else:
            import tifffile

            labels = tifffile.imread(path)
    except Exception as exc:  # any unreadable image means the same to a user
        raise UserError(f"{path} is not a readable label image ({type(exc).__name__}: {str(exc)[:100]}); give a "
                        "scipy sparse .npz, a .npy array or a TIFF") from None
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{path}: a label image is a 2-D array of integer labels (0 = background); this one is "
                        f"{labels.ndim}-D of {labels.dtype}")
    return labels


def _require_extra(modules: tuple[str, ...], fmt: str) -> None:
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"data.format = '{fmt}' reads the vendor's cell outlines with {', '.join(missing)}; install "
                        "them with: pip install 'stagekit[spatial]'")


def read_outlines(folder: Path, fmt: str, scale: float, log=print) -> tuple[Nuclei, dict[str, str]]:
    """The format's prior outlines (the first alternative whose files exist), ids attached to their own rows,
    scaled to micron; and the files read."""
    sources = FORMATS[fmt]["outlines"]
    for source in sources:
        found = [p for pattern in source["files"] for p in sorted(folder.glob(pattern))]
        if found:
            break
    else:
        patterns = " or ".join(p for s in sources for p in s["files"])
        raise UserError(f"{folder}: no {sources[0]['what']} boundaries file ({patterns}) for data.format = '{fmt}'")
    columns, what = source.get("columns", {}), source["what"]
    if source["kind"] != "vertices":
        images = source["kind"] in ("labels", "label_image")
        _require_extra(("shapely", "tifffile", "skimage") if images else ("shapely",), fmt)
    files = {"nuclei": str(found[0])}  # the key older bundles used, whatever the outlines are
    if source["kind"] == "labels":
        outlines = _label_outlines(folder, source, found, fmt)
        files |= {f"nuclei_{i}": str(p) for i, p in enumerate(found[1:], 1)}
    elif source["kind"] == "label_image":  # x = column, y = row: the spots' own pixel coordinates
        from stagekit.data.outlines import from_label_image

        outlines = {str(label): pts for label, pts in from_label_image(_read_label_image(found[0])).items()}
    else:
        table = _read_table(found[0])
        if source["kind"] == "wkb":
            _require(table, found[0], columns, ("cell", "geometry"), fmt)
            from stagekit.data.outlines import from_wkb

            outlines = from_wkb(found[0], _ids(table, columns), table[columns["geometry"]].to_numpy())
        else:
            _require(table, found[0], columns, ("fov", "cell", "x", "y"), fmt)
            from stagekit.data.outlines import from_vertex_table

            outlines = from_vertex_table(_ids(table, columns), _numeric(table, columns["x"], found[0]),
                                         _numeric(table, columns["y"], found[0]))
    nuclei = _padded({name: pts * scale for name, pts in outlines.items()}, what, found[0], log)
    return nuclei, files


def _in_region(xy: np.ndarray, region: list[float]) -> np.ndarray:
    x0, y0, x1, y1 = region
    return (xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1)


def read_sample(folder: Path, fmt: str = "xenium", min_qv: float = 20.0, columns: dict[str, str] | None = None,
                control_prefixes: tuple[str, ...] = CONTROL_PREFIXES, region: list[float] | None = None,
                micron_per_unit: float = 0.0, log=print) -> Sample:
    """Transcripts that pass the quality and control-probe filters (and lie in `region`, [x0, y0, x1, y1] in
    micron, when given), and the prior outlines (nuclei or the vendor's cells) of a sample folder. Coordinates are
    scaled to micron by `micron_per_unit` (0: the format's own unit)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder; give the sample's output folder (e.g. a Xenium output)")
    spec = FORMATS[fmt]
    cols = spec["columns"] | (columns or {})
    tx_path = _find(folder, spec["transcripts"], "transcripts", fmt)
    table = _read_table(tx_path)
    _require(table, tx_path, cols, ("x", "y", "gene"), fmt)
    if len(table) == 0:
        raise UserError(f"{tx_path}: no transcripts")
    scale = micron_per_unit or spec["micron_per_unit"]
    if not scale:
        raise UserError(f"data.format = '{fmt}' has its coordinates in the microscope's pixels; give their size "
                        "with --set data.micron_per_unit=<micron per pixel>")
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
    controls = table.loc[control]
    control_xy = np.stack([_numeric(controls, cols["x"], tx_path), _numeric(controls, cols["y"], tx_path)], 1) * scale
    if region:
        control_xy = control_xy[_in_region(control_xy, region)]
    genes, codes = np.unique(genes_all[keep], return_inverse=True)
    nuclei, outline_files = read_outlines(folder, fmt, scale, log)
    outline_path = Path(outline_files["nuclei"])
    if region:  # outlines reaching into the region stay: transcripts at its edge may belong to them
        reach = np.array([_in_region(v, region).any() for v in nuclei.vertices])
        nuclei = Nuclei([i for i, r in zip(nuclei.ids, reach, strict=True) if r], nuclei.vertices[reach],
                        nuclei.n_vertices[reach], nuclei.what)
        if not nuclei.ids:
            raise UserError(f"data.region {region} holds no {nuclei.what} of {outline_path}")
    plural = "nuclei" if nuclei.what == "nucleus" else "cells"
    log(f"{outline_path.name}{' and more' if len(outline_files) > 1 else ''}: {len(nuclei.ids):,} {plural} "
        + ("(the vendor's cell outlines are the boundary nodes)" if nuclei.what == "cell" else ""))

    def strings(role: str) -> np.ndarray | None:
        if not cols[role] or cols[role] not in kept.columns:
            return None
        return kept[cols[role]].astype(str).to_numpy()

    vendor = strings("cell")
    if vendor is not None:
        unassigned = pd.Series(vendor).isin(set(spec["unassigned"])).to_numpy()
        if cols["fov"] and cols["fov"] in kept.columns:
            vendor = _ids(kept, cols)
        vendor = np.where(unassigned, "", vendor)
    return Sample(folder, table, keep, xy, codes.astype(np.int64), [str(g) for g in genes], nuclei, vendor,
                  strings("truth"), dropped, {"transcripts": str(tx_path)} | outline_files, control_xy)
