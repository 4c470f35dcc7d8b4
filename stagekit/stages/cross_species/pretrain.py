"""`stagekit pretrain --preset saturn`: the macrogene autoencoder of cross-species integration (SATURN).

Each species keeps its own gene vocabulary; genes meet only through macrogenes initialised from their
protein embeddings. One step trains on one batch of every species.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stagekit.bundle import Bundle, read_bundle
from stagekit.config import Config
from stagekit.data.anndata_io import CountMatrix, load_counts, split_by_column
from stagekit.data.batching import epoch_plan, eval_plan, split_train_val
from stagekit.data.hvg import highly_variable_genes
from stagekit.data.protein_embeddings import load_gene_embeddings, match_genes
from stagekit.errors import UserError
from stagekit.models.macrogenes import log_weights_from_centroids, macrogene_centroids
from stagekit.models.saturn import SaturnMetric, SaturnModel
from stagekit.stages.cross_species.model_config import SaturnConfig
from stagekit.stages.phase import PhaseRun, kept_metrics
from stagekit.stages.spec import PhaseRequest
from stagekit.train import FitResult, StepContext, Task
from stagekit.train.state import weights_to_numpy


@dataclass
class SpeciesData:
    name: str
    counts: CountMatrix  # this species' cells x its kept genes (in memory)
    protein: np.ndarray  # kept genes x embedding dim
    labels: np.ndarray | None


def _embedding_paths(specs: list[str], species: list[str]) -> dict[str, Path]:
    """`SPECIES=PATH` pairs, or plain paths in the order of the species."""
    named = dict(s.split("=", 1) for s in specs if "=" in s)
    plain = [s for s in specs if "=" not in s]
    if plain and named:
        raise UserError("--protein-emb: give every file as SPECIES=PATH, or all as plain paths in data order")
    if plain:
        if len(plain) != len(species):
            raise UserError(f"--protein-emb: {len(plain)} files for {len(species)} species ({', '.join(species)}); "
                            "give one per species, or SPECIES=PATH")
        named = dict(zip(species, plain, strict=True))
    unknown = sorted(set(named) - set(species))
    if unknown:
        raise UserError(f"--protein-emb names species {', '.join(unknown)}, not in the data "
                        f"(species: {', '.join(species)})")
    missing = [s for s in species if s not in named]
    if missing:
        raise UserError(f"species '{missing[0]}' has no protein embedding file; pass --protein-emb {missing[0]}=PATH")
    return {s: Path(p) for s, p in named.items()}


def load_species(config: Config, data: list[Path], species_names: list[str], embedding_specs: list[str],
                 log=print) -> list[SpeciesData]:
    cfg = config["data"]
    obs_keys = tuple(k for k in (cfg["species_key"], cfg["label_key"]) if k)
    if cfg["species_key"]:
        if cfg["backed"]:
            raise UserError("data.backed reads one file per species; split the file by species (one .h5ad each) "
                            "or train in memory without --backed")
        if len(data) != 1:
            raise UserError("data.species_key splits one .h5ad by species; give a single file")
        if species_names:
            raise UserError("--species names one file per species; with data.species_key the column names them")
        by_species = split_by_column(load_counts(data[0], cfg["layer"], obs_keys), cfg["species_key"])
    else:
        names = species_names or [p.stem for p in data]
        if len(names) != len(data) or len(set(names)) != len(names):
            raise UserError(f"--species: give one distinct name per data file ({len(data)} files, names {names})")
        by_species = {n: load_counts(p, cfg["layer"], obs_keys, backed=cfg["backed"])
                      for n, p in zip(names, data, strict=True)}
    if len(by_species) < 2:
        raise UserError(f"cross-species pretraining needs at least two species; found {list(by_species)}")
    paths = _embedding_paths(embedding_specs, list(by_species))
    species, dims = [], {}
    for name, counts in by_species.items():
        embeddings = load_gene_embeddings(paths[name])
        dims[name] = embeddings.dim
        matched, vectors = match_genes(counts.var_names, embeddings, name, cfg["min_matched_genes"])
        with_embedding = counts.select_genes(matched)
        keep = highly_variable_genes(with_embedding if counts.backed else with_embedding.matrix, cfg["hv_genes"])
        log(f"{name}: {len(matched)} of {counts.n_vars} genes matched a protein embedding; "
            f"{len(keep)} highly variable kept; {counts.n_obs} cells" + (" (backed)" if counts.backed else ""))
        kept = with_embedding.select_genes(keep)
        labels = counts.obs[cfg["label_key"]].astype(str).to_numpy() if cfg["label_key"] else None
        species.append(SpeciesData(name, kept, vectors[keep], labels))
    if len(set(dims.values())) > 1:
        raise UserError("protein embeddings differ in length between species ("
                        + ", ".join(f"{s}: {d}" for s, d in dims.items()) + "); use one embedding model")
    return species


class SaturnTask(Task):
    def __init__(self, model: SaturnModel, species: list[SpeciesData], splits: list[tuple[np.ndarray, np.ndarray]],
                 batch_size: int, seed: int, weights: dict[str, float]) -> None:
        self.model, self.species, self.splits = model, species, splits
        self.batch_size, self.seed, self.weights = batch_size, seed, weights
        self.n_genes = sum(s.counts.n_vars for s in species)

    def train_plan(self, epoch: int, rank: int, world: int) -> list[tuple[list[np.ndarray], np.ndarray]]:
        """Each step: one batch of every species (smaller species cycle) and a partner gene for every gene."""
        plans = [epoch_plan(train, self.batch_size, self.seed + i, epoch, rank, world,
                            contiguous=s.counts.backed)
                 for i, ((train, _), s) in enumerate(zip(self.splits, self.species, strict=True))]
        steps = max(len(p) for p in plans)
        rng = np.random.default_rng([self.seed, epoch, 2])
        return [([p[j % len(p)] for p in plans], rng.integers(0, self.n_genes, self.n_genes)) for j in range(steps)]

    def val_plan(self, rank: int, world: int) -> list:
        plans = [eval_plan(val, self.batch_size, rank, world) for _, val in self.splits]
        if not all(plans):
            return []
        return [([p[j % len(p)] for p in plans], None) for j in range(max(len(p) for p in plans))]

    def load(self, item: tuple) -> dict:
        rows, partners = item
        batch = {"xs": [torch.from_numpy(s.counts.rows(r)) for s, r in zip(self.species, rows, strict=True)]}
        if partners is not None:
            batch["partners"] = torch.from_numpy(partners)
        return batch

    def batch_size_of(self, batch: dict) -> int:
        return sum(len(x) for x in batch["xs"])

    def micro_batches(self, batch: dict, size: int) -> list[dict]:
        """Parts of at most `size` cells of one species each, so a pass holds the activations of one species'
        gene layers, not of all; a part's NLL terms are weighted by its share of the species' cells, and the
        weight regularisers (which see no cells) go with the first part, so the parts' terms add up to the whole
        step's. The last part, where DDP synchronises (every species' gene layers must have gradients there),
        holds the last cells of every species, at most size // species of each."""
        xs = batch["xs"]
        tail = max(1, size // len(xs))
        pieces, last = [], []
        for s, x in enumerate(xs):
            head, end = x[:max(0, len(x) - tail)], x[max(0, len(x) - tail):]
            pieces += [(s, piece) for piece in head.tensor_split(-(-len(head) // size))] if len(head) else []
            last.append(end)
        parts = []
        for s, piece in pieces:
            part_xs = [x[:0] for x in xs]
            part_xs[s] = piece
            parts.append(part_xs)
        parts.append(last)
        out = [{"xs": part_xs, "first": j == 0,
                "shares": [len(p) / len(x) if len(x) else 0.0 for p, x in zip(part_xs, xs, strict=True)]}
               for j, part_xs in enumerate(parts)]
        if "partners" in batch:
            out[0]["partners"] = batch["partners"]
        return out

    def step(self, model: torch.nn.Module, batch: dict, ctx: StepContext) -> dict[str, torch.Tensor]:
        regularised = batch.get("first", True)  # the whole batch, or the first of its parts
        out = model(batch["xs"], batch.get("partners"), l1=regularised and bool(self.weights["lambda_l1"]))
        shares = batch.get("shares") or [1.0] * len(self.species)
        named = {f"nll_{s.name}": out[f"nll_{i}"] * share
                 for i, (s, share) in enumerate(zip(self.species, shares, strict=True))}
        nll = sum(named.values())
        loss, logged = nll, {}
        if self.weights["lambda_l1"] and regularised:  # at weight 0 (the preset) neither added nor logged
            loss = loss + self.weights["lambda_l1"] * out["l1"]
            logged["l1"] = out["l1"]
        if "protein_similarity" in out:
            loss = loss + self.weights["lambda_pe"] * out["protein_similarity"]
            logged["protein_similarity"] = out["protein_similarity"]
        return {"loss": loss, "nll": nll} | named | logged


def macrogene_key(species: list[SpeciesData], protein: np.ndarray, n_macrogenes: int, seed: int,
                  seeding_dims: int = 0) -> str:
    """What the macrogene centroids depend on: every species' kept genes and their embeddings, M, the seed and
    the seeding's principal components (none when it ran on every dimension, as before that setting existed)."""
    digest = hashlib.sha256()
    for s in species:
        digest.update(f"{s.name}:{','.join(s.counts.var_names)};".encode())
    digest.update(np.ascontiguousarray(protein, dtype=np.float32).tobytes())
    digest.update(f"#{n_macrogenes}#{seed}".encode())
    if 0 < seeding_dims < min(protein.shape):
        digest.update(f"#pca{seeding_dims}".encode())
    return digest.hexdigest()


def cached_centroids(source: Path | None, key: str, log=print) -> np.ndarray | None:
    """The centroids stored in an earlier saturn pretrain bundle, if computed from the same inputs (same key)."""
    if source is None:
        return None
    bundle = read_bundle(source, ("pretrain",), command="pretrain --preset saturn --macrogenes-from", weights=False)
    stored = bundle.results.get("macrogene_key")
    if stored is None or "macrogene_centroids" not in bundle.results:
        raise UserError(f"{source} holds no macrogene centroids; was it written by `pretrain --preset saturn`?")
    stored = bytes(np.asarray(stored).tobytes()).decode() if not isinstance(stored, str) else stored
    if stored != key:
        log(f"{source}: its macrogenes were computed from other genes, embeddings, M, seed or seeding; running k-means")
        return None
    log(f"macrogene centroids reused from {source} (same genes, embeddings, M, seed and seeding)")
    return np.asarray(bundle.results["macrogene_centroids"], dtype=np.float32)


def load_model(bundle: Bundle) -> SaturnModel | SaturnMetric:
    """The trained model of a saturn pretrain (or align) bundle, in eval mode (no macrogene dropout)."""
    from stagekit.train.state import load_weights

    model = SaturnConfig.of(bundle).build()
    if bundle.stage == "align":  # align keeps the encoder half only
        model = SaturnMetric(model)
    load_weights(model, bundle.weights, bundle.path)
    return model.eval()


def run(request: PhaseRequest) -> Path | None:
    config, data, resume = request.config, request.data, request.resume
    species_names = request.options.get("species") or []
    embedding_specs = request.options.get("protein_emb") or []
    macrogenes_from = request.options.get("macrogenes_from")
    if not embedding_specs:
        raise UserError("saturn needs protein embeddings of each species' genes: --protein-emb SPECIES=PATH")
    model_cfg, train_cfg = config["model"], config["training"]
    phase = PhaseRun(config, request.output, resume, request.quiet)
    species = load_species(config, data, species_names, embedding_specs, log=phase.engine.reporter.log)
    files = sorted({str(s.counts.path) for s in species})
    fingerprint = {"path": ", ".join(files), "n_obs": sum(s.counts.n_obs for s in species),
                   "n_vars": sum(s.counts.n_vars for s in species), "matrix": species[0].counts.key,
                   "sha256": hashlib.sha256("".join(s.counts.fingerprint()["sha256"] for s in species)
                                            .encode()).hexdigest(),
                   "genes_sha256": hashlib.sha256("\n".join(g for s in species for g in s.counts.var_names)
                                                  .encode()).hexdigest()}
    phase.check_resume_data(fingerprint)
    phase.engine.launch()

    seed = train_cfg["seed"]
    protein = np.concatenate([s.protein for s in species])
    key = macrogene_key(species, protein, model_cfg["n_macrogenes"], seed, model_cfg["kmeans_seeding_dims"])
    centroids = cached_centroids(macrogenes_from or resume, key, phase.engine.reporter.log)
    if centroids is None:  # minutes at SATURN's real sizes: say so before, and how long after
        started = time.perf_counter()
        phase.engine.reporter.log(f"macrogenes: k-means of {len(protein):,} gene embeddings (dim {protein.shape[1]}) "
                                  f"into {min(model_cfg['n_macrogenes'], len(protein)):,} centroids ...")
        centroids = macrogene_centroids(protein, model_cfg["n_macrogenes"], seed, model_cfg["kmeans_seeding_dims"])
        phase.engine.reporter.log(f"macrogenes: k-means done in {time.perf_counter() - started:.0f} s")
    torch.manual_seed(seed)
    # the model keeps its own copy of the initial weights: the array is not held through training (genes x M)
    described = SaturnConfig.from_config(config.values | {"species": {
        "names": [s.name for s in species], "genes": [s.counts.n_vars for s in species]}})
    model = described.build(torch.from_numpy(log_weights_from_centroids(protein, centroids, model_cfg["scoring"])),
                            protein=torch.from_numpy(protein))
    splits = [split_train_val(s.counts.n_obs, train_cfg["val_fraction"], seed + i, f"{s.counts.path} ({s.name})")
              for i, s in enumerate(species)]
    task = SaturnTask(model, species, splits, train_cfg["batch_size"], seed, model_cfg)
    categories = {"species": [s.name for s in species]}
    if config["data"]["label_key"]:
        categories["labels"] = sorted({label for s in species for label in s.labels})

    def bundle_for(result: FitResult) -> Bundle:
        final = kept_metrics(result, ("train_", "val_"))
        gene_species = np.concatenate([np.full(s.counts.n_vars, i) for i, s in enumerate(species)])
        return Bundle(weights=weights_to_numpy(model),
                      model_config=described.to_toml(), data=fingerprint | {
                          "files": json.dumps({s.name: s.counts.fingerprint() for s in species})},
                      var_names=[g for s in species for g in s.counts.var_names], categories=categories,
                      final_metrics=final,
                      results={"gene_species": gene_species.astype(np.int64), "macrogene_centroids": centroids,
                               "macrogene_key": np.array(key.encode())})

    return phase.fit(task, bundle_for)
