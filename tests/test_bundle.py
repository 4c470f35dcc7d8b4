import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from stagekit.bundle import Bundle, read_bundle, verify_bundle, write_bundle
from stagekit.bundle import format as bundle_format
from stagekit.errors import UserError
from tests.conftest import run_cli


def _bundle() -> Bundle:
    resume = {"optimizer": {"state": {0: {"step": 3.0, "exp_avg": np.arange(4.0)}},
                            "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "foreach": None, "name": "a"}]},
              "rng": {"torch": np.arange(5, dtype=np.uint8)}, "loop": {"epoch": 2, "best": float("inf")}}
    return Bundle(stage="pretrain", model="vae", config_toml='[training]\nepochs = 2\n', seed=3,
                  weights={"enc.weight": np.ones((3, 2), np.float32), "enc.bias": np.zeros(3, np.float32)},
                  var_names=["A", "B"], categories={"labels": ["t", "b"]}, history={"train_loss": [3.0, 2.0]},
                  final_metrics={"val_loss": 1.5}, resume=resume, data={"path": "x.h5ad", "n_obs": 5})


def test_round_trip(tmp_path: Path):
    path = write_bundle(_bundle(), tmp_path / "a.stk")
    b = read_bundle(path, resume=True)
    assert b.stage == "pretrain" and b.seed == 3 and b.var_names == ["A", "B"]
    assert np.array_equal(b.weights["enc.weight"], np.ones((3, 2)))
    assert b.history["train_loss"] == [3.0, 2.0] and b.final_metrics == {"val_loss": 1.5}
    assert b.categories == {"labels": ["t", "b"]} and b.data["n_obs"] == 5
    opt = b.resume["optimizer"]
    assert opt["state"][0]["step"] == 3.0 and np.array_equal(opt["state"][0]["exp_avg"], np.arange(4.0))
    assert opt["param_groups"][0]["betas"] == (0.9, 0.999) and opt["param_groups"][0]["foreach"] is None
    assert b.resume["loop"]["best"] == float("inf")
    assert verify_bundle(path) == []


def test_corrupted_weights_are_detected(tmp_path: Path, capsys):
    path = write_bundle(_bundle(), tmp_path / "a.stk")
    with h5py.File(path, "r+") as f:
        f["weights/enc.weight"][0, 0] = 7.0
    with pytest.raises(UserError, match="weights are corrupted"):
        read_bundle(path)
    assert verify_bundle(path) == ["weights: checksum mismatch"]
    code, _, err = run_cli(capsys, "info", path, "--verify")
    assert code == 2 and "checksum mismatch" in err


def test_wrong_stage_newer_format_and_not_a_bundle(tmp_path: Path):
    path = write_bundle(_bundle(), tmp_path / "a.stk")
    with pytest.raises(UserError, match="is a 'pretrain' bundle; `stagekit align` needs a 'finetune' bundle"):
        read_bundle(path, expect_stage=("finetune",), command="align")
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(UserError, match="newer than this stagekit"):
        read_bundle(path)
    text = tmp_path / "notes.stk"
    text.write_text("hello")
    with pytest.raises(UserError, match="not an HDF5 file"):
        read_bundle(text)
    with pytest.raises(UserError, match="does not exist"):
        read_bundle(tmp_path / "nothing.stk")


def test_failed_write_leaves_existing_output_untouched(tmp_path: Path, monkeypatch):
    path = write_bundle(_bundle(), tmp_path / "a.stk")
    before = path.read_bytes()

    def explode(f, b):
        f.attrs["format"] = "half written"
        raise RuntimeError("disk full")

    monkeypatch.setattr(bundle_format, "_fill", explode)
    with pytest.raises(RuntimeError):
        write_bundle(_bundle(), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.stk"]


def test_bundle_never_unpickles(tmp_path: Path):
    path = write_bundle(_bundle(), tmp_path / "a.stk")
    with h5py.File(path) as f:
        kinds = []
        f.visititems(lambda n, node: kinds.append(node.dtype.kind) if isinstance(node, h5py.Dataset) else None)
    assert "V" not in kinds  # no opaque (pickled) blobs


def test_info_json_and_no_torch_import(small_bundle: Path):
    code = ("import sys\nfrom stagekit.cli import main\n"
            f"try:\n    main(['info', {str(small_bundle)!r}, '--json', '--verify'])\nexcept SystemExit as e:\n"
            "    assert not e.code, e.code\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stderr.strip().endswith("NO-TORCH"), proc.stderr
    info = json.loads(proc.stdout)
    assert info["stage"] == "pretrain" and info["model"] == "vae" and info["verified"] is True
    assert info["categories"]["labels"] == ["B cells", "CD14+ Monocytes", "CD4 T cells", "NK cells"]
    assert info["config"]["training"]["epochs"] == 2 and len(info["history"]["train_loss"]) == 2
    assert {"torch", "python", "anndata", "scvi-tools"} <= set(info["versions"])


def test_info_rich_summary(small_bundle: Path, capsys):
    code, out, _ = run_cli(capsys, "info", small_bundle)
    assert code == 0 and "lineage" in out and "final metrics" in out and "train_loss" in out


def test_h5ls_shows_layout(small_bundle: Path):
    with h5py.File(small_bundle) as f:
        assert {"config", "lineage", "data", "weights", "metrics", "resume", "versions", "categories"} <= set(f)
        assert f["weights"].attrs["sha256"] and f.attrs["format_version"] == 1
