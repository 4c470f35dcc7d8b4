"""`stagekit align PRETRAIN.stk`: SATURN's metric-learning stage. The pretrained encoder, on frozen macrogenes,
is trained with a cosine triplet margin loss on cross-species triplets (see stagekit.losses.triplet)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from stagekit.bundle import Bundle, read_bundle
from stagekit.data.batching import epoch_plan
from stagekit.errors import UserError
from stagekit.losses.triplet import cosine_triplet_loss, label_groups, mine_triplets
from stagekit.metrics.integration import cross_species_knn_agreement, species_mixing
from stagekit.metrics.neighbour_graph import knn_adjacency, leiden_partition
from stagekit.models.saturn import SaturnMetric
from stagekit.stages.cross_species.cells import SpeciesCells, cell_gene_products, cell_outputs, load_cells
from stagekit.stages.cross_species.model_config import SaturnConfig
from stagekit.stages.cross_species.pretrain import load_model
from stagekit.stages.phase import PhaseRun, kept_metrics, lineage_of
from stagekit.stages.spec import PhaseRequest
from stagekit.train import FitResult, StepContext, Task
from stagekit.train.optim import FreezePlan
from stagekit.train.state import weights_to_numpy


def leiden_labels(embedding: np.ndarray, resolution: float, seed: int, k: int = 15) -> np.ndarray:
    """Leiden clusters of a k-nearest-neighbour graph of the embedding, named leiden_0, leiden_1, ..."""
    return np.array([f"leiden_{c}" for c in leiden_partition(knn_adjacency(embedding, k), resolution, seed)])


# frozen macrogenes: log1p(x) W_s is the same every epoch, so it is computed once per cell when it fits here
PRODUCT_CACHE_BYTES = 2 * 1024**3
METRIC_CELLS = 100_000  # cells of each species the final neighbour scores are computed on


class AlignTask(Task):
    def __init__(self, model: SaturnMetric, cells: list[SpeciesCells], labels: list[np.ndarray], cfg: dict,
                 batch_size: int, seed: int, log=print) -> None:
        self.model, self.cells, self.cfg, self.batch_size, self.seed = model, cells, cfg, batch_size, seed
        prefixed = [np.char.add(f"{c.name}:", lab.astype(str)) for c, lab in zip(cells, labels, strict=True)]
        self.label_names = sorted(set(np.concatenate(prefixed)))
        self.codes = [np.searchsorted(self.label_names, p) for p in prefixed]
        self.products = self._gene_products(log)

    def _gene_products(self, log) -> list[torch.Tensor] | None:
        """Each species' gene-layer products of every cell, when the macrogene weights stay frozen and the
        products fit in PRODUCT_CACHE_BYTES (the gene layer is ~90 % of an align step's work at 8,000 genes);
        None: every step computes them from the counts."""
        if self.cfg["unfreeze_macrogenes"]:
            return None
        size = sum(c.n_obs for c in self.cells) * self.model.log_weights.shape[1] * 4
        if size > PRODUCT_CACHE_BYTES:
            log(f"macrogene products of all cells would take {size / 1024**3:.1f} GB; computed at every step")
            return None
        return [cell_gene_products(self.model, c, self.batch_size) for c in self.cells]

    def freeze_plan(self) -> FreezePlan:
        return FreezePlan() if self.cfg["unfreeze_macrogenes"] else FreezePlan(frozen=("log_weights",))

    def train_plan(self, epoch: int, rank: int, world: int) -> list[tuple[list[np.ndarray], int]]:
        plans = [epoch_plan(np.arange(c.n_obs), self.batch_size, self.seed + i, epoch, rank, world)
                 for i, c in enumerate(self.cells)]
        steps = max(len(p) for p in plans)
        return [([p[j % len(p)] for p in plans], self.seed * 100_003 + epoch * 1_009 + j) for j in range(steps)]

    def load(self, item: tuple[list[np.ndarray], int]) -> dict:
        rows, step_seed = item
        inputs = ({"products": [p[torch.from_numpy(r)] for p, r in zip(self.products, rows, strict=True)]}
                  if self.products is not None else
                  {"xs": [c.dense_rows(r) for c, r in zip(self.cells, rows, strict=True)]})
        labels = np.concatenate([code[r] for code, r in zip(self.codes, rows, strict=True)])
        species = np.concatenate([np.full(len(r), i) for i, r in enumerate(rows)])
        return inputs | {"labels": torch.from_numpy(labels), "species": torch.from_numpy(species),
                         "seed": torch.tensor(step_seed)}

    def batch_size_of(self, batch: dict) -> int:
        return len(batch["labels"])

    @torch.no_grad()
    def neighbour_space(self, values: list[torch.Tensor]) -> torch.Tensor | None:
        """Macrogene values centred per species (what differs between cells, not between the species' data
        sets), or None: neighbours in the embedding itself."""
        if self.cfg["neighbour_space"] != "macrogenes":
            return None
        return torch.cat([v - v.mean(0) for v in values])

    @torch.no_grad()
    def unlinked_labels(self) -> list[str]:
        """Labels of the first batch whose group gains no cell of another species: they form no triplets."""
        batch = self.load(self.train_plan(0, 0, 1)[0])
        z, values = self.model.eval()(batch.get("xs"), batch.get("products"))
        self.model.train()
        space = self.neighbour_space(values)
        groups = label_groups(z if space is None else space, batch["species"], batch["labels"], self.cfg["mnn"],
                              self.cfg["mnn_k"])
        # a label is linked when its group holds cells of two species or more
        species_in_group = torch.stack([groups[batch["species"] == sp].any(0) for sp in batch["species"].unique()])
        linked = set((species_in_group.sum(0) >= 2).nonzero().squeeze(1).tolist())
        present = set(batch["labels"].unique().tolist())
        return [self.label_names[i] for i in sorted(present - linked)]

    def step(self, model: torch.nn.Module, batch: dict, ctx: StepContext) -> dict[str, torch.Tensor]:
        z, values = model(batch.get("xs"), batch.get("products"))
        generator = torch.Generator(device=z.device).manual_seed(int(batch["seed"]))
        a, p, n = mine_triplets(z, batch["species"], batch["labels"], self.cfg["margin"], self.cfg["mnn"],
                                generator, self.neighbour_space(values), self.cfg["balance_species"],
                                self.cfg["mnn_k"], self.cfg["negative_search"])
        loss = cosine_triplet_loss(z, a, p, n, self.cfg["margin"])
        return {"loss": loss, "triplets": torch.tensor(float(len(a)))}


def run(request: PhaseRequest) -> Path | None:
    config, pretrain_path, log = request.config, request.parent, request.log
    if request.data:
        raise UserError("align trains on the cells its pretrain bundle was trained on; give no data files")
    cfg, train_cfg = config["align"], config["training"]
    phase = PhaseRun(config, request.output, request.resume, request.quiet)
    parent = read_bundle(pretrain_path, ("pretrain",), command="align")
    if parent.model != "saturn":
        raise UserError(f"{pretrain_path} holds a '{parent.model}' model; align needs `pretrain --preset saturn`")
    cells = load_cells(parent, [], [], log)
    phase.check_resume_data(parent.data)
    phase.engine.launch()
    seed = train_cfg["seed"]
    pretrained = load_model(parent)
    label_key = SaturnConfig.of(parent).data.label_key
    labels, resolution = [], cfg["leiden_resolution"]
    for c in cells:
        if label_key and label_key in c.obs:
            labels.append(c.obs[label_key].astype(str).to_numpy())
        else:  # no labels: clusters of the pretrain embedding, per species
            labels.append(leiden_labels(cell_outputs(pretrained, c, keep_macrogenes=False)[1], resolution, seed))
            log(f"{c.name}: no labels; {len(set(labels[-1]))} Leiden clusters of the pretrain embedding used")
    torch.manual_seed(seed)
    model = SaturnMetric(pretrained).train()
    task = AlignTask(model, cells, labels, cfg, train_cfg["batch_size"], seed, log)
    for name in task.unlinked_labels():
        log(f"warning: label '{name}' has no cell of another species among its nearest cross-species cells "
            f"(align.neighbour_space = {cfg['neighbour_space']}); its cells form no triplets and it is skipped")

    def bundle_for(result: FitResult) -> Bundle:
        final = kept_metrics(result, "train_")
        # the neighbour scores on at most METRIC_CELLS seeded cells of each species (all of them in most data)
        rng = np.random.default_rng([seed, 53])
        rows = [np.sort(rng.choice(c.n_obs, min(c.n_obs, METRIC_CELLS), replace=False)) for c in cells]
        outputs = [cell_outputs(model, c, products=None if task.products is None else task.products[i],
                                keep_macrogenes=False, rows=rows[i])[1] for i, c in enumerate(cells)]
        embedding = np.concatenate(outputs)
        species = np.concatenate([np.full(len(o), c.name) for o, c in zip(outputs, cells, strict=True)])
        all_labels = np.concatenate([lab[r] for lab, r in zip(labels, rows, strict=True)])
        final |= {"knn1_agreement": cross_species_knn_agreement(embedding, species, all_labels, 1),
                  "species_mixing": species_mixing(embedding, species)}
        model.train()
        return Bundle(weights=weights_to_numpy(model),
                      model_config=parent.model_config, lineage=lineage_of(parent), data=parent.data,
                      var_names=parent.var_names, final_metrics=final,
                      categories=parent.categories | {"align_labels": task.label_names},
                      results={"gene_species": parent.results["gene_species"]})

    return phase.fit(task, bundle_for)
