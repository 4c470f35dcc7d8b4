"""`stagekit segment --preset segger SAMPLE_DIR`: train the transcript -> nucleus link predictor on the engine,
tiles as mini-batches, validation AUROC / F1 over the held-out links, the best states kept (`--from`: fine-tune a
model trained on another sample)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from stagekit.bundle import Bundle, read_bundle
from stagekit.data.spatial import Sample, read_sample
from stagekit.errors import UserError
from stagekit.models.segger import SeggerGNN
from stagekit.stages.phase import PhaseRun, kept_metrics, lineage_of
from stagekit.stages.segmentation.graph import SampleGraph, TileRoles, build_graph, tile_data
from stagekit.stages.segmentation.model_config import GraphSettings, SampleReading, SeggerConfig
from stagekit.stages.spec import PhaseRequest
from stagekit.train import FitResult, Task
from stagekit.train.hooks import StepContext
from stagekit.train.metrics import binary_scores
from stagekit.train.state import load_weights, weights_to_numpy
from stagekit.train.transfer import Regrow, load_by_name

UNKNOWN_GENE = "<unknown>"  # vocabulary entry 0: genes a model never saw
UNKNOWN_GENE_RATE = 0.01  # share of training transcripts read as that token, so that it is trained


class SegmentationTask(Task):
    """Tiles as mini-batches; each load re-draws which inside transcripts carry messages and which are labels."""

    monitor, monitor_mode = "auroc", "max"

    def __init__(self, model: SeggerGNN, graph: SampleGraph, validation: np.ndarray, labels: dict, tiles_per_step: int,
                 seed: int, vendor_target: np.ndarray | None = None) -> None:
        self.model, self.graph, self.labels, self.seed = model, graph, labels, seed
        self.vendor_target = vendor_target
        self.tiles_per_step = tiles_per_step
        self.validation = np.zeros(len(graph.xy), bool)
        self.validation[validation] = True
        inside = graph.inside >= 0
        trainable = inside & ~self.validation
        self.train_tiles = [i for i, (core, _) in enumerate(graph.tiles) if trainable[core].any()]
        self.val_tiles = [i for i, (core, _) in enumerate(graph.tiles) if self.validation[core].any()]

    def _chunks(self, tiles: list[int], rank: int, world: int) -> list[list[int]]:
        """Steps of `tiles_per_step` tiles (over all processes); every process takes its share of each step, so all
        take the same number of steps (a step of fewer tiles than processes gives each its first tile)."""
        steps = [tiles[i:i + self.tiles_per_step] for i in range(0, len(tiles), self.tiles_per_step)]
        return [step[rank::world] or step[:1] for step in steps]

    def train_plan(self, epoch: int, rank: int, world: int) -> list:
        order = np.random.default_rng([self.seed, epoch]).permutation(self.train_tiles).tolist()
        return [("train", epoch, chunk) for chunk in self._chunks(order, rank, world)]

    def val_plan(self, rank: int, world: int) -> list:
        tiles = self.val_tiles[rank::world] or self.val_tiles[:1]
        return [("val", 0, tiles[i:i + self.tiles_per_step]) for i in range(0, len(tiles), self.tiles_per_step)]

    def roles(self, kind: str, epoch: int, tile: int) -> tuple[TileRoles, np.random.Generator]:
        """Roles of the tile's transcripts. Validation scores the held-out transcripts under the same hidden nuclei
        and swapped geometry as training, drawn once (a fixed seed): with the geometry alone, links of transcripts
        inside nuclei are separated almost perfectly, and the AUROC would stop telling states apart."""
        members = self.graph.tiles[tile][1]
        rng = np.random.default_rng([self.seed, epoch if kind == "train" else 0, tile, kind == "val"])
        inside = self.graph.inside[members] >= 0
        held_out = self.validation[members]
        hidden = rng.random(len(self.graph.nucleus_xy)) < self.labels["hide_nuclei"]
        common = {"swap_geometry": self.labels["swap_geometry"], "hidden": hidden}
        if kind == "val":  # every training label carries messages; the held-out transcripts are scored
            return TileRoles(inside & ~held_out, held_out, **common), rng
        message = inside & ~held_out & (rng.random(len(members)) < self.labels["message_fraction"])
        supervised = inside & ~held_out & ~message
        weak = None
        if self.vendor_target is not None:  # outside transcripts with a vendor cell are labels too, never messages
            weak = self.vendor_target[members]
            supervised |= ~inside & (weak >= 0)
        return TileRoles(message, supervised, neg_ratio=self.labels["neg_ratio"], weak=weak,
                         weak_weight=self.labels["vendor_weight"], unknown_gene=UNKNOWN_GENE_RATE,
                         context_noise=self.labels["context_noise"], **common), rng

    def load(self, item):
        from torch_geometric.data import Batch

        kind, epoch, tiles = item
        graphs = []
        for tile in tiles:
            roles, rng = self.roles(kind, epoch, tile)
            graphs.append(tile_data(self.graph, tile, roles, rng))
        return Batch.from_data_list(graphs)

    def step(self, model, batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        logits, log_profile = model.scores(batch)
        links = batch["tx", "candidate", "bd"]
        target = links.y.float()
        loss = (F.binary_cross_entropy_with_logits(logits, target, weight=links.weight) if len(target)
                else logits.sum() * 0.0)
        positive = links.y == 1  # the nucleus never heard these transcripts: its profile must predict their genes
        if positive.any():
            tx, bd = links.edge_index[:, positive]
            gene_nll = -log_profile[bd, batch["tx"].gene[tx]]
            loss = loss + (gene_nll * links.weight[positive]).sum() / links.weight[positive].sum()
        if ctx.train:
            return {"loss": loss}
        return {"loss": loss, "probability": torch.sigmoid(logits), "target": target}

    batch_unit = "links"

    def batch_size_of(self, batch) -> int:  # links, so that means weigh every labelled pair alike
        return max(int(batch["tx", "candidate", "bd"].y.numel()), 1)

    def val_metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        scores = binary_scores(outputs["probability"], outputs["target"])
        return {"auroc": scores["auroc"], "f1": scores["f1"], "links": float(len(outputs["target"]))}


def vocabulary(sample: Sample, known: list[str] | None) -> tuple[list[str], np.ndarray, list[str]]:
    """(vocabulary, the sample's gene codes into it, genes new to a known vocabulary, appended at its end)."""
    vocab = list(known) if known else [UNKNOWN_GENE]
    new = [g for g in sample.genes if g not in set(vocab)]
    vocab += new
    position = {g: i for i, g in enumerate(vocab)}
    lookup = np.array([position[g] for g in sample.genes], dtype=np.int64)
    return vocab, lookup[sample.gene_codes], new


def sample_graph(sample: Sample, codes: np.ndarray, settings: GraphSettings, log) -> SampleGraph:
    graph = build_graph(sample, codes, settings.k_tx, settings.dist_tx, settings.dist_bd,
                        settings.max_tile_transcripts, settings.tile_margin)
    no_nucleus = sum(1 for core, members in graph.tiles
                     if np.diff(graph.cand_start)[members].sum() == 0)
    log(f"graph: {len(graph.xy):,} transcripts, {len(graph.nucleus_xy):,} nuclei, {len(graph.cand_tx):,} candidate "
        f"links within {settings.dist_bd:g} um, {int((graph.inside >= 0).sum()):,} transcripts inside a nucleus; "
        f"{len(graph.tiles)} tiles of <= {settings.max_tile_transcripts:,} transcripts"
        + (f" ({no_nucleus} without any nucleus: their transcripts can only join new cells)" if no_nucleus else ""))
    return graph


def vendor_targets(sample: Sample, log) -> np.ndarray:
    """The nucleus index of each transcript's vendor cell id (-1 where none, or the id has no nucleus)."""
    import pandas as pd

    if sample.vendor_cell is None or not (sample.vendor_cell != "").any():
        raise UserError(f"{sample.folder}: labels.vendor_weight > 0 needs the vendor's cell ids (column cell_id), "
                        "which this sample does not have; set labels.vendor_weight = 0")
    target = pd.Index(sample.nuclei.ids).get_indexer(pd.Index(sample.vendor_cell)).astype(np.int64)
    log(f"labels: the vendor's cell id adds weak labels for {int((target >= 0).sum()):,} transcripts "
        "(those outside a nucleus are used)")
    return target


def load_model(bundle: Bundle) -> SeggerGNN:
    model = SeggerConfig.of(bundle).build()
    load_weights(model, bundle.weights, bundle.path)
    return model.eval()


def read_for(data: SampleReading, folder: Path, log, crop: bool = False) -> Sample:
    """The sample as `data` says; only training reads its crop (`data.region`): a model trained on a crop
    predicts and is scored on the whole sample."""
    return read_sample(folder, data.format, data.min_qv, control_prefixes=tuple(data.control_prefixes),
                       region=(data.region or None) if crop else None, micron_per_unit=data.micron_per_unit,
                       log=log)


def _parent(request: PhaseRequest) -> Bundle:
    parent = read_bundle(request.parent, ("segment",), command="segment --from")
    if parent.model != "segger":
        raise UserError(f"--from {request.parent} holds a '{parent.model}' model; give a `segment` bundle")
    model_cfg, changed = request.config["model"], []
    for key, value in dataclasses.asdict(SeggerConfig.of(parent).model).items():
        if model_cfg[key] == value:
            continue
        source = request.config.sources.get(f"model.{key}", "default")
        if source == "default" or source.startswith("preset "):  # not chosen for this run: the model's own
            request.log(f"model.{key} = {value!r} as the --from model has it ({source}: {model_cfg[key]!r})")
            model_cfg[key] = value
        else:
            changed.append(f"model.{key}")
    if changed:
        raise UserError(f"--from {request.parent}: {', '.join(changed)} differ(s) from the stored model's; "
                        "drop those --set values to fine-tune it")
    return parent


def run(request: PhaseRequest) -> Path | None:
    config = request.config
    if len(request.data) != 1:
        raise UserError(f"segment reads one sample folder; got {len(request.data)}")
    parent = _parent(request) if request.parent else None
    phase = PhaseRun(config, request.output, request.resume, request.quiet)
    sample = read_for(SampleReading(**dict(config["data"].items())), request.data[0], request.log, crop=True)
    known = phase.resume_bundle.var_names if phase.resume_bundle else (parent.var_names if parent else None)
    vocab, codes, new = vocabulary(sample, known)
    if parent is not None and new and not request.options.get("allow_new_genes"):
        shown = ", ".join(new[:5]) + (f" and {len(new) - 5} more" if len(new) > 5 else "")
        raise UserError(f"{request.data[0]}: {len(new)} gene(s) the --from model never saw ({shown}); add "
                        "--allow-new-genes to give them new, untrained embeddings (the rest is carried over)")
    fingerprint = sample.fingerprint()
    phase.check_resume_data(fingerprint)
    described = SeggerConfig.from_config(config.values | {"genes": {"n": len(vocab)}})
    graph = sample_graph(sample, codes, described.graph, request.log)
    seed, training = config["training"]["seed"], config["training"]
    inside = np.flatnonzero(graph.inside >= 0)
    if len(inside) == 0:
        raise UserError(f"{request.data[0]}: no transcript lies inside a nucleus polygon, so there is nothing to "
                        "learn from; check the nucleus file and the coordinate units")
    validation = np.sort(np.random.default_rng(seed).choice(
        inside, int(round(training["val_fraction"] * len(inside))), replace=False))
    request.log(f"labels: {len(inside) - len(validation):,} inside transcripts for training, {len(validation):,} "
                "held out for validation (their links neither train nor carry messages)")
    phase.engine.launch()
    torch.manual_seed(seed)
    model = described.build()
    extra: dict = {}
    if parent is not None and not request.resume:
        known_at = {g: i for i, g in enumerate(parent.var_names)}
        source = np.array([known_at.get(g, -1) for g in vocab])
        per_gene = ("gene_embedding.weight", "profile.weight", "profile.bias", "gene_offset.weight")
        report = load_by_name(model, parent.weights, regrow={name: Regrow(0, source, vocab) for name in per_gene})
        if report.partial:
            raise UserError(f"--from {request.parent}: {report.summary()}")
        request.log(f"from {request.parent}: {report.summary()}")
        extra["load_report"] = report.as_dict()
    task = SegmentationTask(model, graph, validation, config["labels"], training["batch_size"], seed,
                            vendor_targets(sample, request.log) if config["labels"]["vendor_weight"] > 0 else None)

    def bundle_for(result: FitResult) -> Bundle:
        bundle = Bundle(weights=weights_to_numpy(model), model_config=described.to_toml(),
                        lineage=lineage_of(parent) if parent else [], data=fingerprint, var_names=vocab,
                        final_metrics=kept_metrics(result, ("train_", "val_")),
                        results={"validation": validation})
        bundle.records |= extra
        return bundle

    return phase.fit(task, bundle_for)
