"""Strict TOML presets: schemas per phase, preset files, `--set` overrides, effective-config rendering."""

from stagekit.config.loader import Config, list_presets, resolve_config

__all__ = ["Config", "list_presets", "resolve_config"]
