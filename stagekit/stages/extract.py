"""`stagekit extract`: per-cell outputs of any bundle into an .h5ad (the registry says how for each model)."""

from __future__ import annotations

import json
from pathlib import Path

from stagekit.bundle import atomic_output, file_sha256, read_bundle
from stagekit.data.anndata_io import write_h5ad
from stagekit.errors import UserError
from stagekit.stages.registry import cells_of, entry, resolve


def run(bundle_path: Path, data: list[Path], output: Path, species: list[str] | None = None, log=print,
        pert: str | None = None, held_out_of: Path | None = None) -> Path:
    bundle = read_bundle(bundle_path, command="extract")
    writer = entry(bundle.stage, bundle.model, str(bundle_path)).writes
    if writer:  # the model writes its own outputs (e.g. a segmentation folder)
        given = [flag for flag, value in (("--species", species), ("--pert", pert), ("--held-out-of", held_out_of))
                 if value]
        if given:
            raise UserError(f"{given[0]} does not apply to a '{bundle.model}' bundle; drop it")
        return resolve(writer)(bundle, data, output, log)
    if output.suffix != ".h5ad":
        raise UserError(f"output {output} should end in .h5ad")
    adata, extra = cells_of(bundle, data, species, log, pert, held_out_of)
    adata.uns["stagekit"] = {"bundle": str(Path(bundle_path).resolve()), "bundle_sha256": file_sha256(bundle_path),
                             "stage": bundle.stage, "model": bundle.model, "lineage": json.dumps(bundle.lineage),
                             "config": bundle.config_toml} | extra
    with atomic_output(output) as tmp:
        write_h5ad(adata, tmp)
    return output
