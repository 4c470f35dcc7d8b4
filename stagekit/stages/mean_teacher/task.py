"""Mean Teacher on cells: labelled subsets and the training task both stages share (the engine does the loop).

Each step takes `training.batch_size` cells of the training set (labelled or not: the consistency term uses
every cell) and `labelled_batch_size` labelled cells (the supervised term), redrawn from the few labelled ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from stagekit.data.anndata_io import CountMatrix
from stagekit.data.batching import epoch_plan, eval_plan
from stagekit.errors import UserError
from stagekit.losses.classification import (
    consistency_loss,
    focal_loss,
    probabilities,
    sigmoid_rampup,
    soft_dice_loss,
)
from stagekit.models.classifier import MeanTeacher, log_normalise
from stagekit.train import EMA, FreezePlan, Guard, Hook, StepContext, Task
from stagekit.train.metrics import binary_scores, class_shares


@dataclass
class Labels:
    """Targets of every cell (-1: unlabelled) and the class names; a binary task (one class against the rest,
    one sigmoid output) is [not positive, positive]."""

    codes: np.ndarray
    classes: list[str]
    positive_class: str = ""

    @property
    def binary(self) -> bool:
        return bool(self.positive_class)


def read_labels(counts: CountMatrix, label_key: str, positive_class: str) -> Labels:
    """Labels from an obs column; missing values are unlabelled cells. One line naming what is wrong otherwise."""
    if not label_key:
        raise UserError("Mean Teacher needs labels: name the obs column with --label-key")
    if label_key not in counts.obs:
        raise UserError(f"{counts.path}: obs column '{label_key}' not found (columns: "
                        f"{', '.join(map(str, list(counts.obs.columns)[:8]))})")
    column = counts.obs[label_key]
    present = column.notna().to_numpy()
    values = column.astype(str).to_numpy()
    names = sorted(set(values[present]))
    if positive_class:
        if positive_class not in names:
            raise UserError(f"{counts.path}: --positive-class '{positive_class}' is not a label of obs column "
                            f"'{label_key}' (labels: {', '.join(names)})")
        codes = np.where(values == positive_class, 1, 0)
        classes = [f"not {positive_class}", positive_class]
    else:
        if len(names) < 2:
            raise UserError(f"{counts.path}: obs column '{label_key}' has {len(names)} label(s); a classifier needs "
                            "at least two")
        codes = np.searchsorted(names, values)
        classes = names
    return Labels(np.where(present, codes, -1).astype(np.int64), classes, positive_class)


def validation_cells(labels: Labels, val_fraction: float, seed: int) -> np.ndarray:
    """Held-out labelled cells, `val_fraction` of each class (seeded), never trained on."""
    rng = np.random.default_rng([seed, 11])
    picked = []
    for c in range(len(labels.classes)):
        members = np.flatnonzero(labels.codes == c)
        n = int(round(val_fraction * len(members)))
        picked.append(rng.permutation(members)[:n])
    return np.sort(np.concatenate(picked)).astype(np.int64)


def labelled_cells(labels: Labels, validation: np.ndarray, fraction: float, seed: int, where: str,
                   base: np.ndarray | None = None) -> np.ndarray:
    """`fraction` of each class's labelled cells (validation excluded; at least one per class, so a class rarer
    than 1 / fraction still has a label), in a seeded order per class.
    `base` (stage 1's cells) is kept and topped up from the others, so stage 2's set contains stage 1's even when
    cells were labelled in between."""
    if not 0 < fraction <= 1:
        raise UserError(f"data.labelled_fraction must be in (0, 1]; got {fraction}")
    held_out = np.zeros(len(labels.codes), bool)
    held_out[validation] = True
    kept = np.zeros(len(labels.codes), bool)
    if base is not None:
        kept[base] = True
    picked = []
    for c, name in enumerate(labels.classes):
        pool = np.flatnonzero((labels.codes == c) & ~held_out)
        if not len(pool):
            raise UserError(f"{where}: class '{name}' has no labelled cell outside the validation cells; label "
                            "more cells or lower training.val_fraction")
        n = max(int(np.floor(fraction * len(pool) + 0.5)), 1)  # a rare class keeps at least one label
        order = np.random.default_rng([seed, 13, c]).permutation(pool)
        old = order[kept[order]]
        picked.append(np.concatenate([old, order[~kept[order]][: max(n - len(old), 0)]]))
    return np.sort(np.concatenate(picked)).astype(np.int64)


class MeanTeacherTask(Task):
    monitor, monitor_mode = "f1", "max"  # the teacher's F1 (binary) or macro-F1 on the validation cells

    def __init__(self, model: MeanTeacher, counts: CountMatrix, labels: Labels, train_rows: np.ndarray,
                 labelled: np.ndarray, validation: np.ndarray, cfg: dict, collapse: dict, batch_size: int,
                 seed: int, ema_updates: int = 0, trained: bool = False) -> None:
        self.model, self.counts, self.labels = model, counts, labels
        self.train_rows, self.labelled, self.validation = train_rows, labelled, validation
        self.batch_size, self.seed = batch_size, seed
        self.labelled_batch = cfg["labelled_batch_size"]
        self.noise, self.input_dropout = cfg["input_noise"], cfg["input_dropout"]
        self.consistency, self.w_max = cfg["consistency"], cfg["consistency_weight"]
        self.threshold = cfg["pseudo_label_threshold"]
        self.supervised, self.gamma = cfg["supervised"], cfg["focal_gamma"]
        self.focal_weight, self.dice_weight = cfg["focal_weight"], cfg["dice_weight"]
        self.rampup_steps = cfg["rampup_epochs"] * len(self.train_plan(0, 0, 1))
        targets = labels.codes[labelled]
        frequency = np.bincount(targets, minlength=len(labels.classes)) / len(targets)
        self.prior = float(frequency[1]) if labels.binary else float("nan")  # positive share of labelled cells
        focal_alpha = cfg["focal_alpha"]  # read on every run, though only binary tasks use a fixed one
        if labels.binary and focal_alpha > 0:
            alpha = np.array([1 - focal_alpha, focal_alpha])
        else:  # inverse frequency, normalised to mean 1
            alpha = 1.0 / np.maximum(frequency, 1e-6)
            alpha = alpha / alpha.mean()
        self.alpha = torch.tensor(alpha, dtype=torch.float32)
        self.ema = EMA(model.student, cfg["ema_decay"], teacher=model.teacher, rampup_decay=cfg["ema_decay_rampup"],
                       rampup_steps=self.rampup_steps, buffers=cfg["ema_buffers"])
        self.ema.updates = ema_updates
        self.every_steps, self.sample_size = collapse["every_steps"], collapse["sample_size"]
        self.min_fraction, self.max_drift = collapse["min_fraction"], collapse["max_drift"]
        self.max_share = collapse["max_share"]
        unlabelled = np.setdiff1d(train_rows, labelled)
        watched = np.concatenate([validation, unlabelled])
        rng = np.random.default_rng([seed, 17])
        self.watched = np.sort(rng.choice(watched, min(self.sample_size, len(watched)), replace=False))
        # the drift rule compares epoch ends; a model that starts trained (stage 2) is compared with its start too,
        # while an untrained one's first epoch is not (its predictions move from noise to the data)
        self.trained, self.last_mean_probability = trained, float("nan")

    # --- the engine's interface --------------------------------------------------------------------------------
    def freeze_plan(self) -> FreezePlan:
        return FreezePlan(frozen=("teacher",))  # the EMA hook moves it, never the optimizer

    def hooks(self) -> list[Hook]:
        points = ("epoch", "step") if self.every_steps else ("epoch",)
        hint = ("the classifier is collapsing onto one class; lower training.lr, train in two stages (pretrain at "
                "fewer labels, then finetune with a lower lr and warm-up), or loosen collapse.*")
        if self.labels.binary:  # the negatives of a rare class are most cells: only the positive share can run away
            guards = [Guard("pred_positive_fraction", minimum=self.min_fraction * self.prior, maximum=self.max_share,
                            at=points, hint=hint),
                      Guard("mean_probability_drift", maximum=self.max_drift, at=points, hint=hint)]
        else:
            guards = [Guard("largest_class_share", maximum=self.max_share, at=points, hint=hint)]
        return [self.ema, *guards]

    def train_plan(self, epoch: int, rank: int, world: int) -> list[tuple[np.ndarray, np.ndarray]]:
        plan = epoch_plan(self.train_rows, self.batch_size, self.seed, epoch, rank, world)
        rng = np.random.default_rng([self.seed, epoch, 5])
        replace = len(self.labelled) < self.labelled_batch * world
        return [(rows, np.sort(rng.choice(self.labelled, self.labelled_batch * world, replace=replace))[rank::world])
                for rows in plan]

    def val_plan(self, rank: int, world: int) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(np.array([], np.int64), rows) for rows in eval_plan(self.validation, 2048, rank, world)]

    def load(self, item: tuple[np.ndarray, np.ndarray]) -> dict[str, torch.Tensor]:
        cells, labelled = item
        rows = np.concatenate([labelled, cells])  # labelled first: the supervised term reads the first rows
        return {"x": torch.from_numpy(self.counts.rows_in_order(rows)),
                "y": torch.from_numpy(self.labels.codes[labelled])}

    def batch_size_of(self, batch: dict) -> int:
        return len(batch["x"])

    def augment(self, h: torch.Tensor) -> torch.Tensor:
        if self.input_dropout:
            h = h * (torch.rand_like(h) >= self.input_dropout)
        if self.noise:
            h = h + self.noise * torch.randn_like(h)
        return h

    def supervised_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha.to(logits.device)
        if self.supervised == "cross_entropy":
            return focal_loss(logits, y, 0.0, alpha)  # gamma 0: cross-entropy weighted by class
        return (self.focal_weight * focal_loss(logits, y, self.gamma, alpha)
                + self.dice_weight * soft_dice_loss(logits, y))

    def consistency_weight(self, step: int) -> float:
        return self.w_max * (sigmoid_rampup(step / self.rampup_steps) if self.rampup_steps else 1.0)

    def step(self, model: torch.nn.Module, batch: dict, ctx: StepContext) -> dict[str, torch.Tensor]:
        h = self.model.student.project(log_normalise(batch["x"]))  # a fixed projection, shared by both
        y = batch["y"]
        n = len(y)
        if not ctx.train:  # validation: the teacher's (and the student's) predictions of held-out labelled cells
            student, teacher = model(h, h)
            return {"loss": self.supervised_loss(teacher, y), "probability": probabilities(teacher),
                    "student_probability": probabilities(student), "target": y}
        student, teacher = model(self.augment(h), self.augment(h))
        supervised = self.supervised_loss(student[:n], y)
        consistency = consistency_loss(student, teacher, self.consistency, self.threshold)
        w = self.consistency_weight(ctx.global_step)
        return {"loss": supervised + w * consistency, "supervised": supervised, "consistency": consistency,
                "consistency_weight": torch.tensor(w)}

    def val_metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        target = outputs["target"].astype(np.int64)
        metrics = {}
        for prefix, key in (("", "probability"), ("student_", "student_probability")):
            scores = classification_scores(outputs[key], target, self.labels.binary)
            metrics |= {f"{prefix}{k}": v for k, v in scores.items()}
        return metrics

    # --- collapse watch ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def logits(self, rows: np.ndarray, teacher: bool = False) -> torch.Tensor:
        """Logits of cells (eval mode), leaving the model in the mode it was in."""
        model = self.model.teacher if teacher else self.model.student
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        out = [model(log_normalise(torch.from_numpy(self.counts.rows(chunk)).to(device))).float().cpu()
               for chunk in eval_plan(rows, 4096)]
        model.train(was_training)
        return torch.cat(out)

    def predictions(self, rows: np.ndarray, teacher: bool = False) -> np.ndarray:
        """Class probabilities of cells."""
        return probabilities(self.logits(rows, teacher)).numpy()

    def calibration(self) -> dict[str, float]:
        """The temperature that calibrates the teacher's probabilities on the validation cells (fitted on them, as
        the kept epoch was chosen on them), with the expected calibration error there before and after."""
        from stagekit.metrics.calibration import expected_calibration_error, fit_temperature, log_probabilities

        logits, target = self.logits(self.validation, teacher=True).numpy(), self.labels.codes[self.validation]
        temperature = fit_temperature(logits, target)
        return {"temperature": temperature,
                "val_ece": expected_calibration_error(np.exp(log_probabilities(logits)), target),
                "val_ece_calibrated": expected_calibration_error(np.exp(log_probabilities(logits, temperature)),
                                                                 target)}

    def collapse_stats(self) -> dict[str, float]:
        """What the collapse guards watch, from the student's predictions of validation and unlabelled cells: the
        share of predictions of each class and the largest; binary: the predicted positive fraction, the mean
        probability of the positive class and its move since the last epoch end."""
        p = self.predictions(self.watched)
        shares = class_shares(p.argmax(1), p.shape[1])
        stats = {f"share_{_safe(name)}": shares[f"share_{c}"] for c, name in enumerate(self.labels.classes)}
        stats["largest_class_share"] = shares["largest_share"]
        if self.labels.binary:
            mean = float(p[:, 1].mean())
            drift = abs(mean - self.last_mean_probability) if np.isfinite(self.last_mean_probability) else 0.0
            stats |= {"pred_positive_fraction": float((p[:, 1] >= 0.5).mean()), "watched_mean_probability": mean,
                      "mean_probability_drift": drift}
        return stats

    def on_fit_start(self, model: torch.nn.Module) -> None:
        if self.trained and self.labels.binary and not np.isfinite(self.last_mean_probability):
            self.last_mean_probability = self.collapse_stats()["watched_mean_probability"]

    def after_optimizer_step(self, model: torch.nn.Module, ctx: StepContext, values: dict[str, float]) -> None:
        if self.every_steps and (ctx.global_step + 1) % self.every_steps == 0:
            values |= self.collapse_stats()

    def on_epoch_end(self, model: torch.nn.Module, ctx: StepContext, row: dict[str, float]) -> None:
        stats = self.collapse_stats()
        row |= stats
        self.last_mean_probability = stats.get("watched_mean_probability", float("nan"))

    def state_dict(self) -> dict:
        return {"last_mean_probability": self.last_mean_probability}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.last_mean_probability = float(state["last_mean_probability"])


def _safe(name: str) -> str:
    """A class name as part of a history key (an HDF5 dataset name)."""
    return "".join(ch if ch.isalnum() else "_" for ch in name)


def classification_scores(probability: np.ndarray, target: np.ndarray, binary: bool) -> dict[str, float]:
    """Binary: F1, precision, recall, AUROC, predicted-positive share, mean probability of the positive class;
    multi-class: macro-F1 ("f1"), accuracy and the largest predicted share."""
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

    predicted = probability.argmax(1)
    if binary:
        scores = binary_scores(probability[:, 1], target)
        return scores | {"precision": float(precision_score(target, predicted, zero_division=0.0)),
                         "recall": float(recall_score(target, predicted, zero_division=0.0))}
    return {"f1": float(f1_score(target, predicted, average="macro", labels=range(probability.shape[1]),
                                 zero_division=0.0)),
            "accuracy": float(accuracy_score(target, predicted)),
            "largest_share": class_shares(predicted, probability.shape[1])["largest_share"]}
