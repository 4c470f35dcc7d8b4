"""Commands find phases through the registry: an unknown (command, model) is a user error, not a wrong branch."""

from pathlib import Path

from stagekit.bundle import read_bundle, write_bundle
from stagekit.stages.registry import phases
from tests.conftest import run_cli


def test_every_phase_declares_callables_for_its_commands():
    for spec in phases():
        assert callable(spec.train), spec
        assert spec.cells or spec.write_outputs, f"{spec.command} {spec.model}: extract would have nothing to write"
        assert spec.report, f"{spec.command} {spec.model}: evaluate would have nothing to score"


def test_extract_of_an_unknown_finetune_bundle_is_a_user_error(capsys, tmp_path: Path, small_bundle: Path):
    bundle = read_bundle(small_bundle)
    bundle.stage, bundle.model = "finetune", "saturn"  # a kind this version cannot read
    odd = write_bundle(bundle, tmp_path / "odd.stk")
    code, out, err = run_cli(capsys, "extract", odd, "-o", tmp_path / "cells.h5ad")
    assert code == 2 and "Traceback" not in err, err
    assert "no 'finetune' phase for model 'saturn'" in err and "dec" in err
    assert not (tmp_path / "cells.h5ad").exists()


def test_option_of_another_model_is_refused_before_training(capsys, tmp_path: Path, small_h5ad: Path):
    code, _, err = run_cli(capsys, "pretrain", "-p", "vae", small_h5ad, "--species", "human", "-o", tmp_path / "o.stk")
    assert code == 2 and "--species does not apply" in err and "model 'saturn'" in err, err
