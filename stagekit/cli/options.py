"""Options every training phase shares, declared once; the options each pipeline declares, added to its commands.

`@phase_command(COMMAND)` appends the shared options (preset, --set, output, seed, devices, precision, resume, ...)
and the options the phases of COMMAND declare in their specs to a command's own parameters, and hands them to it
as `opts: PhaseOptions` and `pipeline: dict`. `@pipeline_command(FIELD)` does the same for extract and evaluate.
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
    logger: Annotated[str | None, typer.Option(help="live logs while training: csv, tensorboard or "
                                                    "csv,tensorboard (runtime.logger)")]
    log_dir: Annotated[str | None, typer.Option(help="folder of the live logs (runtime.log_dir); default "
                                                     "OUTPUT_NAME.logs beside the output")]
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


RUNTIME_FLAGS = {"accelerator": "runtime.accelerator", "devices": "runtime.devices",
                 "strategy": "runtime.strategy", "precision": "runtime.precision", "logger": "runtime.logger",
                 "log_dir": "runtime.log_dir"}
_NO_TRAINING_LOOP = ("accelerator", "devices", "strategy", "precision", "logger", "log_dir", "resume",
                     "keep_resume")


def _declared(specs: list, field: str) -> dict[str, list]:
    """option name -> [(spec, option)] over the specs' `field` (options, extract_options, evaluate_options)."""
    found: dict[str, list] = {}
    for spec in specs:
        for option in getattr(spec, field):
            uses = found.setdefault(option.name, [])
            if uses and (uses[0][1].type, uses[0][1].flags) != (option.type, option.flags):
                raise TypeError(f"{option.flags} is declared with two types or spellings ({spec.pipeline})")
            uses.append((spec, option))
    return found


def pipeline_parameters(specs: list, field: str = "options") -> list[inspect.Parameter]:
    """One keyword parameter per option the specs declare, shown in --help under its pipeline's panel (an option
    of several pipelines under a panel of its own)."""
    from rich.markup import escape

    parameters = []
    for name, uses in _declared(specs, field).items():
        option = uses[0][1]
        pipelines = list(dict.fromkeys(spec.pipeline for spec, _ in uses))
        panel = f"{pipelines[0]} options" if len(pipelines) == 1 else "Options of several pipelines"
        keys = list(dict.fromkeys(o.key for _, o in uses if o.key))
        helps: dict[str, str] = {}  # each pipeline's own words, shown apart where they differ
        for spec, used in uses:
            helps.setdefault(spec.pipeline, used.help)
        if len(set(helps.values())) > 1:
            said: dict[str, list[str]] = {}  # pipelines that say the same, together
            for pipeline, words in helps.items():
                said.setdefault(words, []).append(pipeline)
            text = "; ".join(f"{', '.join(named)}: {words}" for words, named in said.items())
            text += f" ({', '.join(keys)})" if keys else ""
        else:
            text = option.help + (f" ({', '.join(keys)})" if keys else "")
            text += f"; for {', '.join(pipelines)}" if len(pipelines) > 1 else ""
        text += f"; default {option.default}" if option.default is not None else ""
        kind = bool if option.type is bool else option.type | None
        annotation = Annotated[kind, typer.Option(option.flags, help=escape(text), rich_help_panel=panel)]
        default = False if option.type is bool else None
        parameters.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                                            default=default))
    return parameters


def _with_parameters(func: Callable, parameters: list[inspect.Parameter], call: Callable) -> Callable:
    """`func` with the signature `parameters`; `call(kwargs)` runs it."""
    @functools.wraps(func)
    def command(**kwargs: Any) -> Any:
        return call(kwargs)

    command.__signature__ = inspect.Signature(parameters)
    command.__annotations__ = {p.name: p.annotation for p in parameters}
    return command


def _own(func: Callable, leave_out: tuple[str, ...]) -> list[inspect.Parameter]:
    return [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
            for p in inspect.signature(func, eval_str=True).parameters.values() if p.name not in leave_out]


def pipeline_command(field: str) -> Callable:
    """Add the options every pipeline declares in `field` (extract_options, evaluate_options) to a command whose
    last parameter is `pipeline: dict`: the values of those options (None or False where not given)."""
    def wrap(func: Callable) -> Callable:
        from stagekit.stages import registry

        parameters = pipeline_parameters(list(registry.phases()), field)

        def call(kwargs: dict[str, Any]) -> Any:
            values = {p.name: kwargs.pop(p.name) for p in parameters}
            return func(**kwargs, pipeline=values)

        return _with_parameters(func, _own(func, ("pipeline",)) + parameters, call)
    return wrap


def phase_command(command: str) -> Callable:
    """Add the shared phase options and the options the phases of `command` declare to a command whose last
    parameters are `opts: PhaseOptions` and `pipeline: dict` (the values of the phases' own options)."""
    def wrap(func: Callable) -> Callable:
        from stagekit.stages import registry

        specs = registry.of_command(command)
        trains = any(spec.trains for spec in specs)
        default_preset = registry.default_preset(command)
        defaults = {"preset": default_preset, "print_config": False, "quiet": False, "json_": False,
                    "keep_resume": False}
        annotations = inspect.get_annotations(PhaseOptions, eval_str=True)
        shared = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=annotations[f.name],
                                    default=defaults.get(f.name))
                  for f in fields(PhaseOptions) if trains or f.name not in _NO_TRAINING_LOOP]
        parameters = pipeline_parameters(specs)

        def call(kwargs: dict[str, Any]) -> Any:
            values = {f.name: kwargs.pop(f.name, defaults.get(f.name)) for f in fields(PhaseOptions)}
            if values["resume"] is not None and values["preset"] == default_preset:
                values["preset"] = None  # a resumed run continues with its stored configuration
            pipeline = {p.name: kwargs.pop(p.name) for p in parameters}
            return func(**kwargs, opts=PhaseOptions(**values), pipeline=pipeline)

        return _with_parameters(func, _own(func, ("opts", "pipeline")) + parameters + shared, call)
    return wrap


def collect_overrides(sets: list[str] | None, flags: dict[str, Any], mapping: dict[str, str]) -> list[tuple]:
    """`--set` values first, then dedicated flags (which win), each labelled with where it came from."""
    from stagekit.config.loader import parse_override

    overrides = [(*parse_override(text), "--set") for text in sets or []]
    for flag, dotted in mapping.items():
        if flags.get(flag) is not None:
            overrides.append((dotted, flags[flag], f"--{flag.replace('_', '-')}"))
    return overrides


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


def implied_overrides(options: list, overrides: list[tuple[str, Any, str]]) -> list[tuple[str, Any, str]]:
    """The config keys the given options imply; one set otherwise on the command line is an error."""
    from stagekit.errors import UserError

    implied = []
    for option in options:
        for key, value in option.implies:
            for other_key, other, source in overrides:
                if other_key == key and other != value:
                    raise UserError(f"{option.flags} sets {key} = {value!r}, {source} sets it to {other!r}: drop "
                                    "one of them")
            implied.append((key, value, option.flags))
    return implied


def run_training_phase(command: str, opts: PhaseOptions, pipeline: dict[str, Any], data: list[Path] | None = None,
                       parent: Path | None = None, log: Callable[[str], None] | None = None) -> Path | None:
    """Resolve the config, run the phase its preset names, print the result (and the phase's summary tables)."""
    from stagekit.config.loader import read_preset, resolve_config
    from stagekit.stages import registry
    from stagekit.stages.spec import PhaseRequest
    from stagekit.stages.spec import given as spec_given

    name, stored = base_preset(opts.preset, opts.resume)
    preset = read_preset(command, name, (stored, f"resume {opts.resume}") if stored else None)
    spec = registry.phase(command, preset.model, str(preset.path))
    given = spec_given(pipeline)
    registry.check_options(spec, spec.options, given, command, registry.of_command(command))
    values = {o.name: o.convert(given[o.name]) if o.convert and o.name in given else given.get(o.name, o.default)
              for o in spec.options}
    shared = vars(opts) | {"keep_resume": True if opts.keep_resume else None}
    mapping = {"seed": spec.seed_key} | ({"keep_resume": "training.keep_resume"} | RUNTIME_FLAGS if spec.trains
                                         else {})
    overrides = collect_overrides(opts.set_, shared, mapping)
    overrides += [(o.key, values[o.name], o.flags) for o in spec.options if o.key and o.name in given]
    overrides += implied_overrides([o for o in spec.options if o.name in given], overrides)
    config = resolve_config(preset, spec.schema, overrides)
    options = {o.name: values[o.name] for o in spec.options if not o.key}
    request = PhaseRequest(config, opts.output or Path(), list(data or []), parent, opts.resume, opts.quiet, options,
                           log or opts.log())
    if opts.print_config:
        print(config.to_toml(with_sources=True))
        if parent is not None and spec.plan is not None:
            spec.plan(request)
        return None
    if opts.output is None:
        raise UserError("name the bundle to write with -o/--output PATH.stk")
    path = registry.run_phase(request)
    if path is not None:  # None on the secondary processes of a distributed run
        emit_result(path, opts.json_)
        if spec.summary is not None and not opts.quiet:
            from stagekit.cli.tables import print_tables

            print_tables(spec.summary(path))
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
