"""`stagekit finetune --preset dec`: joint training of encoder and cluster centres (DEC with IDEC's
reconstruction term), optional contrastive and consistency terms on positive pairs from an obs column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from stagekit.bundle import Bundle, read_bundle
from stagekit.data.anndata_io import CountMatrix
from stagekit.data.batching import epoch_plan
from stagekit.data.pairs import Partners, cells_of, with_partners
from stagekit.errors import TrainingFinished, UserError
from stagekit.losses.clustering import assignment_consistency, dec_kl, nt_xent, target_distribution
from stagekit.metrics.clustering import label_agreement
from stagekit.models.dec import DEC
from stagekit.stages.clustering.model_config import VAEConfig
from stagekit.stages.clustering.trained import (
    check_pair_config,
    embed,
    load_bundle_data,
    load_vae,
    positive_partners,
)
from stagekit.stages.phase import PhaseRun, kept_metrics, lineage_of
from stagekit.stages.spec import PhaseRequest
from stagekit.train import FitResult, Guard, Hook, StepContext, Task
from stagekit.train.state import weights_to_numpy


class DECTask(Task):
    monitor = "loss"
    loads_in_workers = False  # batches carry the target P, which changes within an epoch

    def __init__(self, model: DEC, counts: CountMatrix, batch_codes: np.ndarray | None,
                 partners: Partners | None,
                 cfg: dict, batch_size: int, seed: int, beta: float) -> None:
        self.model, self.counts, self.batch_codes, self.cfg, self.beta = model, counts, batch_codes, cfg, beta
        # keys that act only in some situations are read up front, so every run reads (and checks) them
        self.tol, self.min_updates, self.reseed_empty = cfg["tol"], cfg["min_updates"], cfg["reseed_empty"]
        self.temperature = cfg["temperature"]
        self.batch_size, self.seed = batch_size, seed
        self.rows = np.arange(counts.n_obs)
        self.partners = partners
        self.steps, self.updates, self.changed, self.confidence = 0, 0, float("nan"), float("nan")
        self.p: np.ndarray | None = None
        self.hard: np.ndarray | None = None
        self.update_target()

    # --- target distribution -------------------------------------------------------------------------
    @torch.no_grad()
    def latent(self) -> np.ndarray:
        """Posterior means of every cell (eval mode), leaving the model in the mode it was in."""
        was_training = self.model.training
        latent = embed(self.model.vae, self.counts, self.batch_codes)
        self.model.train(was_training)
        return latent

    def soft_assignments(self) -> np.ndarray:
        with torch.no_grad():
            latent = torch.from_numpy(self.latent()).to(self.model.centres.device)
            return self.model.assign(latent).float().cpu().numpy()

    def update_target(self) -> None:
        """Recompute the target P from the current soft assignments (re-seeding emptied centres when asked)."""
        q = self.soft_assignments()
        hard = q.argmax(1)
        empty = np.flatnonzero(np.bincount(hard, minlength=q.shape[1]) == 0)
        if len(empty) and self.reseed_empty:  # move each empty centre onto one of the least confident cells
            latent = self.latent()
            uncertain = np.argsort(q.max(1))[: len(empty)]
            with torch.no_grad():
                self.model.centres[torch.from_numpy(empty)] = torch.from_numpy(latent[uncertain]).to(
                    self.model.centres.device)
            q = self.soft_assignments()
            hard = q.argmax(1)
        self.changed = 1.0 if self.hard is None else float(np.mean(hard != self.hard))
        self.p = target_distribution(torch.from_numpy(q), self.cfg["balance"]).numpy()
        self.confidence = float(q.max(1).mean())  # mean soft assignment to the chosen cluster
        self.hard = hard
        self.updates += 1

    def cluster_sizes(self) -> np.ndarray:
        return np.bincount(self.hard, minlength=self.p.shape[1])

    def collapse(self) -> dict[str, float]:
        """What the collapse guards watch: the largest cluster's share of cells and the number of empty ones."""
        sizes = self.cluster_sizes()
        return {"largest_cluster": float(sizes.max() / sizes.sum()), "empty_clusters": float((sizes == 0).sum())}

    def collapse_hint(self) -> str:
        return (f"clusters collapsed after {self.updates} target updates (cluster sizes "
                f"{self.cluster_sizes().tolist()}); lower dec.gamma or training.lr, or set dec.reseed_empty")

    def hooks(self) -> list[Hook]:
        return [Guard("largest_cluster", maximum=self.cfg["collapse_fraction"], at="step", hint=self.collapse_hint),
                Guard("empty_clusters", maximum=0.0, at="step", hint=self.collapse_hint)]

    # --- the engine's interface --------------------------------------------------------------------------
    def train_plan(self, epoch: int, rank: int, world: int) -> list[tuple[np.ndarray, np.ndarray | None]]:
        plan = epoch_plan(self.rows, self.batch_size, self.seed, epoch, rank, world, contiguous=self.counts.backed)
        return with_partners(plan, self.partners, self.seed, epoch)

    def load(self, item: tuple[np.ndarray, np.ndarray | None]) -> dict[str, torch.Tensor]:
        cells = cells_of(item)
        batch = {"x": torch.from_numpy(self.counts.rows_in_order(cells)), "p": torch.from_numpy(self.p[item[0]])}
        if self.batch_codes is not None:
            batch["batch_index"] = torch.from_numpy(self.batch_codes[cells])
        return batch

    def batch_size_of(self, batch: dict) -> int:
        return len(batch["p"])

    def term_weight(self, epoch: int) -> float:
        warmup = self.cfg["warmup_epochs"]
        return 1.0 if not warmup else min(1.0, (epoch + 1) / warmup)

    def step(self, model: torch.nn.Module, batch: dict, ctx: StepContext) -> dict[str, torch.Tensor]:
        cfg, n = self.cfg, len(batch["p"])
        out = model(batch["x"], batch.get("batch_index"))
        n_genes = batch["x"].shape[1]
        reconstruction = (out["reconstruction"] + self.beta * out["kl"]).mean() / n_genes
        clustering = dec_kl(batch["p"], out["q"][:n])
        w = self.term_weight(ctx.epoch)
        terms = {"reconstruction": reconstruction, "clustering": clustering}
        loss = cfg["reconstruction_weight"] * reconstruction + w * cfg["gamma"] * clustering
        if len(batch["x"]) > n:  # positive pairs: anchors first, partners second
            terms["contrastive"] = nt_xent(out["z"][:n], out["z"][n:], self.temperature)
            terms["consistency"] = assignment_consistency(out["q"][:n], out["q"][n:])
            loss = loss + w * (cfg["contrastive_weight"] * terms["contrastive"]
                               + cfg["consistency_weight"] * terms["consistency"])
        return {"loss": loss} | terms

    def after_optimizer_step(self, model: torch.nn.Module, ctx: StepContext, values: dict[str, float]) -> None:
        self.steps += 1
        if self.steps % self.cfg["update_interval"]:
            return
        self.update_target()
        values |= self.collapse()  # for the guards, which run after the task
        if self.updates > self.min_updates and self.changed < self.tol:
            raise TrainingFinished(f"{self.changed:.4%} of cells changed cluster between target updates "
                                   f"(< tol {self.tol:.4%})")

    def epoch_extras(self, epoch: int) -> dict[str, float]:
        sizes = self.cluster_sizes() / len(self.hard)
        return {"changed_fraction": self.changed, "target_updates": float(self.updates),
                "confidence": self.confidence,
                "largest_cluster": float(sizes.max()), "smallest_cluster": float(sizes.min()),
                "term_weight": self.term_weight(epoch)}

    def state_dict(self) -> dict:
        return {"p": self.p, "hard": self.hard, "steps": self.steps, "updates": self.updates,
                "changed": self.changed, "confidence": self.confidence}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.p, self.hard = np.asarray(state["p"]), np.asarray(state["hard"])
            self.steps, self.updates = state["steps"], state["updates"]
            self.changed, self.confidence = state["changed"], state["confidence"]


def run(request: PhaseRequest) -> Path | None:
    config, clusters_path = request.config, request.parent
    if len(request.data) > 1:
        raise UserError(f"finetune --preset dec reads at most one .h5ad; got {len(request.data)}")
    data_path = request.data[0] if request.data else None
    cfg, train_cfg = config["dec"], config["training"]
    phase = PhaseRun(config, request.output, request.resume, request.quiet)
    parent = read_bundle(clusters_path, ("cluster-search",), command="finetune --preset dec")
    label_key = VAEConfig.of(parent).data.label_key
    check_pair_config("dec", cfg, ("contrastive_weight", "consistency_weight"))
    counts, batch_codes = load_bundle_data(parent, data_path, (cfg["positive_key"],))
    if label_key not in counts.obs:  # labels are for reporting only; new data may lack them
        label_key = ""
    fingerprint = counts.fingerprint()
    phase.check_resume_data(fingerprint)
    phase.engine.launch()

    seed = train_cfg["seed"]
    torch.manual_seed(seed)
    vae = load_vae(parent)
    # neighbours in the pretrain latent the clustering starts from
    partners = positive_partners(cfg, counts, lambda: embed(vae, counts, batch_codes))
    model = DEC(vae, torch.from_numpy(parent.results["centres"]), cfg["alpha"])
    model.train()
    beta = (vae_model.beta if (vae_model := VAEConfig.of(parent).model).variational else 0.0)
    task = DECTask(model, counts, batch_codes, partners, cfg, train_cfg["batch_size"], seed, beta)
    start = task.collapse()
    if start["largest_cluster"] > cfg["collapse_fraction"] or start["empty_clusters"]:
        raise UserError(f"{clusters_path}: the starting partition already breaks the collapse guard (cluster sizes "
                        f"{task.cluster_sizes().tolist()}, dec.collapse_fraction {cfg['collapse_fraction']}); "
                        "raise dec.collapse_fraction or choose another k")

    def bundle_for(result: FitResult) -> Bundle:
        final = kept_metrics(result, "train_")
        q = task.soft_assignments()
        hard = q.argmax(1)
        sizes = np.bincount(hard, minlength=q.shape[1])
        final |= {"k": float(q.shape[1]), "largest_cluster": float(sizes.max() / len(hard)),
                  "smallest_cluster": float(sizes.min() / len(hard)), "target_updates": float(task.updates)}
        if label_key:
            final |= {f"label_{m}": v for m, v in
                      label_agreement(counts.obs[label_key].astype(str).to_numpy(), hard).items()}
        return Bundle(weights=weights_to_numpy(model),
                      model_config=parent.model_config, lineage=lineage_of(parent), data=fingerprint,
                      var_names=parent.var_names, categories=parent.categories, final_metrics=final,
                      results={"assignments": hard.astype(np.int64), "soft_assignments": q.astype(np.float32)})

    return phase.fit(task, bundle_for)
