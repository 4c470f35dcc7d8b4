"""What a pipeline declares about each of its phases, and the requests and reports that pass between the core and it.

A pipeline folder's `spec.py` builds one `PhaseSpec` per phase it runs and imports no torch: the command line
reads every spec to build `--help`. The callables in a spec import the pipeline's heavy modules only when called.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from stagekit.config.schema import Schema

if TYPE_CHECKING:
    import anndata

    from stagekit.bundle import Bundle


@dataclass
class PhaseRequest:
    """What a command hands a training phase. `options` holds the options of the phase's own spec that were
    given on the command line (e.g. saturn's protein embeddings)."""

    config: Any  # stagekit.config.Config
    output: Path
    data: list[Path] = field(default_factory=list)
    parent: Path | None = None
    resume: Path | None = None
    quiet: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    log: Callable[[str], None] = print


@dataclass
class CellsRequest:
    """Per-cell outputs of a bundle: for `extract`, and for `evaluate` of a bundle."""

    bundle: Bundle
    data: list[Path]
    options: dict[str, Any] = field(default_factory=dict)  # the spec's extract options that were given
    log: Callable[[str], None] = print


@dataclass
class ReportRequest:
    """What `evaluate` scores: a bundle, the cells `extract` wrote (.h5ad), or a folder `extract` wrote."""

    source: Path
    output_dir: Path
    bundle: Bundle | None = None
    cells: anndata.AnnData | None = None
    folder: Path | None = None
    data: Path | None = None
    options: dict[str, Any] = field(default_factory=dict)  # the spec's evaluate options that were given
    umap: bool = True
    seed: int = 0
    log: Callable[[str], None] = print


@dataclass
class Table:
    """A titled table the command line renders; numbers are shown with 4 decimals unless given as text."""

    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Report:
    """`evaluate`'s result: the metrics written to metrics.json (with the plots' paths) and tables to show."""

    metrics: dict[str, Any]
    tables: list[Table] = field(default_factory=list)


class Train(Protocol):
    def __call__(self, request: PhaseRequest) -> Path | None: ...  # None on the other processes of a DDP run


class Plan(Protocol):
    def __call__(self, request: PhaseRequest) -> None: ...  # prints what the phase would train (--print-config)


class Cells(Protocol):
    def __call__(self, request: CellsRequest) -> tuple[anndata.AnnData, dict[str, Any]]: ...  # cells, extra uns


class WriteOutputs(Protocol):
    def __call__(self, request: CellsRequest, output: Path) -> Path: ...  # extract's own outputs (e.g. a folder)


class StreamCells(Protocol):
    # extract's .h5ad written a block of cells at a time at `path` with uns["stagekit"] = provenance | the
    # pipeline's own keys; False: not for this request (extract builds it in memory through `cells`)
    def __call__(self, request: CellsRequest, path: Path, provenance: dict[str, Any]) -> bool: ...


class Companions(Protocol):
    def __call__(self, request: CellsRequest, adata: anndata.AnnData, output: Path) -> list[Path]: ...  # written


class Score(Protocol):
    def __call__(self, request: ReportRequest) -> Report: ...


class Summary(Protocol):
    def __call__(self, bundle_path: Path) -> list[Table]: ...  # tables shown after the phase's bundle is written


class RunDemo(Protocol):
    def __call__(self, output: Path, quiet: bool, log: Callable[[str], None]) -> tuple[Path, list[Table]]: ...


@dataclass(frozen=True)
class Demo:
    """A pipeline's `stagekit demo`: a short chain on data shipped with the package. `run` writes everything
    under `output` and returns the file to print (the result) and tables comparing what each phase gave."""

    pipeline: str
    help: str
    run: RunDemo


@dataclass(frozen=True)
class Option:
    """A command-line option a phase adds to a command. With `key` it sets that config key (after `--set`);
    without, its value reaches the phase in `PhaseRequest.options` (or Cells/ReportRequest.options). `implies`:
    config keys that giving the option sets too (a `--set` of another value there is an error)."""

    name: str  # the Python name, e.g. "protein_emb"
    help: str
    type: Any = str  # str, int, float, bool, Path, list[str], list[Path]
    key: str = ""
    flag: str = ""  # default: --name-with-dashes
    convert: Callable[[Any], Any] | None = None  # the typed value -> the config value (e.g. "A,B" -> ["A", "B"])
    default: Any = None
    implies: tuple[tuple[str, Any], ...] = ()

    @property
    def flags(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")


def given(values: dict[str, Any]) -> dict[str, Any]:
    """The options that were given: not None, not an unset flag (False), not an empty list (0 is a value)."""
    return {name: value for name, value in values.items()
            if value is not None and value is not False and not (isinstance(value, list | tuple) and not value)}


@dataclass(frozen=True)
class PhaseSpec:
    """One phase of a pipeline: the command and model it answers to, its config, its options and its code."""

    command: str  # what the user runs: pretrain, finetune, ...
    model: str  # the preset's [preset] model and the bundle's model
    pipeline: str  # the pipeline's name as users read it, e.g. "phenotype clustering"
    schema: Schema
    train: Train
    options: tuple[Option, ...] = ()
    plan: Plan | None = None
    cells: Cells | None = None
    write_outputs: WriteOutputs | None = None
    stream_cells: StreamCells | None = None  # a .h5ad larger than memory, written as it is computed
    companions: Companions | None = None  # files `extract` writes beside the .h5ad, from the same cells
    extract_options: tuple[Option, ...] = ()
    report: Score | None = None
    evaluate_options: tuple[Option, ...] = ()
    summary: Summary | None = None
    default_preset: str = ""  # the preset the command uses when none is named
    seed_key: str = "training.seed"  # the key --seed sets
    trains: bool = True  # False: no training loop (no device, precision or resume options)
    extract_manifest: str = ""  # the file that marks a folder `extract` wrote for this model

    def option(self, name: str) -> Option | None:
        return next((o for o in self.options if o.name == name), None)
