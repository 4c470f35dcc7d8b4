"""A model's description in a bundle: typed, read back the way it was written, strict about what it holds."""

from __future__ import annotations

import dataclasses
import re

import pytest

from stagekit import toml_text
from stagekit.bundle import read_bundle, write_bundle
from stagekit.bundle.model_config import ModelConfig
from stagekit.errors import UserError
from stagekit.stages.clustering.model_config import VAEConfig
from stagekit.stages.cross_species.model_config import SaturnConfig
from stagekit.stages.mean_teacher.model_config import MeanTeacherConfig
from stagekit.stages.perturbation.model_config import TransitionConfig
from stagekit.stages.segmentation.model_config import SeggerConfig
from tests.conftest import run_cli
from tests.release_bundles.commands import BUNDLES, DATA

DESCRIPTION = {"vae": VAEConfig, "kmeans": VAEConfig, "dec": VAEConfig, "saturn": SaturnConfig, "align": SaturnConfig,
               "mean-teacher": MeanTeacherConfig, "mean-teacher-finetune": MeanTeacherConfig,
               "transition": TransitionConfig, "frozen-backbone": TransitionConfig, "progressive": TransitionConfig,
               "segger": SeggerConfig}


@dataclasses.dataclass(frozen=True)
class Shape:
    width: int
    rate: float
    names: list[str]
    extra: int = 3


@dataclasses.dataclass(frozen=True)
class Toy(ModelConfig):
    model: Shape


@pytest.mark.parametrize("name", list(DESCRIPTION))
def test_every_stored_description_reads_back_as_written(name):
    bundle = read_bundle(BUNDLES / f"{name}.stk", weights=False)
    described = DESCRIPTION[name].of(bundle)
    again = DESCRIPTION[name].from_sections(toml_text.parse(described.to_toml(), name))
    assert again == described


def test_defaults_fill_missing_keys_and_ints_widen_to_floats():
    toy = Toy.from_sections({"model": {"width": 4, "rate": 1, "names": ["a"]}})
    assert toy == Toy(Shape(4, 1.0, ["a"], 3)) and isinstance(toy.model.rate, float)
    assert Toy.from_sections({"model": {"width": 4, "rate": 0.5, "names": []}}).to_toml() == \
        '[model]\nwidth = 4\nrate = 0.5\nnames = []\nextra = 3\n'


@pytest.mark.parametrize(("tables", "named"), [
    ({"model": {"width": 4, "rate": 1.0, "names": [], "depth": 2}}, "model.depth"),
    ({"model": {"rate": 1.0, "names": []}}, "model.width"),
    ({}, "[model]"),
    ({"model": {"width": 4, "rate": 1.0, "names": []}, "head": {}}, "[head]"),
])
def test_an_unknown_or_missing_setting_is_named(tables, named):
    with pytest.raises(UserError, match=re.escape(named)):
        Toy.from_sections(tables, "some.stk")


def test_a_bundle_from_a_newer_release_is_refused_by_name(tmp_path, capsys):
    bundle = read_bundle(BUNDLES / "vae.stk")
    bundle.model_config = bundle.model_config.replace("[data]", "n_layers_new = 2\n[data]")
    write_bundle(bundle, tmp_path / "newer.stk")
    code, _, err = run_cli(capsys, "extract", tmp_path / "newer.stk", DATA / "counts.h5ad", "-o",
                           tmp_path / "cells.h5ad", "-q")
    assert code == 2 and "model.n_layers_new" in err and "newer stagekit" in err
    assert not (tmp_path / "cells.h5ad").exists()
