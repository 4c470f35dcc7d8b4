"""`stagekit evaluate`: find the pipeline of a bundle, an extracted .h5ad or an extract folder, call its report once
and write metrics.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from stagekit.bundle import atomic_output, read_bundle
from stagekit.errors import UserError
from stagekit.stages import registry
from stagekit.stages.spec import PhaseSpec, Report, ReportRequest
from stagekit.stages.spec import given as spec_given


def _read_h5ad(path: Path):
    import anndata

    try:
        return anndata.read_h5ad(path)
    except Exception as exc:  # any unreadable file means the same to a user
        raise UserError(f"{path} is not a readable .h5ad file ({type(exc).__name__})") from None


def _folder_spec(folder: Path) -> PhaseSpec:
    found = next((s for s in registry.phases() if s.extract_manifest and (folder / s.extract_manifest).is_file()),
                 None)
    if found is None:
        raise UserError(f"{folder} is not a folder `stagekit extract` wrote; evaluate a bundle, an extracted .h5ad "
                        "or an extract output folder")
    return found


def _h5ad_spec(adata: Any, path: Path) -> PhaseSpec:
    provenance = adata.uns.get("stagekit", {})
    if "model" not in provenance or "stage" not in provenance:
        raise UserError(f"{path} does not say which model wrote it (uns['stagekit']); evaluate the bundle, or the "
                        "cells `stagekit extract` wrote")
    return registry.phase(str(provenance["stage"]), str(provenance["model"]), str(path))


def run(source: Path, output_dir: Path, data: Path | None = None, options: dict[str, Any] | None = None,
        umap: bool = True, seed: int = 0) -> Report:
    """`options` are the pipeline options the command line was given (name -> value; None when not given)."""
    from stagekit.train.allocator import return_freed_memory

    return_freed_memory()  # blocks of cells come and go: their memory goes back (see the allocator module)
    if not source.exists():
        raise UserError(f"{source} does not exist")
    if output_dir.exists() and not output_dir.is_dir():
        raise UserError(f"report folder {output_dir} is a file; give a folder path")
    request = ReportRequest(source, output_dir, data=data, umap=umap, seed=seed)
    if source.is_dir():
        spec, request.folder = _folder_spec(source), source
    elif source.suffix == ".h5ad":
        request.cells = _read_h5ad(source)
        spec = _h5ad_spec(request.cells, source)
    else:
        request.bundle = read_bundle(source)
        spec = registry.of_bundle(request.bundle)
    if spec.report is None:
        raise UserError(f"{source}: a '{spec.command}' ({spec.model}) output has no evaluation")
    given = spec_given(options or {})
    registry.check_options(spec, spec.evaluate_options, given, "evaluate", registry.phases())
    request.options = {o.name: given.get(o.name, o.default) for o in spec.evaluate_options}
    output_dir.mkdir(parents=True, exist_ok=True)
    report = spec.report(request)
    with atomic_output(output_dir / "metrics.json") as tmp:
        tmp.write_text(json.dumps(report.metrics, indent=2))
    return report
