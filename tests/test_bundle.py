import json
import pickle
import re
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


class _Trap:
    """Unpickling this creates `marker` (pickle calls Path.touch via __reduce__)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_bundle_never_unpickles(tmp_path: Path, capsys):
    """Pickle payloads in the weights and the resume state come back as bytes or are refused; never unpickled."""
    marker = tmp_path / "unpickled"
    payload = np.void(pickle.dumps(_Trap(marker)))
    pickle.loads(payload.tobytes())  # the trap works: unpickling it creates the marker
    assert marker.exists()
    marker.unlink()
    path = write_bundle(_bundle(), tmp_path / "a.stk")
    with h5py.File(path, "r+") as f:
        f["weights"].create_dataset("evil", data=payload)  # opaque bytes, as a pickling writer would store them
        node = f["resume"].create_dataset("evil", data=payload)
        node.attrs.update({"kind": "array", "key_type": "str"})
        f["resume/loop"].create_dataset("blob", data=np.frombuffer(payload.tobytes(), np.uint8))
        f["resume/loop/blob"].attrs.update({"kind": "array", "key_type": "str"})
    with pytest.raises(UserError, match="corrupted"):  # the checksums do not cover what was slipped in
        read_bundle(path, resume=True)
    code, _, err = run_cli(capsys, "info", path, "--verify")
    assert code == 2 and "checksum mismatch" in err
    with h5py.File(path, "r+") as f:  # now with matching checksums: read, as bytes
        for name in ("weights", "resume"):
            f[name].attrs["sha256"] = bundle_format._digest(bundle_format._arrays(f[name]))
    b = read_bundle(path, resume=True)
    assert b.weights["evil"].tobytes() == payload.tobytes() and b.resume["evil"].tobytes() == payload.tobytes()
    assert run_cli(capsys, "info", path, "--verify")[0] == 0
    assert not marker.exists()


def _cluster_bundle() -> Bundle:
    b = _bundle()
    b.stage, b.results = "cluster-search", {"centres": np.arange(12, dtype=np.float32).reshape(4, 3),
                                            "assignments": np.arange(5) % 4, "key": np.array(b"abc")}
    return b


def _flip_bit(path: Path, dataset: str) -> None:
    """Flip one bit inside `dataset`'s stored bytes, as a failing disk would (h5py is not told)."""
    with h5py.File(path, "r") as f:
        node = f[dataset]
        offset, size = node.id.get_offset(), node.id.get_storage_size()
    assert offset is not None and size
    data = bytearray(path.read_bytes())
    data[offset + size // 2] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(("dataset", "part"), [("results/centres", "results"), ("data/var_names", "gene names"),
                                               ("categories/labels", "categories")])
def test_bit_flips_in_results_genes_and_categories_are_detected(tmp_path: Path, capsys, dataset: str, part: str):
    path = write_bundle(_cluster_bundle(), tmp_path / "c.stk")
    b = read_bundle(path)
    assert np.array_equal(b.results["centres"], np.arange(12).reshape(4, 3)) and bytes(b.results["key"]) == b"abc"
    assert verify_bundle(path) == []
    if dataset.startswith("data/") or dataset.startswith("categories/"):  # vlen strings live in the global heap
        with h5py.File(path, "r+") as f:
            values = f[dataset][()]
            values[0] = values[0][:-1] + bytes([values[0][-1] ^ 1])
            f[dataset][...] = values
    else:
        _flip_bit(path, dataset)
    with pytest.raises(UserError, match=f"{part} are corrupted"):
        read_bundle(path, weights=False)
    assert verify_bundle(path) == [f"{part}: checksum mismatch"]
    code, _, err = run_cli(capsys, "info", path, "--verify")
    assert code == 2 and f"{part}: checksum mismatch" in err and len(err.strip().splitlines()) == 1


def test_bundles_written_before_the_new_checksums_still_read(tmp_path: Path, capsys):
    path = write_bundle(_cluster_bundle(), tmp_path / "old.stk")
    with h5py.File(path, "r+") as f:  # what earlier versions wrote: checksums on weights and resume state only
        for name in ("results", "data/var_names", "categories"):
            del f[name].attrs["sha256"]
    assert read_bundle(path).results["centres"].shape == (4, 3)
    unchecked: list[str] = []
    assert verify_bundle(path, unchecked) == [] and unchecked == ["results", "gene names", "categories"]
    code, _, err = run_cli(capsys, "info", path, "--verify")
    assert code == 0 and "no checksum, written by an older stagekit" in err


def test_info_does_not_read_results(tmp_path: Path, capsys, monkeypatch):
    b = _cluster_bundle()
    b.results["soft_assignments"] = np.random.default_rng(0).random((20_000, 30), dtype=np.float32)
    path = write_bundle(b, tmp_path / "big.stk")
    code, before, _ = run_cli(capsys, "info", path, "--json")
    assert code == 0
    read = []
    original = h5py.Dataset.__getitem__

    def spy(self, key):
        read.append(self.name)
        return original(self, key)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    code, out, _ = run_cli(capsys, "info", path, "--json")
    assert code == 0 and out == before and json.loads(out)["stage"] == "cluster-search"
    assert read and not [name for name in read if name.startswith("/results")], read
    assert read_bundle(path, weights=False, results=False).results == {}
    assert set(read_bundle(path, weights=False).results) == {"centres", "assignments", "key", "soft_assignments"}


def test_incomplete_bundle_is_one_line(tmp_path: Path, capsys):
    path = tmp_path / "half.stk"
    with h5py.File(path, "w") as f:
        f.attrs.update({"format": bundle_format.FORMAT, "format_version": 1})
    message = "half.stk: bundle is incomplete (missing 'stage'); it was not written by stagekit or was truncated"
    with pytest.raises(UserError, match=re.escape(message)):
        read_bundle(path)
    for args in (["info", path], ["info", path, "--verify", "--json"]):
        code, out, err = run_cli(capsys, *args)
        assert code == 2 and out == "" and message in err and len(err.strip().splitlines()) == 1, err
    full = write_bundle(_bundle(), tmp_path / "full.stk")
    with h5py.File(full, "r+") as f:
        del f["results"]
    with pytest.raises(UserError, match=re.escape("bundle is incomplete (missing 'results')")):
        read_bundle(full)
    with h5py.File(full, "r+") as f:
        f.create_group("results")
        del f["lineage"]
        f["lineage"] = 3  # present, but not what stagekit writes
    with pytest.raises(UserError, match="bundle is damaged"):
        read_bundle(full)


def test_info_help_states_exit_2_for_a_mismatch(capsys):
    code, out, _ = run_cli(capsys, "info", "--help")
    assert code == 0 and "exit 2 on a mismatch" in " ".join(out.split())


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
    assert code == 0 and "lineage" in out and "metrics of the saved weights" in out and "train_loss" in out


def test_h5ls_shows_layout(small_bundle: Path):
    with h5py.File(small_bundle) as f:
        assert {"config", "lineage", "data", "weights", "metrics", "versions", "categories"} <= set(f)
        assert "resume" not in f  # a final bundle holds weights and metadata only (unless --keep-resume)
        assert f["weights"].attrs["sha256"] and f.attrs["format_version"] == 1


def test_final_bundles_are_compact_and_keep_resume_stores_the_weights_once(small_h5ad, small_bundle, tmp_path,
                                                                           capsys):
    """Without --keep-resume a final bundle has no optimizer state; with it, the resume state refers to /weights
    instead of copying them, and --resume of it continues (here: nothing left to train)."""
    code, _, err = run_cli(capsys, "pretrain", "--preset", "vae", small_h5ad, "--set", "training.epochs=2",
                           "--set", "data.label_key=cluster_id", "--set", "data.batch_key=sample_id", "-q",
                           "--keep-resume", "-o", tmp_path / "kept.stk")
    assert code == 0, err
    plain, kept = read_bundle(small_bundle), read_bundle(tmp_path / "kept.stk", resume=True)
    assert "resume" not in plain.sizes and kept.sizes["resume"] > 0
    model = kept.resume["model"]
    assert all(set(t) == {"__weights__", "dtype"} for t in model.values())  # the last state is the kept one
    assert kept.sizes["resume"] < 2.5 * kept.sizes["weights"]  # Adam's two moments, not a third copy
    code, out, err = run_cli(capsys, "info", tmp_path / "kept.stk")
    assert code == 0 and "resume" in out and "MB" in out, err
    code, _, err = run_cli(capsys, "pretrain", small_h5ad, "--resume", small_bundle, "-o", tmp_path / "x.stk")
    assert code == 2 and "--keep-resume" in err, err
    code, _, err = run_cli(capsys, "pretrain", small_h5ad, "--resume", tmp_path / "kept.stk", "-q", "-o",
                           tmp_path / "again.stk")
    assert code == 0, err
    again = read_bundle(tmp_path / "again.stk")
    assert all(np.array_equal(again.weights[k], kept.weights[k]) for k in kept.weights)


def test_weights_that_do_not_fit_the_model_are_a_user_error_naming_them():
    import torch

    from stagekit.train.state import load_weights, weights_to_numpy

    model = torch.nn.Linear(3, 2)
    stored = weights_to_numpy(torch.nn.Linear(3, 2))
    load_weights(model, stored, "ok.stk")
    assert np.array_equal(model.weight.detach().numpy(), stored["weight"])
    with pytest.raises(UserError, match=r"old\.stk: .*\(bias differ\).*train it again"):
        load_weights(model, {"weight": stored["weight"]}, "old.stk")
    with pytest.raises(UserError, match=r"\(weight differ\)"):
        load_weights(model, stored | {"weight": np.zeros((2, 4), np.float32)}, "old.stk")


def test_a_crafted_object_array_in_results_is_reported_as_damaged(tmp_path: Path, capsys):
    """A ragged (variable-length integer) dataset is a kind stagekit never writes: one line, no traceback, and
    nothing is unpickled."""
    path = write_bundle(_cluster_bundle(), tmp_path / "c.stk")
    with h5py.File(path, "r+") as f:
        ragged = f["results"].create_dataset("crafted", (2,), dtype=h5py.vlen_dtype(np.int64))
        ragged[0], ragged[1] = np.arange(3), np.arange(5)
    code, _, err = run_cli(capsys, "info", path, "--verify")
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "results: unreadable" in err and "never writes" in err
    with pytest.raises(UserError, match="results damaged"):
        read_bundle(path, weights=False)
