"""Nested dicts/lists of arrays and scalars <-> HDF5 groups, so resume state is stored without pickle."""

from __future__ import annotations

from typing import Any

import h5py
import numpy as np

_SCALARS = {bool: "bool", int: "int", float: "float", str: "str"}


def write_tree(group: h5py.Group, obj: dict) -> None:
    for key, value in obj.items():
        _write(group, str(key), value, type(key).__name__)


def _write(parent: h5py.Group, name: str, value: Any, key_type: str) -> None:
    if isinstance(value, dict):
        node = parent.create_group(name)
        node.attrs["kind"] = "dict"
        for k, v in value.items():
            _write(node, str(k), v, type(k).__name__)
    elif isinstance(value, list | tuple):
        node = parent.create_group(name)
        node.attrs["kind"] = type(value).__name__
        node.attrs["length"] = len(value)
        for i, v in enumerate(value):
            _write(node, str(i), v, "int")
    elif isinstance(value, np.ndarray):
        node = parent.create_dataset(name, data=value)
        node.attrs["kind"] = "array"
    elif value is None:
        node = parent.create_dataset(name, data=0)
        node.attrs["kind"] = "none"
    elif type(value) in _SCALARS:
        node = parent.create_dataset(name, data=value)
        node.attrs["kind"] = _SCALARS[type(value)]
    elif isinstance(value, np.generic):
        node = parent.create_dataset(name, data=value)
        node.attrs["kind"] = "array"
    else:
        raise TypeError(f"cannot store {type(value).__name__} at {parent.name}/{name}")
    node.attrs["key_type"] = key_type


def read_tree(group: h5py.Group) -> dict:
    return {_key(node): _read(node) for node in group.values()}


def _key(node: h5py.HLObject) -> Any:
    name = node.name.rsplit("/", 1)[-1]
    return int(name) if node.attrs.get("key_type") == "int" else name


def _read(node: h5py.HLObject) -> Any:
    kind = node.attrs["kind"]
    if kind == "dict":
        return {_key(child): _read(child) for child in node.values()}
    if kind in ("list", "tuple"):
        items = [_read(node[str(i)]) for i in range(int(node.attrs["length"]))]
        return items if kind == "list" else tuple(items)
    if kind == "array":
        return node[()]
    if kind == "none":
        return None
    value = node[()]
    return {"bool": bool, "int": int, "float": float, "str": lambda v: v.decode()}[kind](value)
