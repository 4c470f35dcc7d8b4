import subprocess
import sys
import zipfile

import pytest

from tests.conftest import ROOT, run_cli


def test_help_does_not_import_torch():
    code = ("import sys\nfrom stagekit.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip().endswith("NO-TORCH")
    for command in ("pretrain", "info", "presets"):
        assert command in proc.stdout


def test_python_dash_m_and_usage_error_exit_codes():
    proc = subprocess.run([sys.executable, "-m", "stagekit", "pretrain", "--no-such-flag"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "No such option" in proc.stderr and "Traceback" not in proc.stderr


def test_missing_preset_and_output_are_user_errors(capsys, small_h5ad):
    code, _, err = run_cli(capsys, "pretrain", small_h5ad, "-o", "x.stk")
    assert code == 2 and "--preset" in err
    code, _, err = run_cli(capsys, "pretrain", "-p", "vae", small_h5ad)
    assert code == 2 and "-o/--output" in err


@pytest.mark.slow
def test_wheel_ships_presets(tmp_path):
    """Presets must work from an installed (non-editable) package."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True, timeout=300)
    wheel = next(tmp_path.glob("stagekit-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "stagekit/presets/vae.toml" in names
    assert "stagekit/demo_data/pancreas_human_mouse.h5ad" in names
    assert "stagekit/demo_data/orthologs_human_mouse_ensembl105.csv" in names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    proc = subprocess.run([sys.executable, "-c", "from stagekit.config import list_presets; "
                           "print([p['path'] for p in list_presets()])"],
                          capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": str(target)}, timeout=60)
    assert str(target / "stagekit" / "presets" / "vae.toml") in proc.stdout, proc.stderr


def test_an_option_of_several_pipelines_shows_each_pipelines_words(capsys):
    """`extract --backed` means a different thing per pipeline: --help says both; pipelines with the same words
    share them."""
    code, out, _ = run_cli(capsys, "extract", "--help")
    text = " ".join(out.replace("│", " ").split())
    assert code == 0 and "semi-supervised annotation: read the cells from disk" in text
    assert "perturbation transfer: read the screen from disk" in text
    code, out, _ = run_cli(capsys, "pretrain", "--help")
    assert "phenotype clustering, cross-species integration: train from disk" in " ".join(
        out.replace("│", " ").split())
