"""The pipelines this installation has, collected from their own declarations.

Words, used in this sense everywhere:
- *pipeline*: one folder under `stagekit/stages/` (or a plugin module) that declares its phases in `spec.py`.
- *command*: what the user runs (`stagekit pretrain`, `finetune`, `extract`, ...).
- *phase*: one command's run for one model: `PhaseSpec` declares it, `PhaseRun` (stages/phase.py) runs it.
- *stage*: a bundle's record of the command that wrote it (`bundle.stage`), kept for the file format.
- *engine phase* (`train.phases.Phase`): a segment of one training run with its own freeze plan and learning
  rates; the steps C/D/E of `unfreeze` are engine phases of one run.

A pipeline is found by its `spec` module exporting `PHASES` (a list of `PhaseSpec`) and, optionally, `DEMO` (a
`Demo` that `stagekit demo` runs): every sub-package of
`stagekit.stages` that has one, every module of the entry-point group `stagekit.pipelines`, and the modules named
in the environment variable STAGEKIT_PIPELINES (comma-separated), e.g. a pipeline under development.
"""

from __future__ import annotations

import functools
import importlib
import os
import pkgutil
from importlib import metadata
from pathlib import Path
from typing import Any

from stagekit.errors import UserError
from stagekit.stages.spec import Demo, PhaseRequest, PhaseSpec
from stagekit.stages.spec import given as spec_given

ENTRY_POINT_GROUP = "stagekit.pipelines"
ENVIRONMENT = "STAGEKIT_PIPELINES"


def _spec_modules() -> list[str]:
    import stagekit.stages as package

    names = [f"{package.__name__}.{m.name}.spec" for m in pkgutil.iter_modules(package.__path__) if m.ispkg]
    names = [n for n in names if importlib.util.find_spec(n) is not None]
    names += [ep.value for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)]
    names += [n.strip() for n in os.environ.get(ENVIRONMENT, "").split(",") if n.strip()]
    return names


@functools.cache
def _modules() -> tuple[Any, ...]:
    modules = []
    for name in _spec_modules():
        try:
            modules.append(importlib.import_module(name))
        except ImportError as exc:
            raise UserError(f"pipeline module {name} cannot be imported ({exc}); fix or remove it") from None
    return tuple(modules)


@functools.cache
def phases() -> tuple[PhaseSpec, ...]:
    found: dict[tuple[str, str], PhaseSpec] = {}
    for module in _modules():
        name = module.__name__
        for spec in module.PHASES:
            if (spec.command, spec.model) in found:
                raise UserError(f"{name}: `{spec.command}` for model '{spec.model}' is declared twice")
            found[(spec.command, spec.model)] = spec
    return tuple(found.values())


def demos() -> list[Demo]:
    return [module.DEMO for module in _modules() if getattr(module, "DEMO", None) is not None]


def reload() -> None:
    """Collect the pipelines again (after STAGEKIT_PIPELINES changed)."""
    _modules.cache_clear()
    phases.cache_clear()


def of_command(command: str) -> list[PhaseSpec]:
    return [s for s in phases() if s.command == command]


def phase(command: str, model: str, where: str = "") -> PhaseSpec:
    found = next((s for s in phases() if (s.command, s.model) == (command, model)), None)
    if found is None:
        known = sorted(s.model for s in of_command(command))
        raise UserError(f"{where + ': ' if where else ''}no '{command}' phase for model '{model}' in this version"
                        + (f" (available: {', '.join(known)})" if known else ""))
    return found


def of_bundle(bundle: Any) -> PhaseSpec:
    return phase(bundle.stage, bundle.model, str(bundle.path))


def default_preset(command: str) -> str | None:
    return next((s.default_preset for s in of_command(command) if s.default_preset), None)


def check_options(spec: PhaseSpec, declared: tuple, given: dict[str, Any], command: str, others: list) -> None:
    """Refuse an option the phase does not declare, naming the presets (or models) it is for."""
    names = {o.name for o in declared}
    foreign = next((name for name in given if name not in names), None)
    if foreign is None:
        return
    owners = [s for s in others if foreign in {o.name for o in s.options + s.extract_options + s.evaluate_options}]
    flag = next((o.flags for s in owners for o in s.options + s.extract_options + s.evaluate_options
                 if o.name == foreign), "--" + foreign.replace("_", "-"))
    kinds = sorted({f"the {s.pipeline} model '{s.model}'" for s in owners})
    hint = f" (it is for {', '.join(kinds)})" if owners else ""
    raise UserError(f"{flag} does not apply to `stagekit {command}` with model '{spec.model}'{hint}; drop it")


def read_config(command: str, preset: str | None, overrides: list[tuple[str, Any, str]],
                stored: tuple[str, str] | None = None):
    """The effective config of a phase from a preset (or a bundle's stored config) and overrides."""
    from stagekit.config.loader import read_preset, resolve_config

    found = read_preset(command, preset, stored)
    spec = phase(command, found.model, str(found.path))
    return resolve_config(found, spec.schema, overrides)


def run_phase(request: PhaseRequest) -> Path | None:
    """Run the training phase of the request's (command, model)."""
    config = request.config
    spec = phase(config.stage, config.model, f"preset {config.preset}")
    given = spec_given(request.options)
    check_options(spec, spec.options, given, config.stage, of_command(config.stage))
    return spec.train(request)
