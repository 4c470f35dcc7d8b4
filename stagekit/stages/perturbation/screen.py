"""A perturbation screen as the transition model sees it: perturbation, context and batch codes of every cell and
the split (train / val / test / excluded) a user states with flags or a cell-load TOML.

Held-out cells never reach training: whole groups go to test when their context or perturbation is held out
(zero-shot), and `test_fraction` of every other group (controls included) is held out at random (seeded).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from stagekit import toml_text
from stagekit.data.cell_sets import grouped_rows
from stagekit.errors import UserError

EXCLUDED, TRAIN, VAL, TEST = -1, 0, 1, 2
ONE_CONTEXT = "all"


@dataclass
class Screen:
    pert: np.ndarray  # code into `perts` per cell; -1 for excluded cells
    perts: list[str]
    control: int
    context: np.ndarray
    contexts: list[str]
    batch: np.ndarray | None
    batches: list[str]
    split: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))

    def rows(self, *splits: int) -> np.ndarray:
        return np.flatnonzero(np.isin(self.split, splits))

    def held_out_groups(self) -> list[tuple[int, int]]:
        """(perturbation, context) groups with test cells, controls excluded."""
        test = self.rows(TEST)
        test = test[self.pert[test] != self.control]
        return sorted(set(zip(self.pert[test].tolist(), self.context[test].tolist(), strict=True)))


@dataclass
class SplitRequest:
    test_fraction: float
    val_fraction: float
    holdout_contexts: list[str]
    holdout_perts: list[str]
    has_features: bool
    split_toml: Path | None = None
    seed: int = 0
    files: list[Path] = field(default_factory=list)  # the input files, in order (cell-load dataset names)
    file_of_cell: np.ndarray | None = None  # index into `files` per cell


def _codes(values: np.ndarray) -> tuple[np.ndarray, list[str]]:
    names = sorted(set(values.tolist()))
    return np.searchsorted(names, values).astype(np.int64), names


def _column(obs: pd.DataFrame, key: str, flag: str, where: str | Path) -> np.ndarray:
    if key not in obs.columns:
        raise UserError(f"{where}: obs column '{key}' ({flag}) not found (columns: "
                        f"{', '.join(map(str, list(obs.columns)[:10]))})")
    column = obs[key]
    if column.isna().any():
        raise UserError(f"{where}: obs column '{key}' has {int(column.isna().sum())} missing values; fill them or "
                        "drop those cells")
    return column.astype(str).to_numpy()


def read_screen(obs: pd.DataFrame, where: str | Path, pert_key: str, control: str, context_key: str, batch_key: str,
                exclude: list[str]) -> Screen:
    """Codes of every cell; excluded labels get code -1. One line naming the column or value on bad input."""
    if not pert_key:
        raise UserError("name the obs column of the perturbation with --pert-key")
    if not control:
        raise UserError("name the control label with --control")
    pert_values = _column(obs, pert_key, "--pert-key", where)
    present = sorted(set(pert_values.tolist()))
    for value in exclude:
        if value not in present:
            raise UserError(f"{where}: --exclude '{value}' is not a value of obs column '{pert_key}'")
        if value == control:
            raise UserError(f"--exclude '{value}' is the control label; the model needs the control cells")
    if control not in present:
        shown = ", ".join(present[:12]) + (" ..." if len(present) > 12 else "")
        raise UserError(f"{where}: control label '{control}' not in obs column '{pert_key}' (values: {shown})")
    kept = ~np.isin(pert_values, exclude)
    codes, perts = _codes(pert_values[kept])
    pert = np.full(len(obs), -1, np.int64)
    pert[kept] = codes
    context_values = (_column(obs, context_key, "--context-key", where) if context_key
                      else np.full(len(obs), ONE_CONTEXT, object))
    context, contexts = _codes(np.asarray(context_values, dtype=str))
    batch, batches = (_codes(_column(obs, batch_key, "--batch-key", where)) if batch_key else (None, []))
    if len(set(pert[kept].tolist())) < 2:
        raise UserError(f"{where}: obs column '{pert_key}' has no perturbed cells besides the controls")
    return Screen(pert, perts, perts.index(control), context, contexts, batch, batches)


def _dataset_files(spec: dict, path: Path, files: list[Path]) -> dict[str, list[int]]:
    """Which input files each cell-load dataset name stands for: a file's stem, or a [datasets] entry whose path is
    the file or a folder holding it (cell-load points a dataset at a folder of .h5 files)."""
    listed = spec.get("datasets", {})
    if not isinstance(listed, dict) or not all(isinstance(v, str) for v in listed.values()):
        raise UserError(f"{path}: [datasets] must map names to paths (see the cell-load format)")
    names: dict[str, list[int]] = {}
    for i, file in enumerate(files):
        names.setdefault(file.stem, []).append(i)
        for name, target in listed.items():
            where = Path(target).expanduser()
            where = (where if where.is_absolute() else Path(path).parent / where).resolve()  # as cell-load reads it
            if where in (file.resolve(), file.resolve().parent) and i not in names.setdefault(name, []):
                names[name].append(i)
    return names


def split_toml_roles(path: Path, screen: Screen, files: list[Path], file_of_cell: np.ndarray) -> np.ndarray:
    """A cell-load data TOML ([datasets], [training], [zeroshot] "dataset.context" = "test"|"val",
    [fewshot."dataset.context"] val/test = [perturbations]) as the role (TEST, VAL or -1) it gives each cell.
    A dataset is one of the input files (see `_dataset_files`); with one file, any dataset name stands for it."""
    spec = toml_text.read(path)
    unknown = sorted(set(spec) - {"datasets", "training", "zeroshot", "fewshot"})
    if unknown:
        raise UserError(f"{path}: unknown section [{unknown[0]}] (a cell-load TOML has [datasets], [training], "
                        "[zeroshot], [fewshot])")
    dataset_files = _dataset_files(spec, path, files)

    def cells_of(name: str) -> np.ndarray:
        """Cells of "dataset.context" (a bare name is a context of every file)."""
        dataset, context = name.split(".", 1) if "." in name else ("", name)
        if context not in screen.contexts:
            raise UserError(f"{path}: context '{context}' (from \"{name}\") is not a value of the context column "
                            f"(values: {', '.join(screen.contexts[:10])})")
        in_context = screen.context == screen.contexts.index(context)
        if not dataset or len(files) == 1:
            return in_context
        if dataset not in dataset_files:
            raise UserError(f"{path}: dataset '{dataset}' (from \"{name}\") is none of the input files; name "
                            f"datasets by file stem ({', '.join(f.stem for f in files)}) or map them in [datasets]")
        return in_context & np.isin(file_of_cell, dataset_files[dataset])

    zeroshot, fewshot = spec.get("zeroshot", {}), spec.get("fewshot", {})
    if not isinstance(zeroshot, dict) or not isinstance(fewshot, dict):
        raise UserError(f"{path}: [zeroshot] and [fewshot] must be tables (see the cell-load format)")
    roles = np.full(len(screen.pert), -1, np.int8)
    for name, role in zeroshot.items():
        if role not in ("test", "val"):
            raise UserError(f"{path}: [zeroshot] \"{name}\" = \"{role}\": use \"test\" or \"val\"")
        cells = cells_of(name)
        roles[cells] = np.maximum(roles[cells], TEST if role == "test" else VAL)
    for name, lists in fewshot.items():
        cells = cells_of(name)
        if not isinstance(lists, dict):
            raise UserError(f"{path}: [fewshot.\"{name}\"] must be a table with val = [...] and test = [...]")
        for role in ("val", "test"):  # test wins where a perturbation is in both
            perts = lists.get(role, [])
            if not isinstance(perts, list) or not all(isinstance(p, str) for p in perts):
                raise UserError(f"{path}: [fewshot.\"{name}\"] {role} must be a list of perturbation names")
            for pert in perts:
                if pert not in screen.perts:
                    raise UserError(f"{path}: [fewshot.\"{name}\"] {role} perturbation '{pert}' is not in the data")
                hit = cells & (screen.pert == screen.perts.index(pert))
                roles[hit] = np.maximum(roles[hit], TEST if role == "test" else VAL)
    return roles


def assign_split(screen: Screen, request: SplitRequest, where: str | Path) -> np.ndarray:
    """The split of every cell (see the module docstring); checks every held-out name exists."""
    for context in request.holdout_contexts:
        if context not in screen.contexts:
            raise UserError(f"--holdout-contexts '{context}' is not a context of {where} (contexts: "
                            f"{', '.join(screen.contexts[:10])})")
    for pert in request.holdout_perts:
        if pert not in screen.perts or pert == screen.perts[screen.control]:
            raise UserError(f"--holdout-perts '{pert}' is not a perturbation of {where}")
    if request.holdout_perts and not request.has_features:
        raise UserError("--holdout-perts needs --pert-features (a one-hot model cannot predict a perturbation it "
                        "never saw); without features hold out cells with --test-fraction, or teach new "
                        "perturbations from a few cells with `stagekit finetune`")
    if request.holdout_contexts and set(request.holdout_contexts) >= set(screen.contexts):
        raise UserError("every context is held out; keep at least one context's perturbed cells for training")
    # the role a user stated for a perturbed cell (controls are inputs, never held out whole)
    stated = np.full(len(screen.pert), -1, np.int8)
    if request.split_toml:
        files = request.files or [Path(where)]
        file_of_cell = request.file_of_cell if request.file_of_cell is not None else np.zeros(len(stated), int)
        stated = split_toml_roles(request.split_toml, screen, files, file_of_cell)
    stated[np.isin(screen.context, [screen.contexts.index(c) for c in request.holdout_contexts])] = TEST
    stated[np.isin(screen.pert, [screen.perts.index(p) for p in request.holdout_perts])] = TEST
    stated[(screen.pert == screen.control) | (screen.pert < 0)] = -1
    split = np.full(len(screen.pert), TRAIN, np.int8)
    split[screen.pert < 0] = EXCLUDED
    rng = np.random.default_rng([request.seed, 31])
    kept = np.flatnonzero(split != EXCLUDED)
    for (p, c), members in grouped_rows(kept, screen.pert, screen.context):
        if len(members) < 2:
            raise UserError(f"{where}: perturbation '{screen.perts[p]}' in context '{screen.contexts[c]}' has "
                            f"{len(members)} cell; a cell set needs at least 2 (leave it out with --exclude)")
        split[members] = np.where(stated[members] >= 0, stated[members], TRAIN)
        order = rng.permutation(members[stated[members] < 0])  # test, then val cells of the rest of the group
        n_test = int(round(request.test_fraction * len(order)))
        n_val = int(round(request.val_fraction * (len(order) - n_test)))
        split[order[:n_test]] = TEST
        split[order[n_test:n_test + n_val]] = VAL
    train = split == TRAIN
    unseen = [screen.perts[p] for p in sorted(set(screen.pert[(split == TEST) | (split == VAL)].tolist()) - set(
        screen.pert[train].tolist()))]
    if unseen and not request.has_features:
        raise UserError(f"perturbation '{unseen[0]}' has no training cell in any context; a one-hot model cannot "
                        "predict it: give --pert-features, or teach it from a few cells with `stagekit finetune`")
    if not (train & (screen.pert != screen.control) & (screen.pert >= 0)).any():
        raise UserError("no perturbed cell is left for training; hold out less")
    return split
