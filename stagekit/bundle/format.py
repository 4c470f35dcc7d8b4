"""Write and read `.stk` bundles: one HDF5 file per phase (format "stagekit-bundle", version FORMAT_VERSION).

docs/bundle-format.md describes every group, dataset and attribute; in short:
  /                         attrs: format, format_version, stage, model, status, seed, epochs_done, created,
                            wall_time_s, device, argv (JSON)
  /config, /model_config    TOML text: the effective configuration; what rebuilding the weights needs
  /lineage, /records        JSON: the ancestors, parent first; what the run reports of itself (optional)
  /versions, /data          attrs: package versions; the data fingerprint, with dataset /data/var_names
  /categories/NAME, /metrics/history/NAME, /metrics/final (attrs), /weights/NAME, /results/NAME
  /resume, /top_k           optional: exact-resume state (a tree, see tree.py; model tensors equal to
                            /weights/NAME stored as references, see stages.phase.weights_by_reference); the best
                            states by the monitored metric (training.save_top_k)

Checksums: /weights, /results, /data/var_names, /categories, /resume and /top_k carry a sha256 attr over their
datasets (names, dtypes, shapes and bytes), recomputed when the part is read and by `verify_bundle` (`stagekit
info --verify`). Parts written before they had one are read unchecked; `verify_bundle` reports them as unchecked.

Reading never unpickles: every value is a numeric or string HDF5 dataset or attribute, read with h5py.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from stagekit import toml_text
from stagekit.bundle.tree import read_tree, write_tree
from stagekit.errors import UserError

FORMAT = "stagekit-bundle"
FORMAT_VERSION = 1

# What a bundle must hold (besides `format` and `format_version`); checked when it is opened, so a foreign or
# truncated file gives one line naming what is missing. `model_config` and `resume` are optional.
_REQUIRED_ATTRS = ("stage", "model", "status", "seed", "epochs_done", "created", "wall_time_s", "device", "argv")
_REQUIRED_NODES = ("config", "lineage", "versions", "data", "data/var_names", "categories", "metrics/history",
                   "metrics/final", "weights", "results")
# The checksummed parts: node -> how problems name it.
_CHECKED = {"weights": "weights", "results": "results", "data/var_names": "gene names",
            "categories": "categories", "resume": "resume state", "top_k": "top-k states"}


@dataclass
class Bundle:
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    # which command and model wrote it, with what config and seed: filled in by the phase run (stages/phase.stamp)
    stage: str = ""
    model: str = ""
    config_toml: str = ""
    seed: int = 0
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
    top_k: list[dict] = field(default_factory=list)  # {"name", "epoch", "metric", "value", "weights"}, best first
    wall_time_s: float = 0.0
    device: str = ""
    argv: list[str] = field(default_factory=list)
    created: str = ""
    path: str = ""
    records: dict[str, Any] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)  # bytes stored per top-level part, as read

    def config(self) -> dict[str, Any]:
        """The configuration the phase ran with, as sections of keys (empty before the phase stamps it)."""
        return toml_text.parse(self.config_toml, self.path or "bundle config") if self.config_toml else {}


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


def ensure_writable_folder(path: str | Path) -> None:
    """UserError unless new files can be created where `path` (an output file, or a folder) would be written.

    Creates and deletes a small temp file there: os.access checks permissions, which on some file systems
    (network mounts, ACLs) are not what a write meets."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if not folder.is_dir():
        raise UserError(f"output folder {folder} does not exist; create it first")
    try:
        fd, probe = tempfile.mkstemp(prefix=".stagekit-write-test.", dir=folder)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UserError(f"output folder {folder} is not writable ({reason}); choose another output path "
                        "or make the folder writable") from None
    os.close(fd)
    os.unlink(probe)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except (OverflowError, ValueError):  # not a possible pid
        return False
    return True


def _remove_stale_temp_files(path: Path) -> None:
    """Remove `.NAME.PID.tmp` files a killed writer of `path` left behind (PID no longer running); the temp
    files of running writers are theirs."""
    prefix = f".{path.name}."
    for tmp in path.parent.glob(glob.escape(prefix) + "*.tmp"):
        pid = tmp.name[len(prefix):-len(".tmp")]
        if pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(OSError):  # another writer may be removing it at the same time
                tmp.unlink()


@contextlib.contextmanager
def atomic_output(path: str | Path):
    """Yield a temp path in the same folder; on success fsync and rename it over `path`, else remove it.

    An existing file at `path` is never half-overwritten. Temp files of earlier writers of `path` that were
    killed are removed first."""
    path = Path(path)
    if path.exists() and path.is_dir():
        raise UserError(f"output {path} is a folder; give a file name such as {path / ('out' + path.suffix)}")
    ensure_writable_folder(path.parent)
    _remove_stale_temp_files(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        try:
            yield tmp
        except OSError as exc:  # h5py reports a full disk as an OSError naming it, often without an errno
            if exc.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(exc):
                raise UserError(f"no space left on the device of {path} while writing it (nothing was written); "
                                "free space, or write elsewhere with -o") from None
            raise
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


@contextlib.contextmanager
def atomic_folder(path: str | Path):
    """Yield an empty temp folder beside `path`; on success it takes the place of `path` (an existing folder is
    replaced only then), else it is removed."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"output {path} is a file; give a folder name")
    ensure_writable_folder(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.{os.getpid()}.old")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_bundle(bundle: Bundle, path: str | Path) -> Path:
    """Write atomically: a temp file in the same folder, fsync, rename. An existing file survives errors."""
    with atomic_output(path) as tmp, h5py.File(tmp, "w") as f:
        _fill(f, bundle)
    return Path(path)


def _json_value(value: Any) -> Any:
    """numpy values (a resumed run's records come back through the resume tree) as JSON."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    if isinstance(value, bytes):
        return value.decode()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _fill(f: h5py.File, b: Bundle) -> None:
    f.attrs.update({"format": FORMAT, "format_version": FORMAT_VERSION, "stage": b.stage, "model": b.model,
                    "status": b.status, "seed": b.seed, "epochs_done": b.epochs_done,
                    "created": b.created or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "wall_time_s": b.wall_time_s, "device": b.device, "argv": json.dumps(b.argv)})
    f.create_dataset("config", data=b.config_toml, dtype=h5py.string_dtype())
    f.create_dataset("model_config", data=b.model_config, dtype=h5py.string_dtype())
    f.create_dataset("lineage", data=json.dumps(b.lineage), dtype=h5py.string_dtype())
    if b.records:
        f.create_dataset("records", data=json.dumps(b.records, default=_json_value), dtype=h5py.string_dtype())
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
    results = f.create_group("results")
    for name, array in b.results.items():
        results.create_dataset(name, data=array)
    if b.resume is not None:
        write_tree(f.create_group("resume"), b.resume)
    if b.top_k:
        top_k = f.create_group("top_k")
        for rank, state in enumerate(b.top_k):
            group = top_k.create_group(state["name"])
            group.attrs.update({"epoch": state["epoch"], "metric": state["metric"], "value": state["value"],
                                "rank": rank})
            for name, array in state["weights"].items():
                group.create_dataset(name, data=array)
    for name in _CHECKED:
        if name in f:  # checksums of what was stored, as it reads back, so reading compares like with like
            f[name].attrs["sha256"] = _digest(_arrays(f[name]))


def _part_sizes(f: h5py.File) -> dict[str, int]:
    """Bytes each top-level part stores (datasets only; HDF5's own metadata is the rest of the file)."""
    sizes: dict[str, int] = {}

    def add(path: str, node: h5py.Group | h5py.Dataset) -> None:
        if isinstance(node, h5py.Dataset):
            part = path.split("/", 1)[0]
            sizes[part] = sizes.get(part, 0) + node.id.get_storage_size()

    f.visititems(add)
    return sizes


def _arrays(node: h5py.Group | h5py.Dataset) -> dict[str, Any]:
    """Every dataset under `node` (or `node` itself), by path relative to it, as h5py reads it."""
    if isinstance(node, h5py.Dataset):
        return {node.name.rsplit("/", 1)[-1]: node[()]}
    arrays: dict[str, Any] = {}
    node.visititems(lambda name, child: arrays.__setitem__(name, child[()])
                    if isinstance(child, h5py.Dataset) else None)
    return arrays


def _digest(arrays: dict[str, Any]) -> str:
    """arrays_sha256, with variable-length strings (object arrays of bytes) hashed by their text. ValueError for
    an object array of anything else (stagekit writes none: the file was made or changed by something else)."""
    plain = {}
    for name, value in arrays.items():
        value = np.asarray(value)
        if value.dtype == object:
            if not all(isinstance(v, bytes | str) for v in value.ravel()):
                raise ValueError(f"'{name}' holds values of a kind stagekit never writes")
            value = value.astype(str)
        plain[name] = value
    return arrays_sha256(plain)


def _check(path: str | Path, f: h5py.File, name: str, arrays: dict[str, Any]) -> None:
    """UserError when the checksum of part `name` does not match `arrays` read from it. Parts written before
    they had a checksum are not checked."""
    stored = f[name].attrs.get("sha256")
    what = _CHECKED[name]
    try:
        digest = _digest(arrays) if stored is not None else None
    except ValueError as exc:
        raise UserError(f"{path}: {what} damaged ({exc}); re-run the phase that wrote this bundle") from None
    if stored is not None and digest != stored:
        raise UserError(f"{path}: {what} {'is' if what == 'resume state' else 'are'} corrupted (checksum "
                        "mismatch); re-run the phase that wrote this bundle")


def _incomplete(path: str | Path, missing: str) -> UserError:
    return UserError(f"{path}: bundle is incomplete (missing '{missing}'); it was not written by stagekit "
                     "or was truncated")


def _open(path: str | Path) -> h5py.File:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"bundle {path} does not exist")
    try:
        f = h5py.File(path, "r")
    except OSError:
        raise UserError(f"{path} is not a stagekit bundle (not an HDF5 file)") from None
    try:
        if f.attrs.get("format") != FORMAT:
            raise UserError(f"{path} is an HDF5 file but not a stagekit bundle")
        if "format_version" not in f.attrs:
            raise _incomplete(path, "format_version")
        version = int(f.attrs["format_version"])
        if version > FORMAT_VERSION:
            raise UserError(f"{path} uses bundle format {version}, newer than this stagekit reads "
                            f"({FORMAT_VERSION}); upgrade stagekit")
        missing = [a for a in _REQUIRED_ATTRS if a not in f.attrs] + [n for n in _REQUIRED_NODES if n not in f]
        if missing:
            raise _incomplete(path, missing[0])
    except BaseException:
        f.close()
        raise
    return f


@contextlib.contextmanager
def _readable(path: str | Path):
    """A part of the expected shape that cannot be read or decoded: damaged, one line instead of a traceback."""
    try:
        yield
    except (KeyError, OSError, ValueError, TypeError, AttributeError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise UserError(f"{path}: bundle is damaged ({reason}); re-run the phase that wrote it") from None


def read_bundle(path: str | Path, expect_stage: tuple[str, ...] | None = None, command: str = "",
                weights: bool = True, resume: bool = False, results: bool = True) -> Bundle:
    """Read a bundle; checks format, completeness, stage and the checksums of what it reads. `results=False`
    leaves `/results` (possibly an array per cell) unread, for summaries."""
    with _open(path) as f, _readable(path):
        stage = str(f.attrs["stage"])
        if expect_stage and stage not in expect_stage:
            wanted = " or ".join(f"'{s}'" for s in expect_stage)
            raise UserError(f"{path} is a '{stage}' bundle; `stagekit {command}` needs a {wanted} bundle")
        var_names = _arrays(f["data/var_names"])
        _check(path, f, "data/var_names", var_names)
        categories = _arrays(f["categories"])
        _check(path, f, "categories", categories)
        b = Bundle(stage=stage, model=str(f.attrs["model"]), config_toml=f["config"][()].decode(),
                   seed=int(f.attrs["seed"]), weights={},
                   model_config=f["model_config"][()].decode() if "model_config" in f else "",
                   status=str(f.attrs["status"]),
                   epochs_done=int(f.attrs["epochs_done"]), lineage=json.loads(f["lineage"][()].decode()),
                   data={k: _plain(v) for k, v in f["data"].attrs.items()},
                   var_names=[v.decode() for v in var_names["var_names"]],
                   categories={k: [v.decode() for v in d] for k, d in categories.items()},
                   history={k: d[()].tolist() for k, d in f["metrics/history"].items()},
                   final_metrics={k: float(v) for k, v in f["metrics/final"].attrs.items()},
                   versions={k: str(v) for k, v in f["versions"].attrs.items()},
                   wall_time_s=float(f.attrs["wall_time_s"]), device=str(f.attrs["device"]),
                   argv=json.loads(f.attrs["argv"]), created=str(f.attrs["created"]), path=str(path),
                   records=json.loads(f["records"][()].decode()) if "records" in f else {},
                   sizes=_part_sizes(f))
        if results:
            b.results = _arrays(f["results"])
            _check(path, f, "results", b.results)
        if weights:
            b.weights = _arrays(f["weights"])
            _check(path, f, "weights", b.weights)
        if "top_k" in f:  # names, epochs and metrics always; the tensors with the weights
            if weights:
                _check(path, f, "top_k", _arrays(f["top_k"]))
            states = sorted(f["top_k"].values(), key=lambda g: int(g.attrs["rank"]))
            b.top_k = [{"name": g.name.rsplit("/", 1)[-1], "epoch": int(g.attrs["epoch"]),
                        "metric": str(g.attrs["metric"]), "value": float(g.attrs["value"]),
                        "weights": _arrays(g) if weights else {}} for g in states]
        if resume:
            if "resume" not in f:
                raise UserError(f"{path} holds no resume state: a finished run keeps it only with --keep-resume "
                                "(training.keep_resume); fine-tune from it, or train again with --keep-resume to "
                                "continue training later")
            _check(path, f, "resume", _arrays(f["resume"]))
            b.resume = read_tree(f["resume"])
    return b


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def verify_bundle(path: str | Path, unchecked: list[str] | None = None) -> list[str]:
    """Recompute every checksum; return a list of problems (empty when the bundle is intact). Parts without a
    checksum (written by an older stagekit) are appended to `unchecked` when it is given."""
    problems = []
    with _open(path) as f:
        for name, what in _CHECKED.items():
            if name not in f:  # resume state is optional
                continue
            stored = f[name].attrs.get("sha256")
            if stored is None:
                if unchecked is not None:
                    unchecked.append(what)
                continue
            try:
                if _digest(_arrays(f[name])) != stored:
                    problems.append(f"{what}: checksum mismatch")
            except (OSError, KeyError, ValueError) as exc:
                problems.append(f"{what}: unreadable ({(str(exc).splitlines() or [''])[0]})")
    return problems
