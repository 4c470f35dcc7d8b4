"""Resolve the effective configuration: schema defaults <- preset file <- command-line overrides."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stagekit import toml_text
from stagekit.config.schema import Key, Schema, check_value
from stagekit.errors import UserError

HEADER = "preset"  # [preset] stage = ..., model = ..., description = ...


def presets_dir() -> Path:
    """Shipped presets: inside the installed package, or beside it in a source checkout."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "presets", package.parent / "presets"):
        if candidate.is_dir():
            return candidate
    raise UserError("the shipped presets folder is missing; reinstall stagekit")


def list_presets() -> list[dict[str, str]]:
    rows = []
    for path in sorted(presets_dir().glob("*.toml")):
        header = toml_text.read(path).get(HEADER, {})
        rows.append({"name": path.stem, "stage": header.get("stage", "?"), "model": header.get("model", "?"),
                     "description": header.get("description", ""), "path": str(path)})
    return rows


def preset_path(name_or_path: str, stage: str = "") -> Path:
    """A preset file, or a shipped preset by name. One name can serve two commands (`pretrain --preset
    mean-teacher`, `finetune --preset mean-teacher`): the file NAME.STAGE.toml is preferred for that stage."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise UserError(f"preset file {path} does not exist")
        return path
    for file_name in ([f"{name_or_path}.{stage}.toml"] if stage else []) + [f"{name_or_path}.toml"]:
        if (presets_dir() / file_name).is_file():
            return presets_dir() / file_name
    names = [p.stem for p in presets_dir().glob("*.toml")]
    hint = difflib.get_close_matches(name_or_path, names, n=1)
    suggestion = f"did you mean '{hint[0]}'? " if hint else ""
    raise UserError(f"no preset named '{name_or_path}'; {suggestion}see `stagekit presets list`")


def parse_override(text: str) -> tuple[str, Any]:
    """`section.key=value` with a TOML-typed value; a bare word is taken as a string."""
    if "=" not in text:
        raise UserError(f"--set {text!r}: expected KEY=VALUE, e.g. --set training.lr=1e-3")
    dotted, raw = (part.strip() for part in text.split("=", 1))
    try:
        value = toml_text.parse(f"v = {raw}", "--set")["v"]
    except UserError:
        value = raw
    return dotted, value


class Section(dict):
    """One section of a resolved config: a plain dict that records each key the code reads.

    `section[key]`, `section.get(key)` and iterating `.items()` / `.values()` (code that hands every key on,
    such as a stored model description) add "section.key" to `read`. Copies (`dict(section)`, `a | b`,
    `{**section}`, `.copy()`) are plain, untracked dicts and count as no read: read a key where you act on it.
    """

    def __init__(self, name: str, values: dict[str, Any], read: set[str]) -> None:
        super().__init__(values)
        self.name, self.read = name, read

    def _mark(self, *keys: str) -> None:
        self.read.update(f"{self.name}.{k}" for k in keys if dict.__contains__(self, k))

    def __getitem__(self, key: str) -> Any:
        self._mark(key)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self._mark(key)
        return super().get(key, default)

    def items(self):
        self._mark(*self.keys())
        return super().items()

    def values(self):
        self._mark(*self.keys())
        return super().values()


@dataclass
class Config:
    """The effective config. `config[section]` is a `Section`; `read_keys` collects the "section.key" names the
    code has read, so a test can check that no key is accepted and ignored (`unread_keys()`)."""

    stage: str
    model: str
    preset: str
    schema: Schema
    values: dict[str, dict[str, Any]]
    sources: dict[str, str] = field(default_factory=dict)
    read_keys: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.values = {name: Section(name, keys, self.read_keys) for name, keys in self.values.items()}

    def __getitem__(self, section: str) -> Section:
        return self.values[section]

    def unread_keys(self) -> list[str]:
        """Schema keys the code has not read (so far)."""
        return [dotted for dotted in _all_keys(self.schema) if dotted not in self.read_keys]

    def to_toml(self, with_sources: bool = False) -> str:
        """The config as a preset. Storing the config is not acting on it, so this reads no key."""
        lines = [f"[{HEADER}]", f'stage = "{self.stage}"', f'model = "{self.model}"', ""]
        for section, keys in self.values.items():
            lines.append(f"[{section}]")
            for key, value in dict.items(keys):
                line = f"{key} = {toml_text.value(value)}"
                if with_sources:
                    line = f"{line:<44} # {self.sources[f'{section}.{key}']}"
                lines.append(line)
            lines.append("")
        return "\n".join(lines)


def _all_keys(schema: Schema) -> list[str]:
    return [f"{s}.{k}" for s, keys in schema.items() for k in keys]


def _unknown(dotted: str, schema: Schema, source: str) -> UserError:
    leaf = dotted.rsplit(".", 1)[-1]
    # a right key in the wrong section is a common slip; otherwise the nearest spelling
    close = [k for k in _all_keys(schema) if k.endswith("." + leaf)]
    close = close or difflib.get_close_matches(dotted, _all_keys(schema), n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else f"; valid sections: {', '.join(schema)}"
    return UserError(f"{source}: unknown key '{dotted}'{hint}")


def _lookup(schema: Schema, dotted: str, source: str) -> tuple[str, str, Key]:
    if dotted.count(".") != 1:
        raise _unknown(dotted, schema, source)
    section, key = dotted.split(".")
    if key not in schema.get(section, {}):
        raise _unknown(dotted, schema, source)
    return section, key, schema[section][key]


@dataclass
class PresetFile:
    """A preset's text, read and checked up to its [preset] header: which command and model it is for."""

    path: Path
    label: str  # where its values come from, as --print-config shows it
    stage: str
    model: str
    tables: dict[str, Any]


def read_preset(stage: str, preset: str | None, stored: tuple[str, str] | None = None) -> PresetFile:
    """The preset named (a shipped name or a file), or `stored` = (TOML text, label), e.g. the config stored in a
    bundle to resume; checked to be for `stagekit STAGE`."""
    if stored is not None:
        path, raw = Path(stored[1]), toml_text.parse(stored[0], stored[1])
        label = stored[1]
    else:
        path = preset_path(preset, stage)
        raw = toml_text.read(path)
        label = f"preset {path.name}" if path.parent == presets_dir() else f"preset {path}"
    header = raw.pop(HEADER, None)
    if not isinstance(header, dict) or "stage" not in header or "model" not in header:
        raise UserError(f"{path}: a preset needs a [preset] table with 'stage' and 'model'")
    if header["stage"] != stage:
        raise UserError(f"{path}: this preset is for `stagekit {header['stage']}`, not `stagekit {stage}`")
    extra = set(header) - {"stage", "model", "description"}
    if extra:
        raise UserError(f"{path}: unknown key 'preset.{sorted(extra)[0]}'; [preset] holds stage, model, "
                        "description")
    return PresetFile(path, label, stage, str(header["model"]), raw)


def resolve_config(preset: PresetFile, schema: Schema, overrides: list[tuple[str, Any, str]]) -> Config:
    """The effective config: schema defaults <- the preset's values <- `overrides`, which are (dotted key, value,
    source label) in order of priority."""
    values = {s: {k: key.default for k, key in keys.items()} for s, keys in schema.items()}
    sources = {dotted: "default" for dotted in _all_keys(schema)}
    path = preset.path
    for section, table in preset.tables.items():
        if not isinstance(table, dict):
            raise _unknown(section, schema, str(path))
        for key, value in table.items():
            dotted = f"{section}.{key}"
            s, k, spec = _lookup(schema, dotted, str(path))
            try:
                values[s][k] = check_value(dotted, spec, value, str(path))
            except ValueError as exc:
                raise UserError(str(exc)) from None
            sources[dotted] = preset.label
    for dotted, value, source in overrides:
        s, k, spec = _lookup(schema, dotted, source)
        try:
            values[s][k] = check_value(dotted, spec, value, source)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        sources[dotted] = source
    return Config(stage=preset.stage, model=preset.model, preset=str(path), schema=schema, values=values,
                  sources=sources)
