"""TOML text in and out: the one parser every preset, override, stored config and model description goes
through, and the writer of plain values."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from stagekit.errors import UserError


def parse(text: str, source: str | Path) -> dict[str, Any]:
    """The tables of a TOML text; UserError naming `source` when it is not valid TOML."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{source}: not valid TOML ({str(exc).splitlines()[0]})") from None


def read(path: str | Path) -> dict[str, Any]:
    """The tables of a TOML file; UserError naming the file when it is missing, unreadable or not TOML."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    return parse(text, path)


def value(v: Any) -> str:
    """A plain value (bool, str, number, list of them) as TOML."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(value(x) for x in v) + "]"
    return repr(v)


def sections(tables: dict[str, dict[str, Any]]) -> str:
    """Tables of plain values as TOML text, one `[name]` header each, keys in the order given."""
    lines = []
    for name, keys in tables.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {value(v)}" for k, v in keys.items()]
    return "\n".join(lines) + "\n"
