"""`stagekit extract`: per-cell outputs of any bundle into an .h5ad, or the outputs its pipeline writes itself."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from stagekit.bundle import atomic_output, file_sha256, read_bundle
from stagekit.data.anndata_io import write_h5ad
from stagekit.errors import UserError
from stagekit.stages import registry
from stagekit.stages.spec import CellsRequest
from stagekit.stages.spec import given as spec_given


def run(bundle_path: Path, data: list[Path], output: Path, options: dict[str, Any] | None = None, log=print) -> Path:
    """`options` are the pipeline options the command line was given (name -> value; None when not given)."""
    from stagekit.train.allocator import return_freed_memory

    return_freed_memory()  # blocks of cells come and go: their memory goes back (see the allocator module)
    bundle = read_bundle(bundle_path, command="extract")
    spec = registry.of_bundle(bundle)
    given = spec_given(options or {})
    registry.check_options(spec, spec.extract_options, given, "extract", registry.phases())
    request = CellsRequest(bundle, list(data), {o.name: given.get(o.name, o.default) for o in spec.extract_options},
                           log)
    if spec.write_outputs is not None:  # the pipeline writes its own outputs (e.g. a segmentation folder)
        return spec.write_outputs(request, output)
    if spec.cells is None:
        raise UserError(f"{bundle_path}: a '{bundle.stage}' ({bundle.model}) bundle has no per-cell outputs")
    if output.suffix != ".h5ad":
        raise UserError(f"output {output} should end in .h5ad")
    provenance = {"bundle": str(Path(bundle_path).resolve()), "bundle_sha256": file_sha256(bundle_path),
                  "stage": bundle.stage, "model": bundle.model, "lineage": json.dumps(bundle.lineage),
                  "config": bundle.config_toml}
    with atomic_output(output) as tmp:
        if spec.stream_cells is not None and spec.stream_cells(request, tmp, provenance):
            return output  # written as computed; companions need the cells in memory
        adata, extra = spec.cells(request)
        adata.uns["stagekit"] = provenance | extra
        write_h5ad(adata, tmp)
        if spec.companions is not None:  # before the .h5ad takes its place: a failure leaves the old one
            for path in spec.companions(request, adata, output):
                log(f"wrote {path}")
    return output
