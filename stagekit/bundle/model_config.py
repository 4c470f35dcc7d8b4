"""A model's description in a bundle (`/model_config`): what rebuilding its weights and reading new data needs.

Each model has one description class: a frozen dataclass whose fields are TOML sections, each section a frozen
dataclass of plain values (str, int, float, bool, lists of them). A section field with a default may be missing
from bundles written before it existed; a key this version does not know refuses the bundle by name."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Self

from stagekit import toml_text
from stagekit.bundle.format import Bundle
from stagekit.errors import UserError


def _section(section_type: type, name: str, values: dict[str, Any], source: str) -> Any:
    hints = typing.get_type_hints(section_type)
    known = {f.name: f for f in dataclasses.fields(section_type)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise UserError(f"{source}: unknown model setting '{name}.{unknown[0]}'; was it written by a newer stagekit?")
    missing = [k for k, f in known.items() if k not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise UserError(f"{source}: the model description lacks '{name}.{missing[0]}'")
    # TOML writes 1.0 as a float but a hand-made file may hold 1: widen ints where the field is a float
    return section_type(**{k: float(v) if hints[k] is float and isinstance(v, int) and not isinstance(v, bool)
                           else v for k, v in values.items()})


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Base of the description classes; subclasses add their sections as fields and a `build` method."""

    @classmethod
    def from_sections(cls, tables: dict[str, dict[str, Any]], source: str = "model description") -> Self:
        """From a mapping of section name to keys (a resolved config's sections, or parsed TOML)."""
        hints = typing.get_type_hints(cls)
        values = {}
        for f in dataclasses.fields(cls):
            if f.name in tables:
                values[f.name] = _section(hints[f.name], f.name, dict(tables[f.name].items()), source)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise UserError(f"{source}: the model description lacks its [{f.name}] section")
        unknown = sorted(set(tables) - set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise UserError(f"{source}: unknown model section [{unknown[0]}]; was it written by a newer stagekit?")
        return cls(**values)

    @classmethod
    def from_config(cls, values: dict[str, dict[str, Any]]) -> Self:
        """From a resolved config: its sections that the description has (reading each of their keys)."""
        return cls.from_sections({f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values})

    @classmethod
    def of(cls, bundle: Bundle) -> Self:
        """The description `bundle` stores (copied from its ancestors by phases that keep the architecture)."""
        if not bundle.model_config:
            raise UserError(f"{bundle.path}: holds no model description; was it written by `stagekit "
                            f"{bundle.stage or 'pretrain'}`?")
        return cls.from_sections(toml_text.parse(bundle.model_config, bundle.path), bundle.path)

    def to_toml(self) -> str:
        """The TOML text stored as the bundle's `/model_config`; a None value is left out."""
        return toml_text.sections({
            f.name: {k: v for k, v in dataclasses.asdict(getattr(self, f.name)).items() if v is not None}
            for f in dataclasses.fields(self) if getattr(self, f.name) is not None})
