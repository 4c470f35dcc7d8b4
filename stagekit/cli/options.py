"""Options every training phase shares, declared once, and how they map onto config keys.

`@phase_command(...)` appends the shared options (preset, --set, output, seed, devices, precision, resume, ...)
to a command's own parameters and hands them to it as one `PhaseOptions` argument named `opts`.
"""

from __future__ import annotations

import functools
import inspect
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any

import typer

from stagekit.errors import UserError

Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="no progress output")]
Json = Annotated[bool, typer.Option("--json", help="print a JSON summary on stdout instead of the path")]


@dataclass
class PhaseOptions:
    preset: Annotated[str | None, typer.Option("--preset", "-p", help="shipped preset NAME or a PATH to a .toml")]
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a key: section.key=VALUE (TOML value)")]
    output: Annotated[Path | None, typer.Option("--output", "-o", help="bundle to write (.stk)")]
    seed: Annotated[int | None, typer.Option(help="random seed (training.seed; cluster-search: cluster.seed)")]
    accelerator: Annotated[str | None, typer.Option(help="cpu, cuda, mps or auto (runtime.accelerator)")]
    devices: Annotated[int | None, typer.Option(help="number of devices/processes (runtime.devices)")]
    strategy: Annotated[str | None, typer.Option(help="auto or ddp (runtime.strategy)")]
    precision: Annotated[str | None, typer.Option(help="32-true, bf16-mixed, 16-mixed (runtime.precision)")]
    resume: Annotated[Path | None, typer.Option(help="continue an interrupted run from its .partial bundle")]
    keep_resume: Annotated[bool, typer.Option(
        "--keep-resume", help="keep the resume state in the final bundle (training.keep_resume), so --resume can "
                              "train it further; off, the final bundle holds weights and metadata only")]
    print_config: Annotated[bool, typer.Option("--print-config", help="print the effective config with sources; "
                                                                      "exit")]
    quiet: Quiet
    json_: Json

    def log(self) -> Callable[[str], None]:
        return stderr_log(self.quiet)


@dataclass
class TargetOptions:
    """The target screen of a fine-tuning phase of a transition model (finetune, unfreeze)."""

    pert_key: Annotated[str | None, typer.Option(
        help="transition: obs column of the perturbation in the target data (data.pert_key; default: the "
             "pretrained model's)")]
    control: Annotated[str | None, typer.Option(help="transition: the control label (data.control)")]
    context_key: Annotated[str | None, typer.Option(help="transition: obs column of the context (data.context_key)")]
    batch_key: Annotated[str | None, typer.Option(help="transition: obs column of batches (data.batch_key)")]
    layer: Annotated[str | None, typer.Option(help="transition: layer with raw counts (data.layer)")]
    exclude: Annotated[list[str] | None, typer.Option(
        "--exclude", help="transition: leave out cells with this perturbation label (data.exclude; repeatable)")]
    test_fraction: Annotated[float | None, typer.Option(
        help="transition: held-out cells of every target group; the rest is the few-shot training data "
             "(data.test_fraction)")]
    allow_partial: Annotated[bool, typer.Option(
        "--allow-partial", help="train even when weights of the parent are mismatched, missing or unexpected")]

    def flags(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "allow_partial"}


TARGET_FLAGS = {name: f"data.{name}" for name in ("pert_key", "control", "context_key", "batch_key", "layer",
                                                   "exclude", "test_fraction")}

RUNTIME_FLAGS = {"accelerator": "runtime.accelerator", "devices": "runtime.devices",
                 "strategy": "runtime.strategy", "precision": "runtime.precision"}
_NO_TRAINING_LOOP = ("accelerator", "devices", "strategy", "precision", "resume", "keep_resume")


def phase_command(default_preset: str | None = None, training: bool = True, target: bool = False) -> Callable:
    """Add the shared phase options to a command whose last parameter is `opts: PhaseOptions`.

    `training=False` (a phase without a training loop, e.g. cluster-search) leaves out the device, precision
    and resume options; `target=True` adds the `TargetOptions` of fine-tuning phases, handed over as `target`."""
    def wrap(func: Callable) -> Callable:
        own = [p for p in inspect.signature(func, eval_str=True).parameters.values()
               if p.name not in ("opts", "target")]
        defaults = {"preset": default_preset, "print_config": False, "quiet": False, "json_": False,
                    "allow_partial": False, "keep_resume": False}
        groups = [PhaseOptions, *([TargetOptions] if target else [])]
        shared = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY,
                                    annotation=inspect.get_annotations(group, eval_str=True)[f.name],
                                    default=defaults.get(f.name))
                  for group in groups for f in fields(group) if training or f.name not in _NO_TRAINING_LOOP]

        @functools.wraps(func)
        def command(**kwargs: Any) -> Any:
            values = {f.name: kwargs.pop(f.name, defaults.get(f.name)) for f in fields(PhaseOptions)}
            if values["resume"] is not None and values["preset"] == default_preset:
                values["preset"] = None  # a resumed run continues with its stored configuration
            if target:
                kwargs["target"] = TargetOptions(**{f.name: kwargs.pop(f.name, defaults.get(f.name))
                                                    for f in fields(TargetOptions)})
            return func(**kwargs, opts=PhaseOptions(**values))

        parameters = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + shared
        command.__signature__ = inspect.Signature(parameters)
        command.__annotations__ = {p.name: p.annotation for p in parameters}
        return command
    return wrap


def collect_overrides(sets: list[str] | None, flags: dict[str, Any], mapping: dict[str, str]) -> list[tuple]:
    """`--set` values first, then dedicated flags (which win), each labelled with where it came from."""
    from stagekit.config.loader import parse_override

    overrides = [(*parse_override(text), "--set") for text in sets or []]
    for flag, dotted in mapping.items():
        if flags.get(flag) is not None:
            overrides.append((dotted, flags[flag], f"--{flag.replace('_', '-')}"))
    return overrides


def phase_config(stage: str, opts: PhaseOptions, flags: dict[str, Any] | None = None,
                 mapping: dict[str, str] | None = None, seed_key: str = "training.seed",
                 plan: Callable[[Any], None] | None = None):
    """The effective config of a phase from its command's options; None after --print-config (which also
    calls `plan` with the config: what the phase would train, e.g. its parameter-group tables).

    `flags` are the command's own config flags (e.g. --label-key) and `mapping` their dotted keys.
    `--resume` continues with the configuration stored in the bundle (`--set` may still change keys).
    """
    from stagekit.config import resolve_config

    given = vars(opts) | {"keep_resume": True if opts.keep_resume else None} | (flags or {})
    overrides = collect_overrides(opts.set_, given, {"seed": seed_key, "keep_resume": "training.keep_resume"}
                                  | RUNTIME_FLAGS | (mapping or {}))
    name, stored = base_preset(opts.preset, opts.resume)
    config = resolve_config(stage, name, overrides, (stored, f"resume {opts.resume}") if stored else None)
    if opts.print_config:
        print(config.to_toml(with_sources=True))
        if plan is not None:
            plan(config)
        return None
    if opts.output is None:
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


def run_training_phase(stage: str, opts: PhaseOptions, data: list[Path] | None = None, parent: Path | None = None,
                       flags: dict[str, Any] | None = None, mapping: dict[str, str] | None = None,
                       options: dict[str, Any] | None = None, seed_key: str = "training.seed",
                       log: Callable[[str], None] | None = None) -> Path | None:
    """Resolve the config, run the phase the registry names for its (stage, model), print the result."""
    from stagekit.stages.registry import PhaseRequest, print_plan, run_phase

    def plan(config: Any) -> None:
        if parent is not None:
            print_plan(PhaseRequest(config, Path(), list(data or []), parent, None, opts.quiet, options or {}))

    config = phase_config(stage, opts, flags, mapping, seed_key, plan)
    if config is None:
        return None

    path = run_phase(PhaseRequest(config, opts.output, list(data or []), parent, opts.resume, opts.quiet,
                                  options or {}, log or opts.log()))
    if path is not None:  # None on the secondary processes of a distributed run
        emit_result(path, opts.json_)
    return path


def stderr_log(quiet: bool) -> Callable[[str], None]:
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
