from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import anndata
import numpy as np
import pytest

from stagekit.cli import main

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def shared_file(name: str) -> Path:
    """A real dataset from the shared data folder beside the clone. Missing, the test is skipped with the reason,
    or fails where STAGEKIT_REQUIRE_SHARED is set (CI), so CI can never pass by skipping."""
    path = SHARED / name
    if not path.is_file():
        reason = f"{path} is missing: put the shared data folder beside the clone (../shared/data)"
        if os.environ.get("STAGEKIT_REQUIRE_SHARED"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def kang() -> Path:
    """Kang et al. 2018 PBMC (8,684 cells, 4 types in obs.cluster_id), raw counts."""
    return shared_file("kang2018_muscat_subset.h5ad")


@pytest.fixture
def existing_output(tmp_path: Path) -> Path:
    """An output file that a failing command must leave as it was."""
    out = tmp_path / "out.stk"
    out.write_bytes(b"precious")
    return out


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run `stagekit ARGS` in this process; returns (exit code, stdout, stderr)."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def run_subprocess(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "stagekit", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, **kwargs)


@pytest.fixture(scope="session")
def small_h5ad(tmp_path_factory, kang) -> Path:
    """600 real PBMC cells x the 400 most expressed genes, with labels and donors."""
    adata = anndata.read_h5ad(kang)
    rng = np.random.default_rng(0)
    adata = adata[np.sort(rng.choice(adata.n_obs, 600, replace=False))]
    top = np.argsort(-np.asarray(adata.X.sum(0)).ravel())[:400]
    adata = adata[:, np.sort(top)].copy()
    path = tmp_path_factory.mktemp("data") / "small.h5ad"
    adata.write_h5ad(path)
    return path


@pytest.fixture(scope="session")
def small_bundle(tmp_path_factory, small_h5ad) -> Path:
    from stagekit.stages.registry import read_config, run_phase
    from stagekit.stages.spec import PhaseRequest

    config = read_config("pretrain", "vae", [("training.epochs", 2, "test"), ("data.label_key", "cluster_id", "t"),
                                                ("data.batch_key", "sample_id", "t")])
    out = tmp_path_factory.mktemp("bundle") / "small.stk"
    return run_phase(PhaseRequest(config, out, [small_h5ad], quiet=True))


@pytest.fixture(scope="session")
def stim_h5ad(tmp_path_factory) -> Path:
    """Kang IFN-beta stimulation (1,556 real PBMCs, ctrl/stim x 5 cell types) with the donor as a column
    (sample_id ctrl101 / stim101: donor 101)."""
    adata = anndata.read_h5ad(shared_file("kang2018_muscat_example_sce.h5ad"))
    adata.obs["donor"] = adata.obs["sample_id"].astype(str).str[-3:]
    path = tmp_path_factory.mktemp("stim") / "stim.h5ad"
    adata.write_h5ad(path)
    return path


GENERATOR = ROOT.parent / "shared" / "tools" / "make_xenium_synthetic.py"


def synthetic_xenium(folder: Path, seed: int, size: int = 96) -> Path:
    """A Xenium-format sample with known truth from the shared generator (irregular touching cells, off-centre
    nuclei, 10 % of nuclei missed)."""
    if not GENERATOR.is_file():
        reason = f"{GENERATOR} is missing: put the shared folder beside the clone"
        if os.environ.get("STAGEKIT_REQUIRE_SHARED"):
            pytest.fail(reason)
        pytest.skip(reason)
    subprocess.run([sys.executable, str(GENERATOR), "--layout", "tissue", "--missed_nuclei", "0.1", "--seed",
                    str(seed), "--width", str(size), "--height", str(size), "--out", str(folder)], check=True,
                   capture_output=True)
    return folder


@pytest.fixture(scope="session")
def xenium_small(tmp_path_factory) -> Path:
    """96 x 96 micron of synthetic tissue (~4,000 transcripts, ~30 nuclei)."""
    return synthetic_xenium(tmp_path_factory.mktemp("xenium") / "s0", seed=0)
