"""Write and read `.stk` bundles.

Layout (see `h5ls -r file.stk`):
  /                 attrs: format, format_version, stage, model, status, seed, created, wall_time_s, device,
                           epochs_done, argv (JSON)
  /config           effective configuration, TOML text
  /model_config     what rebuilding the weights needs (architecture, data keys), TOML text; copied by descendants
  /lineage          JSON list of ancestors, parent first: {sha256, stage, model, path, created}
  /versions         attrs: stagekit, python, torch, anndata, scvi-tools, ...
  /data             attrs: path, sha256, n_obs, n_vars, genes_sha256; datasets var_names, obs_names?
  /categories/NAME  category names of an obs column (species, batch, labels), in code order
  /metrics/history/NAME  one value per epoch;  /metrics/final  attrs
  /weights/NAME     model tensors; attrs sha256 over all of them
  /results/NAME     other arrays a phase produces (cluster centres, score tables, ...)
  /resume/...       optimizer, scheduler, RNG and loop state for exact resume; attrs sha256
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from stagekit.bundle.tree import read_tree, write_tree
from stagekit.errors import UserError

FORMAT = "stagekit-bundle"
FORMAT_VERSION = 1


@dataclass
class Bundle:
    stage: str
    model: str
    config_toml: str
    seed: int
    weights: dict[str, np.ndarray]
    model_config: str = ""
    status: str = "complete"  # complete | checkpoint | interrupted | stopped
    epochs_done: int = 0
    lineage: list[dict[str, str]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    var_names: list[str] = field(default_factory=list)
    categories: dict[str, list[str]] = field(default_factory=dict)
    history: dict[str, list[float]] = field(default_factory=dict)
    final_metrics: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    results: dict[str, np.ndarray] = field(default_factory=dict)
    resume: dict | None = None
    wall_time_s: float = 0.0
    device: str = ""
    argv: list[str] = field(default_factory=list)
    created: str = ""
    path: str = ""


def arrays_sha256(arrays: dict[str, np.ndarray]) -> str:
    """Checksum over names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _str_dataset(group: h5py.Group, name: str, values: list[str]) -> None:
    group.create_dataset(name, data=np.array(values, dtype=object), dtype=h5py.string_dtype())


@contextlib.contextmanager
def atomic_output(path: str | Path):
    """Yield a temp path in the same folder; on success fsync and rename it over `path`, else remove it.

    An existing file at `path` is never half-overwritten."""
    path = Path(path)
    if path.exists() and path.is_dir():
        raise UserError(f"output {path} is a folder; give a file name such as {path / ('out' + path.suffix)}")
    if not path.parent.exists():
        raise UserError(f"output folder {path.parent} does not exist; create it first")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        with contextlib.suppress(OSError):  # not every filesystem can fsync a folder
            dir_fd = os.open(path.parent, os.O_RDONLY)
            os.fsync(dir_fd)
            os.close(dir_fd)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bundle(bundle: Bundle, path: str | Path) -> Path:
    """Write atomically: a temp file in the same folder, fsync, rename. An existing file survives errors."""
    with atomic_output(path) as tmp, h5py.File(tmp, "w") as f:
        _fill(f, bundle)
    return Path(path)


def _fill(f: h5py.File, b: Bundle) -> None:
    f.attrs.update({"format": FORMAT, "format_version": FORMAT_VERSION, "stage": b.stage, "model": b.model,
                    "status": b.status, "seed": b.seed, "epochs_done": b.epochs_done,
                    "created": b.created or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "wall_time_s": b.wall_time_s, "device": b.device, "argv": json.dumps(b.argv)})
    f.create_dataset("config", data=b.config_toml, dtype=h5py.string_dtype())
    f.create_dataset("model_config", data=b.model_config, dtype=h5py.string_dtype())
    f.create_dataset("lineage", data=json.dumps(b.lineage), dtype=h5py.string_dtype())
    f.create_group("versions").attrs.update(b.versions)
    data = f.create_group("data")
    data.attrs.update({k: v for k, v in b.data.items() if v is not None})
    _str_dataset(data, "var_names", list(b.var_names))
    categories = f.create_group("categories")
    for name, values in b.categories.items():
        _str_dataset(categories, name, list(values))
    history = f.create_group("metrics/history")
    for name, values in b.history.items():
        history.create_dataset(name, data=np.asarray(values, dtype=np.float64))
    f.create_group("metrics/final").attrs.update({k: float(v) for k, v in b.final_metrics.items()})
    weights = f.create_group("weights")
    for name, array in b.weights.items():
        weights.create_dataset(name, data=array)
    weights.attrs["sha256"] = arrays_sha256(b.weights)
    results = f.create_group("results")
    for name, array in b.results.items():
        results.create_dataset(name, data=array)
    if b.resume is not None:
        resume = f.create_group("resume")
        write_tree(resume, b.resume)
        resume.attrs["sha256"] = _tree_sha256(resume)


def _tree_sha256(group: h5py.Group) -> str:
    arrays: dict[str, np.ndarray] = {}
    group.visititems(lambda name, node: arrays.__setitem__(name, np.asarray(node[()]))
                     if isinstance(node, h5py.Dataset) else None)
    return arrays_sha256({k: v if v.dtype != object else v.astype(str) for k, v in arrays.items()})


def _open(path: str | Path) -> h5py.File:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"bundle {path} does not exist")
    try:
        f = h5py.File(path, "r")
    except OSError:
        raise UserError(f"{path} is not a stagekit bundle (not an HDF5 file)") from None
    if f.attrs.get("format") != FORMAT:
        f.close()
        raise UserError(f"{path} is an HDF5 file but not a stagekit bundle")
    version = int(f.attrs["format_version"])
    if version > FORMAT_VERSION:
        f.close()
        raise UserError(f"{path} uses bundle format {version}, newer than this stagekit reads "
                        f"({FORMAT_VERSION}); upgrade stagekit")
    return f


def read_bundle(path: str | Path, expect_stage: tuple[str, ...] | None = None, command: str = "",
                weights: bool = True, resume: bool = False) -> Bundle:
    """Read a bundle; checks format, stage and (when loading them) the weight checksum."""
    with _open(path) as f:
        stage = str(f.attrs["stage"])
        if expect_stage and stage not in expect_stage:
            wanted = " or ".join(f"'{s}'" for s in expect_stage)
            raise UserError(f"{path} is a '{stage}' bundle; `stagekit {command}` needs a {wanted} bundle")
        b = Bundle(stage=stage, model=str(f.attrs["model"]), config_toml=f["config"][()].decode(),
                   seed=int(f.attrs["seed"]), weights={}, model_config=f["model_config"][()].decode(),
                   status=str(f.attrs["status"]),
                   epochs_done=int(f.attrs["epochs_done"]), lineage=json.loads(f["lineage"][()].decode()),
                   data={k: _plain(v) for k, v in f["data"].attrs.items()},
                   var_names=[v.decode() for v in f["data/var_names"][()]],
                   categories={k: [v.decode() for v in d[()]] for k, d in f["categories"].items()},
                   history={k: d[()].tolist() for k, d in f["metrics/history"].items()},
                   final_metrics={k: float(v) for k, v in f["metrics/final"].attrs.items()},
                   versions={k: str(v) for k, v in f["versions"].attrs.items()},
                   results={k: d[()] for k, d in f["results"].items()},
                   wall_time_s=float(f.attrs["wall_time_s"]), device=str(f.attrs["device"]),
                   argv=json.loads(f.attrs["argv"]), created=str(f.attrs["created"]), path=str(path))
        if weights:
            b.weights = {k: d[()] for k, d in f["weights"].items()}
            if arrays_sha256(b.weights) != f["weights"].attrs["sha256"]:
                raise UserError(f"{path}: weights are corrupted (checksum mismatch); re-run the phase "
                                "that wrote this bundle")
        if resume:
            if "resume" not in f:
                raise UserError(f"{path} holds no resume state; it was written by a finished run "
                                "without `--resume` support")
            if _tree_sha256(f["resume"]) != f["resume"].attrs["sha256"]:
                raise UserError(f"{path}: resume state is corrupted (checksum mismatch)")
            b.resume = read_tree(f["resume"])
    return b


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def verify_bundle(path: str | Path) -> list[str]:
    """Recompute every checksum; return a list of problems (empty when the bundle is intact)."""
    problems = []
    with _open(path) as f:
        try:
            weights = {k: d[()] for k, d in f["weights"].items()}
            if arrays_sha256(weights) != f["weights"].attrs["sha256"]:
                problems.append("weights: checksum mismatch")
        except (OSError, KeyError) as exc:
            problems.append(f"weights: unreadable ({exc})")
        if "resume" in f:
            try:
                if _tree_sha256(f["resume"]) != f["resume"].attrs["sha256"]:
                    problems.append("resume state: checksum mismatch")
            except (OSError, KeyError) as exc:
                problems.append(f"resume state: unreadable ({exc})")
    return problems
