"""Options every training phase shares, declared once, and how they map onto config keys."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from stagekit.errors import UserError

Preset = Annotated[str | None, typer.Option("--preset", "-p", help="shipped preset NAME or a PATH to a .toml")]
Set = Annotated[list[str] | None, typer.Option("--set", help="override a key: section.key=VALUE (TOML value)")]
Output = Annotated[Path | None, typer.Option("--output", "-o", help="bundle to write (.stk)")]
Seed = Annotated[int | None, typer.Option(help="random seed (training.seed)")]
Accelerator = Annotated[str | None, typer.Option(help="cpu, cuda, mps or auto (runtime.accelerator)")]
Devices = Annotated[int | None, typer.Option(help="number of devices/processes (runtime.devices)")]
Strategy = Annotated[str | None, typer.Option(help="auto or ddp (runtime.strategy)")]
Precision = Annotated[str | None, typer.Option(help="32-true, bf16-mixed, 16-mixed (runtime.precision)")]
Resume = Annotated[Path | None, typer.Option(help="continue an interrupted run from its .partial bundle")]
PrintConfig = Annotated[bool, typer.Option("--print-config", help="print the effective config with sources; exit")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="no progress output")]
Json = Annotated[bool, typer.Option("--json", help="print a JSON summary on stdout instead of the path")]

RUNTIME_FLAGS = {"seed": "training.seed", "accelerator": "runtime.accelerator", "devices": "runtime.devices",
                 "strategy": "runtime.strategy", "precision": "runtime.precision"}


def collect_overrides(sets: list[str] | None, flags: dict[str, Any], mapping: dict[str, str]) -> list[tuple]:
    """`--set` values first, then dedicated flags (which win), each labelled with where it came from."""
    from stagekit.config.loader import parse_override

    overrides = [(*parse_override(text), "--set") for text in sets or []]
    for flag, dotted in mapping.items():
        if flags.get(flag) is not None:
            overrides.append((dotted, flags[flag], f"--{flag.replace('_', '-')}"))
    return overrides


def training_config(stage: str, flags: dict[str, Any], mapping: dict[str, str]):
    """The effective config of a training phase from its command's options; None after --print-config.

    `--resume` continues with the configuration stored in the bundle (`--set` may still change keys).
    """
    from stagekit.config import resolve_config

    overrides = collect_overrides(flags.get("set_"), flags, RUNTIME_FLAGS | mapping)
    preset, resume = flags.get("preset"), flags.get("resume")
    name, stored = base_preset(preset, resume)
    config = resolve_config(stage, name, overrides, (stored, f"resume {resume}") if stored else None)
    if flags.get("print_config"):
        print(config.to_toml(with_sources=True))
        return None
    if flags.get("output") is None:
        raise UserError("name the bundle to write with -o/--output PATH.stk")
    return config


def base_preset(preset: str | None, resume: Path | None) -> tuple[str | None, str | None]:
    """(preset, stored config text): `--resume` continues with the configuration stored in the bundle."""
    if resume is None:
        if preset is None:
            raise UserError("choose a preset with --preset NAME (see `stagekit presets list`)")
        return preset, None
    if preset is not None:
        raise UserError("--resume continues a run with its stored configuration; drop --preset "
                        "(change keys with --set)")
    from stagekit.bundle import read_bundle

    return None, read_bundle(resume, weights=False).config_toml


def stderr_log(quiet: bool):
    """Messages of a phase to stderr; with --quiet only its warnings."""
    def log(message: str) -> None:
        if not quiet or message.startswith("warning"):
            print(message, file=sys.stderr)
    return log


def emit_result(path: Path, as_json: bool) -> None:
    """stdout carries only the result, so `B=$(stagekit pretrain ...)` works."""
    if not as_json:
        print(path)
        return
    from stagekit.bundle import read_bundle

    bundle = read_bundle(path, weights=False)
    print(json.dumps({"output": str(path), "stage": bundle.stage, "model": bundle.model,
                      "epochs_done": bundle.epochs_done, "final_metrics": bundle.final_metrics}))
    sys.stdout.flush()
