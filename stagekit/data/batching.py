"""Mini-batch plans: which rows each step reads. Plans are cheap index arrays, so resume can skip steps."""

from __future__ import annotations

import numpy as np

from stagekit.errors import UserError

MIN_TRAINING_CELLS = 2


def split_train_val(n_obs: int, val_fraction: float, seed: int, where: str = "the data"
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (training, validation) row indices; at least one validation cell when `val_fraction` > 0."""
    order = np.random.default_rng([seed, 7]).permutation(n_obs)
    n_val = int(round(n_obs * val_fraction))
    if val_fraction > 0 and n_val == 0:
        n_val = 1
    if n_obs - n_val < MIN_TRAINING_CELLS:
        raise UserError(f"{where} has {n_obs} cell{'s' if n_obs != 1 else ''}: too few to train (at least "
                        f"{MIN_TRAINING_CELLS} training cells are needed after {n_val} are held out for validation "
                        "by training.val_fraction)")
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def epoch_plan(indices: np.ndarray, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1,
               contiguous: bool = False) -> list[np.ndarray]:
    """Sorted row indices for each step of one epoch, this process's share of each global batch.

    Shuffling is a function of (seed, epoch) only, so an interrupted epoch replays identically.
    `contiguous` shuffles the order of blocks of consecutive rows instead of rows (one disk read a step).
    """
    rng = np.random.default_rng([seed, epoch])
    if contiguous:
        blocks = [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
        batches = [blocks[i] for i in rng.permutation(len(blocks))]
    else:
        order = indices[rng.permutation(len(indices))]
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    # every process must take the same number of steps, each with at least one row
    batches = [b for b in batches if len(b) >= world]
    return [np.sort(b[rank::world]) for b in batches]


def eval_plan(indices: np.ndarray, batch_size: int, rank: int = 0, world: int = 1) -> list[np.ndarray]:
    share = indices[rank::world]
    return [share[i:i + batch_size] for i in range(0, len(share), batch_size)]
