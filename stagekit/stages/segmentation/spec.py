"""Cell segmentation (Segger-style): `segment --preset segger` -> `extract` (a folder) -> `evaluate`."""

from __future__ import annotations

from pathlib import Path

from stagekit.errors import UserError
from stagekit.stages.segmentation import schema
from stagekit.stages.spec import CellsRequest, Option, PhaseRequest, PhaseSpec, Report, ReportRequest

MANIFEST = "segmentation.json"


def _segment(request: PhaseRequest) -> Path | None:
    from stagekit.stages.segmentation.segment import run

    return run(request)


def _write(request: CellsRequest, output: Path) -> Path:
    from stagekit.stages.segmentation.predict import write

    return write(request, output)


def _report(request: ReportRequest) -> Report:
    from stagekit.stages.segmentation.report import report

    return report(request)


def _region(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4 or values[0] >= values[2] or values[1] >= values[3]:
        raise UserError(f"--region {text!r}: give x0,y0,x1,y1 in micron with x0 < x1 and y0 < y1")
    return values


OPTIONS = (
    Option("allow_new_genes", "with --from: genes the model never saw get new, untrained embeddings", bool),
    Option("format", "xenium, merscope, cosmx or iss: which files and columns to read", key="data.format"),
    Option("micron_per_unit", "size of one coordinate unit in micron (iss: the microscope's pixel size)", float,
           key="data.micron_per_unit"),
    Option("min_qv", "drop transcripts below this quality value", float, key="data.min_qv"),
    Option("region", "x0,y0,x1,y1 in micron: segment only this box of the sample", key="data.region",
           convert=_region),
)
EVALUATE_OPTIONS = (
    Option("expansion_um", "the nucleus-expansion baseline's distance (micron)", float, default=5.0),
    Option("markers", "CSV/TSV of marker genes (columns gene, group) for MECR; default: the top genes of k-means "
           "groups of the nuclei's own transcripts", Path),
)

PHASES = [
    PhaseSpec("segment", "segger", "cell segmentation", schema.SEGMENT, train=_segment, options=OPTIONS,
              default_preset="segger", write_outputs=_write, report=_report, evaluate_options=EVALUATE_OPTIONS,
              extract_manifest=MANIFEST),
]
