"""Faults around the data: unwritable output folders, temp files of killed writers, start-up cost, re-hashing."""

import errno
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import anndata
import numpy as np
import pytest
import scipy.sparse as sp

from stagekit.bundle import Bundle, ensure_writable_folder, read_bundle, write_bundle
from stagekit.data import anndata_io
from stagekit.errors import UserError


def _bundle() -> Bundle:
    return Bundle(stage="pretrain", model="vae", config_toml="", seed=0, weights={"w": np.ones(3, np.float32)})


def test_read_only_folder_is_a_user_error(tmp_path: Path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        probe = folder / "probe"
        try:
            probe.touch()
        except PermissionError:
            pass
        else:  # root ignores permission bits: nothing to test this way (the test below covers it)
            probe.unlink()
            pytest.skip("running as root: a 0o555 folder is still writable")
        with pytest.raises(UserError, match="locked is not writable"):
            ensure_writable_folder(folder / "out.stk")
        with pytest.raises(UserError, match="locked is not writable"):
            write_bundle(_bundle(), folder / "out.stk")
    finally:
        folder.chmod(0o755)


def test_read_only_file_system_is_a_user_error(tmp_path: Path, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    existing = write_bundle(_bundle(), tmp_path / "out.stk")
    before = existing.read_bytes()
    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    message = f"output folder {tmp_path} is not writable (Read-only file system)"
    for target in (tmp_path / "out.stk", tmp_path):  # an output file, or the folder itself
        with pytest.raises(UserError, match="^" + re.escape(message)):
            ensure_writable_folder(target)
    with pytest.raises(UserError, match="not writable"):
        write_bundle(_bundle(), existing)
    assert existing.read_bytes() == before
    with pytest.raises(UserError, match="does not exist"):
        ensure_writable_folder(tmp_path / "missing" / "out.stk")
    monkeypatch.undo()
    ensure_writable_folder(tmp_path / "out.stk")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.stk"]  # the probe is gone


def test_temp_files_of_killed_writers_are_removed(tmp_path: Path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # reaped: its pid names no process (until reused, which is rare within a test)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        left = tmp_path / f".out.stk.{dead.pid}.tmp"
        running = tmp_path / f".out.stk.{live.pid}.tmp"
        other_output = tmp_path / f".other.stk.{dead.pid}.tmp"
        not_ours = tmp_path / ".out.stk.notes.tmp"
        for path in (left, running, other_output, not_ours):
            path.write_bytes(b"half a bundle")
        write_bundle(_bundle(), tmp_path / "out.stk")
        assert not left.exists()  # its writer is gone
        assert running.exists() and other_output.exists() and not_ours.exists()
        assert read_bundle(tmp_path / "out.stk").stage == "pretrain"
    finally:
        live.kill()
        live.wait()


def test_count_likelihoods_do_not_load_scvi_tools_until_used():
    code = ("import sys\nimport stagekit.losses.counts, stagekit.models.vae, stagekit.models.saturn\n"
            "print('scvi' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "False", proc.stderr


def test_input_file_is_hashed_once_per_matrix(tmp_path: Path, monkeypatch):
    path = tmp_path / "d.h5ad"
    anndata.AnnData(sp.csr_matrix(np.ones((6, 4), np.float32))).write_h5ad(path)
    hashed = []
    monkeypatch.setattr(anndata_io, "file_sha256", lambda p: hashed.append(p) or "f00d")
    for backed in (False, True):
        hashed.clear()
        counts = anndata_io.load_counts(path, backed=backed)
        prints = [counts.fingerprint() for _ in range(3)]  # one per checkpoint
        prints.append(counts.select_genes(np.arange(2)).fingerprint())  # the same file
        assert len(hashed) == 1 and all(p["sha256"] == "f00d" for p in prints)
        assert prints[-1]["n_vars"] == 2
