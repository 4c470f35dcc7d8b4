"""Losses for cell classification with few labels: focal loss, soft Dice, and Mean Teacher consistency.

Binary tasks use one logit (sigmoid), multi-class tasks one logit per class (softmax); `probabilities` turns
either into per-class probabilities so the other functions need not care which it is.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """(cells, classes) probabilities: softmax, or [1 - p, p] for a single binary logit."""
    if logits.shape[-1] == 1:
        p = torch.sigmoid(logits)
        return torch.cat([1 - p, p], dim=-1)
    return torch.softmax(logits, dim=-1)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0,
               alpha: torch.Tensor | None = None) -> torch.Tensor:
    """Lin et al. 2017: -alpha_y (1 - p_y)^gamma log p_y, averaged over cells. `alpha` weighs each class
    (for a binary task: [weight of negatives, weight of positives])."""
    if logits.shape[-1] == 1:
        log_p = torch.cat([F.logsigmoid(-logits), F.logsigmoid(logits)], dim=-1)
    else:
        log_p = torch.log_softmax(logits, dim=-1)
    log_p_y = log_p.gather(1, target[:, None]).squeeze(1)
    loss = -((1 - log_p_y.exp()) ** gamma) * log_p_y
    if alpha is not None:
        loss = loss * alpha[target]
    return loss.mean()


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - mean over classes of the soft Dice coefficient 2|P.Y| / (|P| + |Y|) (binary: of the positive class),
    smoothed by `eps` so a class absent from the batch does not divide by zero."""
    p = probabilities(logits)
    y = F.one_hot(target, p.shape[-1]).to(p.dtype)
    if logits.shape[-1] == 1:
        p, y = p[:, 1:], y[:, 1:]
    dice = (2 * (p * y).sum(0) + eps) / (p.sum(0) + y.sum(0) + eps)
    return 1 - dice.mean()


def consistency_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str = "mse",
                     threshold: float = 0.9) -> torch.Tensor:
    """Mean Teacher's consistency between student and (detached) teacher predictions: squared difference of
    the class probabilities (Tarvainen & Valpola), KL(teacher || student), or pseudo_label: cross-entropy of the
    student on the teacher's class where the teacher gives it at least `threshold` (FixMatch's confidence mask;
    averaged over every cell, so the term grows as the teacher grows sure)."""
    teacher = probabilities(teacher_logits.detach())
    if kind == "mse":
        return ((probabilities(student_logits) - teacher) ** 2).sum(-1).mean()
    log_student = torch.log(probabilities(student_logits).clamp_min(1e-8))
    if kind == "pseudo_label":
        confidence, target = teacher.max(-1)
        picked = log_student.gather(-1, target[:, None]).squeeze(-1)
        return -(picked * (confidence >= threshold)).mean()
    return (teacher * (torch.log(teacher.clamp_min(1e-8)) - log_student)).sum(-1).mean()


def sigmoid_rampup(progress: float) -> float:
    """exp(-5 (1 - t)^2) for t in [0, 1] (Laine & Aila), 1 after."""
    t = min(max(progress, 0.0), 1.0)
    return float(torch.exp(torch.tensor(-5.0 * (1.0 - t) ** 2)))
