"""Strict config, "no key accepted and ignored": every key of a phase's schema is read by the code on every run.

Each shipped preset's phase runs end-to-end on tiny real data with a config that records the keys the code reads
(`Config.read_keys`). Reading a key and deciding it does not apply counts as reading it; a key never read is
accepted and ignored, and the test names it with the preset.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from stagekit.config.loader import list_presets, parse_override
from stagekit.data.demo import DEMO_ORTHOLOGS, write_demo_inputs
from stagekit.stages.registry import phases, read_config, run_phase
from stagekit.stages.spec import PhaseRequest
from tests.cross_species.test_saturn_pretrain import FAST

PRESETS = {p["name"]: p for p in list_presets()}
ONE_EPOCH = [("training.epochs", 1)]
SATURN_FAST = [parse_override(s) for s in FAST if s != "--set"]  # fewer genes and macrogenes, smaller model


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict[str, Path]:
    """The embedded pancreas cells split by species, with ortholog-derived stand-in protein embeddings."""
    return write_demo_inputs(DEMO_ORTHOLOGS, tmp_path_factory.mktemp("demo"))


def saturn_inputs(demo: dict[str, Path]) -> dict[str, Any]:
    return {"data": [demo["human"], demo["mouse"]],
            "options": {"protein_emb": [f"human={demo['human_embeddings']}", f"mouse={demo['mouse_embeddings']}"]}}


def run(stage: str, preset: str, overrides: list[tuple[str, Any]], output: Path, **inputs):
    """Run a phase through the registry; returns the Config it used (which recorded the keys read)."""
    config = read_config(stage, preset, [(dotted, value, "test") for dotted, value in overrides])
    assert run_phase(PhaseRequest(config, output, quiet=True, log=lambda _: None, **inputs)) == output
    return config


@pytest.fixture(scope="module")
def clusters_bundle(tmp_path_factory, small_bundle) -> Path:
    out = tmp_path_factory.mktemp("clusters") / "clusters.stk"
    run("cluster-search", "kmeans", [("cluster.k_max", 6)], out, parent=small_bundle)
    return out


@pytest.fixture(scope="module")
def saturn_bundle(tmp_path_factory, demo) -> Path:
    out = tmp_path_factory.mktemp("saturn") / "saturn.stk"
    run("pretrain", "saturn-small", [*ONE_EPOCH, *SATURN_FAST, ("data.label_key", "Group")], out,
        **saturn_inputs(demo))
    return out


MEAN_TEACHER = [*ONE_EPOCH, ("data.label_key", "cluster_id"), ("data.labelled_fraction", 0.1)]


@pytest.fixture(scope="module")
def mean_teacher_bundle(tmp_path_factory, small_h5ad) -> Path:
    out = tmp_path_factory.mktemp("mean_teacher") / "s1.stk"
    run("pretrain", "mean-teacher", MEAN_TEACHER, out, data=[small_h5ad])
    return out


TRANSITION = [*ONE_EPOCH, ("data.pert_key", "group_id"), ("data.control", "ctrl"), ("data.n_genes", 200),
              ("data.context_key", "cluster_id"), ("data.n_components", 10), ("model.n_layers", 1)]

@pytest.fixture(scope="module")
def transition_bundle(tmp_path_factory, stim_h5ad) -> Path:
    out = tmp_path_factory.mktemp("transition") / "tx.stk"
    run("pretrain", "transition", [*TRANSITION, ("model.n_layers", 4), ("model.hidden", 32), ("model.n_heads", 2)],
        out, data=[stim_h5ad])
    return out


def transfer_run(fixture: Callable[[str], Any], stage: str) -> dict[str, Any]:
    keys = {"finetune": ["training.epochs"], "unfreeze": ["phase_c.epochs", "phase_d.epochs", "phase_e.epochs"]}
    return {"overrides": [(k, 1) for k in keys[stage]], "parent": fixture("transition_bundle"),
            "data": [fixture("stim_h5ad")]}


# (stage, model) -> fixture getter -> the phase's overrides and inputs (data, parent, options) for a tiny run
RUNS: dict[tuple[str, str], Callable[[Callable[[str], Any]], dict[str, Any]]] = {
    ("pretrain", "vae"): lambda fixture: {"overrides": ONE_EPOCH, "data": [fixture("small_h5ad")]},
    ("cluster-search", "kmeans"): lambda fixture: {"overrides": [], "parent": fixture("small_bundle")},
    ("finetune", "dec"): lambda fixture: {"overrides": ONE_EPOCH, "parent": fixture("clusters_bundle")},
    ("pretrain", "saturn"): lambda fixture: {"overrides": [*ONE_EPOCH, *SATURN_FAST], **saturn_inputs(fixture("demo"))},
    ("align", "saturn"): lambda fixture: {"overrides": [*ONE_EPOCH, ("training.batch_size", 128)],
                                          "parent": fixture("saturn_bundle")},
    ("pretrain", "mean-teacher"): lambda fixture: {"overrides": MEAN_TEACHER, "data": [fixture("small_h5ad")]},
    ("finetune", "mean-teacher"): lambda fixture: {"overrides": [*ONE_EPOCH, ("data.labelled_fraction", 0.2)],
                                                   "parent": fixture("mean_teacher_bundle")},
    ("pretrain", "transition"): lambda fixture: {"overrides": TRANSITION, "data": [fixture("stim_h5ad")]},
    ("finetune", "transition"): lambda fixture: transfer_run(fixture, "finetune"),
    ("unfreeze", "transition"): lambda fixture: transfer_run(fixture, "unfreeze"),
    ("segment", "segger"): lambda fixture: {"overrides": ONE_EPOCH, "data": [fixture("xenium_small")]},
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_key_of_a_preset_is_read(name: str, request, tmp_path: Path):
    stage, model = PRESETS[name]["stage"], PRESETS[name]["model"]
    assert (stage, model) in RUNS, f"preset {name}: no tiny run for ({stage}, {model}); add one to RUNS"
    inputs = RUNS[(stage, model)](request.getfixturevalue)
    config = run(stage, name, inputs.pop("overrides"), tmp_path / "out.stk", **inputs)
    unread = config.unread_keys()
    assert not unread, f"preset {name} ({stage} {model}): keys accepted and never read: {', '.join(unread)}"


SCHEMAS = {(spec.command, spec.model): spec.schema for spec in phases()}


def test_shipped_presets_run_every_schema():
    """Every key of every schema is checked above: each (stage, model) has a shipped preset and a tiny run."""
    shipped = {(p["stage"], p["model"]) for p in PRESETS.values()}
    assert set(SCHEMAS) <= shipped, f"schemas without a shipped preset: {sorted(set(SCHEMAS) - shipped)}"
    assert set(SCHEMAS) <= set(RUNS), f"schemas without a tiny run: {sorted(set(SCHEMAS) - set(RUNS))}"


def test_config_records_the_keys_code_reads():
    config = read_config("pretrain", "vae", [])
    schema = SCHEMAS[("pretrain", "vae")]
    assert config.unread_keys() == [f"{s}.{k}" for s, keys in schema.items() for k in keys]
    training, runtime = config["training"], config["runtime"]
    # storing or copying the config is not acting on it
    config.to_toml(with_sources=True)
    merged, copied = training | runtime, dict(training)
    assert not config.read_keys
    assert isinstance(training, dict) and type(merged) is dict and merged == copied | dict(runtime)
    # reading a key, and iterating a section's items (code that hands every key on), is
    assert training["lr"] == 1e-3 and training.get("seed") == 0 and training.get("nope", 1) == 1
    dict(config["model"].items())
    assert config.read_keys == {"training.lr", "training.seed"} | {f"model.{k}" for k in schema["model"]}
    assert "training.epochs" in config.unread_keys() and "model.beta" not in config.unread_keys()
