"""What every training phase does around the engine: check the output, resume, write bundles."""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stagekit.bundle import Bundle, ensure_writable_folder, file_sha256, read_bundle, write_bundle
from stagekit.config import Config
from stagekit.errors import Interrupted, UserError
from stagekit.train import Engine, FitResult, RunSettings, Task
from stagekit.train.progress import ProgressReporter
from stagekit.train.signals import Signals
from stagekit.train.state import TENSOR_TAG, from_storable

if TYPE_CHECKING:
    from stagekit.data.anndata_io import CountMatrix


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("stagekit", "torch", "anndata", "scvi-tools", "lightning", "torch-geometric", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def partial_path(output: Path) -> Path:
    """Checkpoints and interrupted runs go beside the output, never over it."""
    return output.with_name(output.name + ".partial")


def check_output(output: Path) -> None:
    if output.is_dir():
        raise UserError(f"output {output} is a folder; give a file name such as {output / 'out.stk'}")
    if not output.parent.exists():
        raise UserError(f"output folder {output.parent} does not exist; create it first")
    ensure_writable_folder(output.parent)  # before training, not after it


def bundle_data_path(bundle: Bundle, data_path: Path | None) -> Path:
    """`data_path`, or the file the bundle was trained on when it still exists."""
    path = Path(data_path) if data_path else Path(bundle.data.get("path", ""))
    if data_path is None and not path.is_file():
        raise UserError(f"{bundle.path} was trained on {path}, which is gone; give the data file explicitly")
    return path


def check_same_genes(var_names: list[str], bundle: Bundle, where: str | Path) -> None:
    """The data's genes are the bundle's, in the same order (the model reads them by position)."""
    if var_names != bundle.var_names:
        present = set(var_names)
        missing = [g for g in bundle.var_names if g not in present][:3]
        if missing:
            detail = f"missing e.g. {', '.join(missing)}"
        elif len(var_names) > len(bundle.var_names):
            detail = f"it reads {len(bundle.var_names)} of these {len(var_names)} genes"
        else:
            detail = "same genes in another order"
        raise UserError(f"{where}: genes differ from those {bundle.path} was trained on ({detail}); "
                        "subset or reorder var to the bundle's genes")


def select_bundle_genes(counts: CountMatrix, bundle: Bundle, where: str | Path) -> CountMatrix:
    """The bundle's genes taken from `counts` by name, in the bundle's order (a model trained on a gene
    selection reads the file it was selected from); an error naming missing genes."""
    if counts.var_names == bundle.var_names:
        return counts
    position = {name: i for i, name in reversed(list(enumerate(counts.var_names)))}  # the first of duplicates
    if any(name not in position for name in bundle.var_names):
        check_same_genes(counts.var_names, bundle, where)
    return counts.select_genes(np.array([position[name] for name in bundle.var_names]))


def lineage_of(parent: Bundle) -> list[dict]:
    entry = {"sha256": file_sha256(parent.path), "stage": parent.stage, "model": parent.model,
             "path": str(Path(parent.path).resolve()), "created": parent.created}
    return [entry, *parent.lineage]


def kept_metrics(result: FitResult, prefixes: str | tuple[str, ...]) -> dict[str, float]:
    """The history row of the state the run kept (the best epoch when a metric is monitored, else the last)."""
    return {k: v for k, v in result.final_metrics.items() if k.startswith(prefixes)}


def stamp(bundle: Bundle, config: Config, seed: int, started: float, device: str, status: str = "complete",
          epochs_done: int = 0) -> Bundle:
    """Fill in what every bundle records about the run that wrote it."""
    bundle.stage, bundle.model = config.stage, config.model
    bundle.config_toml, bundle.seed = config.to_toml(), seed
    bundle.status, bundle.epochs_done = status, epochs_done
    bundle.versions, bundle.device, bundle.argv = package_versions(), device, list(sys.argv)
    bundle.wall_time_s = time.time() - started
    return bundle


_WEIGHTS_REF = "__weights__"  # a resume-state tensor equal to /weights/NAME, stored once


def _referenced(tensors: dict, weights: dict[str, np.ndarray]) -> dict:
    def same(name: str, tensor: dict) -> bool:
        return (name in weights and tensor[TENSOR_TAG].dtype == weights[name].dtype
                and np.array_equal(tensor[TENSOR_TAG], weights[name]))

    return {name: {_WEIGHTS_REF: name, "dtype": t["dtype"]} if same(name, t) else t for name, t in tensors.items()}


def _resolved(tensors: dict, weights: dict[str, np.ndarray]) -> dict:
    return {name: {TENSOR_TAG: weights[t[_WEIGHTS_REF]], "dtype": t["dtype"]} if _WEIGHTS_REF in t else t
            for name, t in tensors.items()}


def _map_states(state: dict, weights: dict[str, np.ndarray], convert: Callable) -> dict:
    """The resume state's model and kept top-k states passed through `convert`."""
    loop = state["loop"] | {"top_k": [entry | {"weights": convert(entry["weights"], weights)}
                                      for entry in state["loop"].get("top_k", [])]}
    return state | {"model": convert(state["model"], weights), "loop": loop}


def weights_by_reference(state: dict, weights: dict[str, np.ndarray]) -> dict:
    """The resume state with each model tensor (of the last state and of the kept top-k states) that equals the
    bundle's weight of the same name replaced by a reference to it: no second copy of the weights."""
    return _map_states(state, weights, _referenced)


def weights_resolved(state: dict, weights: dict[str, np.ndarray]) -> dict:
    """The resume state with references to the weights replaced by them again."""
    return _map_states(state, weights, _resolved)


def hyperparameters(config: Config) -> dict[str, Any]:
    """The effective config as the live logs record it: section.key -> value (lists as text)."""
    return {"command": config.stage, "model": config.model} | {
        f"{section}.{key}": str(value) if isinstance(value, list) else value
        for section, keys in config.values.items() for key, value in dict.items(keys)}


class PhaseRun:
    """One run of a training phase: builds the engine from the config and owns the output file."""

    def __init__(self, config: Config, output: Path, resume: Path | None = None, quiet: bool = False) -> None:
        check_output(output)
        self.config, self.output, self.started = config, output, time.time()
        self.resume_bundle = (read_bundle(resume, (config.stage,), command=config.stage, resume=True)
                              if resume else None)
        if self.resume_bundle is not None:
            self.resume_bundle.resume = weights_resolved(self.resume_bundle.resume, self.resume_bundle.weights)
        self.settings = RunSettings.from_config(config["training"], config["runtime"])
        if self.settings.logger and not self.settings.log_dir:
            self.settings.log_dir = str(output.with_name(output.stem + ".logs"))
        self.engine = Engine(self.settings, ProgressReporter(quiet=quiet), on_checkpoint=self._checkpoint,
                             spill_dir=output.resolve().parent, hyperparameters=hyperparameters(config))
        self._bundle_for: Callable[[FitResult], Bundle] | None = None

    def check_resume_data(self, fingerprint: dict) -> None:
        if self.resume_bundle and self.resume_bundle.data.get("sha256") != fingerprint["sha256"]:
            raise UserError(f"{fingerprint['path']} is not the data {self.resume_bundle.path} was trained on "
                            f"({self.resume_bundle.data.get('path')}); resume with the same file")

    def _complete(self, bundle: Bundle, result: FitResult, status: str) -> Bundle:
        bundle.history = result.history
        keep = status != "complete" or self.settings.keep_resume
        bundle.resume = weights_by_reference(result.resume_state, bundle.weights) if keep else None
        bundle.records["phases"] = result.phases
        bundle.top_k = [state | {"weights": {k: v.numpy() for k, v in from_storable(state["weights"]).items()}}
                        for state in result.top_k]
        return stamp(bundle, self.config, self.settings.seed, self.started, result.device, status,
                     result.epochs_done)

    def _checkpoint(self, result: FitResult) -> None:
        if result.is_global_zero and self._bundle_for is not None:
            write_bundle(self._complete(self._bundle_for(result), result, "checkpoint"),
                         partial_path(self.output))

    def fit(self, task: Task, bundle_for: Callable[[FitResult], Bundle]) -> Path | None:
        """Train; write the bundle (rank 0) on success, or a resumable `.partial` on interrupt/failure.

        Returns the written path on the main process, None on the other processes of a distributed run.
        """
        self._bundle_for = bundle_for
        partial = partial_path(self.output)
        # a signal that lands after the engine's last check, or while the bundle is written, waits for the write
        with Signals() as signals:
            result = self.engine.fit(task, self.resume_bundle.resume if self.resume_bundle else None)
            if not result.is_global_zero:
                return None
            status = result.status
            write_bundle(self._complete(bundle_for(result), result, status),
                         self.output if status == "complete" else partial)
            if status == "complete":
                partial.unlink(missing_ok=True)
        if status == "complete":
            if signals.received:
                raise Interrupted(f"{signals.received} arrived as the run ended; the final bundle was written "
                                  f"and {self.output} is complete")
            return self.output
        hint = f"continue with `stagekit {self.config.stage} ... --resume {partial}`"
        if status == "interrupted":
            raise Interrupted(f"interrupted ({result.message}); {hint}")
        raise UserError(f"{result.message}; the last good state is in {partial}")
