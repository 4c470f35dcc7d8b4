"""Cells for a saturn bundle: each species' cells on the bundle's genes, and their macrogenes and embedding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from stagekit.bundle import Bundle
from stagekit.data.anndata_io import CountMatrix, load_counts, split_by_column
from stagekit.data.batching import eval_plan
from stagekit.data.normalise import log_normalised
from stagekit.errors import UserError
from stagekit.models.blocks import device_of
from stagekit.stages.cross_species.model_config import SaturnConfig
from stagekit.stages.spec import CellsRequest


class SpeciesCells:
    """One species' cells on the bundle's genes of that species (in the bundle's order; genes the data lacks read
    as zero): a CSR matrix in memory, or rows read from the file on demand when it is backed."""

    def __init__(self, species: int, name: str, obs: pd.DataFrame, counts: CountMatrix, present: np.ndarray,
                 n_genes: int) -> None:
        self.species, self.name, self.obs = species, name, obs
        self.present, self.n_genes = present, n_genes  # column j of `counts` is the bundle's gene present[j]
        self.matrix = self._in_bundle_order(counts.matrix) if counts.matrix is not None else None
        self.counts = counts if self.matrix is None else None  # backed: rows are read from it

    @property
    def n_obs(self) -> int:
        return len(self.obs)

    def _in_bundle_order(self, block: sp.csr_matrix) -> sp.csr_matrix:
        block = sp.csr_matrix(block)
        block.sort_indices()
        return sp.csr_matrix((block.data, self.present[block.indices], block.indptr),
                             shape=(block.shape[0], self.n_genes))

    def rows(self, index: np.ndarray) -> sp.csr_matrix:
        """Float32 CSR rows of `index` (any order, repeats allowed)."""
        if self.matrix is not None:
            return self.matrix[index]
        unique, inverse = np.unique(index, return_inverse=True)
        return self._in_bundle_order(self.counts.sparse_rows(unique))[inverse]

    def dense_rows(self, index: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.rows(index).toarray())


def species_genes(bundle: Bundle, species: int) -> list[str]:
    return [g for g, s in zip(bundle.var_names, bundle.results["gene_species"], strict=True) if s == species]


def _species_cells(species: int, name: str, counts: CountMatrix, wanted: list[str], where: str, log
                   ) -> SpeciesCells:
    """The cells on the bundle's genes (matched case-insensitively); genes the data lacks are zeros. A backed
    matrix stays on disk: rows are read when asked for."""
    lookup = {g.upper(): i for i, g in enumerate(counts.var_names)}
    columns = np.array([lookup.get(g.upper(), -1) for g in wanted])
    missing = int((columns < 0).sum())
    if missing > len(wanted) // 2:
        raise UserError(f"{where}: {missing} of the model's {len(wanted)} genes are missing (e.g. "
                        f"{', '.join(g for g, c in zip(wanted, columns, strict=True) if c < 0)[:80]}); "
                        "is this the species and gene naming the model was trained on?")
    if missing:
        log(f"{where}: {missing} of {len(wanted)} model genes are absent and read as zero")
    present = np.flatnonzero(columns >= 0)
    return SpeciesCells(species, name, counts.obs.copy(), counts.select_genes(columns[present]), present,
                        len(wanted))


def load_cells(bundle: Bundle, data: list[Path], species_names: list[str], log=print) -> list[SpeciesCells]:
    """The bundle's training files by default; new files need their species (`--species` or the species column)."""
    described = SaturnConfig.of(bundle)
    data_cfg, known = described.data, described.species.names
    if not data:
        files = json.loads(bundle.data.get("files", "{}"))
        if data_cfg.species_key:
            data = sorted({Path(f["path"]) for f in files.values()})
        else:
            species_names, data = known, [Path(files[name]["path"]) for name in known]
        for path in data:
            if not path.is_file():
                raise UserError(f"{bundle.path} was trained on {path}, which is gone; give the data files")
    key = data_cfg.species_key
    if key and not species_names:  # each file read once, split by its species column
        parts = [(name, path, counts) for path in data
                 for name, counts in split_by_column(load_counts(path, data_cfg.layer, (key,)), key).items()]
    else:
        if len(species_names) != len(data):
            raise UserError(f"name the species of each data file with --species ({len(data)} files); "
                            f"the model knows {', '.join(known)}")
        parts = [(name, path, None) for name, path in zip(species_names, data, strict=True)]
    cells = []
    for name, path, counts in parts:
        if name not in known:
            raise UserError(f"{path}: species '{name}' is not in {bundle.path} (it knows {', '.join(known)}); "
                            "a model maps only the species it was trained on")
        if counts is None:
            # labels are optional for new cells
            counts = load_counts(path, data_cfg.layer, backed=data_cfg.backed)
        index = known.index(name)
        cells.append(_species_cells(index, name, counts, species_genes(bundle, index), f"{path} ({name})", log))
    return cells


@torch.no_grad()
def cell_outputs(model: torch.nn.Module, cells: SpeciesCells, batch_size: int = 4096,
                 products: torch.Tensor | None = None, keep_macrogenes: bool = True, rows: np.ndarray | None = None
                 ) -> tuple[np.ndarray | None, np.ndarray]:
    """Macrogene values (None unless `keep_macrogenes`) and embedding of every cell (or of the sorted `rows`),
    deterministic (eval mode: no macrogene dropout); from the cells' gene_products when given
    (cell_gene_products, with the model's current macrogene weights)."""
    model.eval()
    device = device_of(model)
    macro, embedding = [], []
    for block in eval_plan(np.arange(cells.n_obs) if rows is None else rows, batch_size):
        if products is not None:
            m = model.values_of_products(products[torch.from_numpy(block)].to(device))
        else:
            m = model.macrogenes(cells.dense_rows(block).to(device), cells.species)
        if keep_macrogenes:
            macro.append(m.float().cpu().numpy())
        embedding.append(model.encoder(m).float().cpu().numpy())
    return np.concatenate(macro) if keep_macrogenes else None, np.concatenate(embedding)


@torch.no_grad()
def cell_gene_products(model: torch.nn.Module, cells: SpeciesCells, batch_size: int = 4096) -> torch.Tensor:
    """log1p(x) W_s of every cell (cells x macrogenes, float32, in CPU memory), a block of rows at a time."""
    device = device_of(model)
    return torch.cat([model.gene_products(cells.dense_rows(rows).to(device), cells.species).float().cpu()
                      for rows in eval_plan(np.arange(cells.n_obs), batch_size)])


def shared_gene_pca(bundle: Bundle, cells: list[SpeciesCells], n_components: int = 50, seed: int = 0
                    ) -> tuple[np.ndarray | None, int]:
    """The unintegrated reference: PCA of log-normalised counts (per 10,000 over the model's genes of each species)
    on the genes whose symbols match across species ignoring case (one-to-one orthologs mostly share a symbol).
    None when fewer than 20 genes match."""
    from sklearn.decomposition import PCA

    genes = [species_genes(bundle, c.species) for c in cells]
    shared = sorted(set.intersection(*({g.upper() for g in names} for names in genes)))
    if len(shared) < 20:
        return None, len(shared)
    blocks = []
    for c, names in zip(cells, genes, strict=True):
        column = {g.upper(): i for i, g in enumerate(names)}
        matrix = c.matrix if c.matrix is not None else c.rows(np.arange(c.n_obs))
        blocks.append(log_normalised(matrix, np.array([column[g] for g in shared])).toarray())
    values = np.concatenate(blocks)
    n = min(n_components, values.shape[1] - 1, values.shape[0] - 1)
    return PCA(n, svd_solver="randomized", random_state=seed).fit_transform(values).astype(np.float32), len(shared)


def _pretrain_model(bundle: Bundle, log):
    """The pretrained model an align bundle started from, while its file is unchanged (None otherwise)."""
    from stagekit.bundle import file_sha256, read_bundle
    from stagekit.stages.cross_species.pretrain import load_model

    entry = next((e for e in bundle.lineage if e.get("stage") == "pretrain"), None)
    if entry is None or not Path(entry["path"]).is_file() or file_sha256(entry["path"]) != entry["sha256"]:
        log(f"warning: the pretrain bundle {bundle.path} started from is gone or changed: no X_pretrain written")
        return None
    return load_model(read_bundle(entry["path"]))


def saturn_anndata(request: CellsRequest):
    """All species in one AnnData: X and obsm["X_macrogenes"] the macrogene values, obsm["X_pretrain"] and (of an
    align bundle) obsm["X_align"] the embeddings, obsm["X_pca_shared_genes"] the unintegrated reference
    (`shared_gene_pca`); the gene -> macrogene weight table in uns (genes differ between species, so it cannot be
    varm). Cells keep their file's names, prefixed `species:` only where two species share a name;
    obs["stagekit_cell"] keeps each file's own name."""
    import anndata

    from stagekit.stages.cross_species.pretrain import load_model

    bundle, data, species, log = request.bundle, request.data, request.options.get("species") or [], request.log
    model = load_model(bundle)
    pretrained = _pretrain_model(bundle, log) if bundle.stage == "align" else None
    label_key = SaturnConfig.of(bundle).data.label_key
    loaded = load_cells(bundle, data, species, log)
    names = [c.obs.index.astype(str) for c in loaded]
    repeated = set.intersection(*(set(n) for n in names)) if len(names) > 1 else set()
    parts = []
    for cells, own in zip(loaded, names, strict=True):
        macro, embedding = cell_outputs(model, cells)
        obs = cells.obs.copy()
        obs["species"] = cells.name
        obs["stagekit_cell"] = own  # the file's own cell name, to join back on
        obsm = {"X_macrogenes": macro}
        if bundle.stage == "align":
            obsm["X_align"] = embedding
            if pretrained is not None:
                obsm["X_pretrain"] = cell_outputs(pretrained, cells, keep_macrogenes=False)[1]
        else:
            obsm["X_pretrain"] = embedding
        part = anndata.AnnData(X=macro, obs=obs, obsm=obsm)
        part.obs_names = [f"{cells.name}:{n}" if n in repeated else n for n in own]
        parts.append(part)
    adata = anndata.concat(parts, merge="same")
    adata.var_names = [f"macrogene_{i}" for i in range(adata.n_vars)]
    adata.obs["species"] = pd.Categorical(adata.obs["species"].astype(str))
    reference, n_shared = shared_gene_pca(bundle, loaded)
    if reference is not None:
        adata.obsm["X_pca_shared_genes"] = reference
    else:
        log(f"warning: only {n_shared} gene symbols match across species: no unintegrated reference written")
    weights = np.exp(bundle.weights["log_weights"])
    extra = {"label_key": label_key, "shared_genes": n_shared, "macrogene_weights": weights.astype(np.float32),
             "macrogene_weight_genes": np.array(bundle.var_names, dtype=str),
             "macrogene_weight_species": np.array(bundle.categories["species"], dtype=str)[
                 bundle.results["gene_species"]]}
    return adata, extra
