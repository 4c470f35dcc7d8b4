from pathlib import Path

import pytest

from stagekit.config.loader import parse_override
from stagekit.errors import UserError
from stagekit.stages.registry import read_config
from tests.conftest import run_cli


def test_defaults_preset_and_overrides_with_sources():
    config = read_config("pretrain", "vae", [("training.lr", 3e-3, "--set"), ("training.seed", 7, "--seed")])
    assert config["training"]["lr"] == 3e-3 and config.sources["training.lr"] == "--set"
    assert config["training"]["seed"] == 7 and config.sources["training.seed"] == "--seed"
    assert config.sources["model.n_latent"] == "preset vae.toml"
    assert config.sources["training.checkpoint_every"] == "default"


def test_unknown_key_names_key_file_and_closest_key(tmp_path: Path):
    preset = tmp_path / "mine.toml"
    preset.write_text('[preset]\nstage = "pretrain"\nmodel = "vae"\n[training]\nlearning_rat = 0.1\n')
    with pytest.raises(UserError, match=r"mine.toml: unknown key 'training.learning_rat'; did you mean"):
        read_config("pretrain", str(preset), [])
    with pytest.raises(UserError, match=r"unknown key 'training.n_latent'; did you mean 'model.n_latent'"):
        read_config("pretrain", "vae", [("training.n_latent", 3, "--set")])


def test_wrong_type_and_choice_are_errors():
    with pytest.raises(UserError, match=r"'training.epochs' must be an integer"):
        read_config("pretrain", "vae", [("training.epochs", "ten", "--set")])
    with pytest.raises(UserError, match=r"'model.likelihood' must be one of"):
        read_config("pretrain", "vae", [("model.likelihood", "poisson", "--set")])
    with pytest.raises(UserError, match=r"'training.lr' must be a number"):
        read_config("pretrain", "vae", [("training.lr", True, "--set")])


def test_int_widens_to_float_and_override_parsing():
    config = read_config("pretrain", "vae", [("training.lr", 1, "--set")])
    assert isinstance(config["training"]["lr"], float)
    assert parse_override("model.n_hidden=[64, 32]") == ("model.n_hidden", [64, 32])
    assert parse_override("data.layer=counts") == ("data.layer", "counts")
    with pytest.raises(UserError, match="KEY=VALUE"):
        parse_override("training.lr")


def test_preset_for_another_stage_and_unknown_preset(tmp_path: Path):
    preset = tmp_path / "x.toml"
    preset.write_text('[preset]\nstage = "align"\nmodel = "vae"\n')
    with pytest.raises(UserError, match="for `stagekit align`"):
        read_config("pretrain", str(preset), [])
    with pytest.raises(UserError, match="did you mean 'vae'"):
        read_config("pretrain", "vea", [])


def test_print_config_shows_sources_and_exits_zero(capsys):
    code, out, err = run_cli(capsys, "pretrain", "--preset", "vae", "--set", "training.epochs=3", "--print-config")
    assert code == 0
    assert "epochs = 3" in out and "# --set" in out and "# preset vae.toml" in out
    # the printed config is itself a valid preset
    import tomllib
    assert tomllib.loads(out)["training"]["epochs"] == 3


def test_cli_config_error_is_one_line_exit_2(capsys, tmp_path):
    code, out, err = run_cli(capsys, "pretrain", "--preset", "vae", "--set", "training.lrr=1", "-o", tmp_path / "x.stk",
                             tmp_path / "missing.h5ad")
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0 and "did you mean 'training.lr'" in err and "Traceback" not in err


def test_presets_list_and_show(capsys):
    code, out, _ = run_cli(capsys, "presets", "list")
    assert code == 0 and "vae" in out
    code, out, _ = run_cli(capsys, "presets", "show", "vae")
    assert code == 0 and 'model = "vae"' in out


def test_cli_unknown_key_in_a_preset_file_is_one_line_with_the_nearest_key(capsys, tmp_path):
    preset = tmp_path / "mine.toml"
    preset.write_text('[preset]\nstage = "pretrain"\nmodel = "vae"\n[model]\nn_latnet = 8\n')
    code, out, err = run_cli(capsys, "pretrain", "--preset", preset, "-o", tmp_path / "x.stk",
                             tmp_path / "missing.h5ad")
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.strip().count("\n") == 0
    assert "mine.toml: unknown key 'model.n_latnet'" in err and "did you mean 'model.n_latent'" in err
