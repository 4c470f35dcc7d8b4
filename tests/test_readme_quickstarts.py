"""The README's quick starts, run end to end as bash scripts on small data.

Each block under "## Quick starts" runs in a fresh folder whose `../shared/data/` holds small subsets of the
real files it names (the same columns, a few hundred cells a group), with the training commands cut to one or
two epochs. What is checked is that every command of the block runs as written and writes its output; the
figures each block reports come from the full data (docs/benchmarks.md).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import anndata
import numpy as np
import pytest

from tests.conftest import GENERATOR, ROOT, shared_file

pytestmark = pytest.mark.slow

TRAINING_COMMANDS = ("pretrain", "finetune", "segment", "align")
SHORT = "--set training.epochs=2"
SHORT_UNFREEZE = "--set phase_c.epochs=1 --set phase_d.epochs=1 --set phase_e.epochs=1"


def quick_starts() -> dict[str, str]:
    """Title -> bash code of every block under the README's "## Quick starts" heading."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Quick starts", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^### (.+?)\n.*?^```bash\n(.*?)^```", section, re.S | re.M)
    return {title.split(":")[0].strip(): code for title, code in blocks}


def shortened(code: str, perturbation: bool) -> str:
    """The block with continuation lines joined, every training command cut to a few epochs and evaluate without
    its slowest extras (the UMAP; cell-eval for perturbation models), which their own tests cover. `stagekit
    demo -o DIR` runs as written, with its targets checked, in tests/cross_species/test_saturn_pretrain.py
    (test_demo_meets_the_integration_targets): here only its parser is called."""
    lines = []
    for line in code.replace("\\\n", " ").splitlines():
        command = line.split("#", 1)[0].split()
        if command[:2] == ["stagekit", "demo"]:
            line = "stagekit demo --help > /dev/null"
        elif command[:1] == ["stagekit"] and len(command) > 1:
            if command[1] in TRAINING_COMMANDS:
                line = f"{line.split('#', 1)[0].rstrip()} {SHORT}"
            elif command[1] == "unfreeze":
                line = f"{line.split('#', 1)[0].rstrip()} {SHORT_UNFREEZE}"
            elif command[1] == "evaluate":
                line = f"{line.split('#', 1)[0].rstrip()} --no-umap" + (" --no-cell-eval" if perturbation else "")
        if command[:2] == ["python", str(Path("..") / "shared" / "tools" / GENERATOR.name)]:
            line = f"{line.split('#', 1)[0].rstrip()} --width 96 --height 96"
        lines.append(line)
    return "\n".join(lines) + "\n"


def small_copy(name: str, destination: Path, group_key: str | None, per_group: int) -> None:
    """At most `per_group` cells of every `group_key` value of a real file (all its columns), seeded."""
    adata = anndata.read_h5ad(shared_file(name))
    rng = np.random.default_rng(0)
    groups = adata.obs[group_key].astype(str).to_numpy() if group_key else np.zeros(adata.n_obs, dtype=str)
    keep = np.concatenate([rng.permutation(np.flatnonzero(groups == g))[:per_group] for g in np.unique(groups)])
    adata[np.sort(keep)].copy().write_h5ad(destination / name)


@pytest.fixture(scope="module")
def small_shared(tmp_path_factory) -> Path:
    """A `shared/` folder with small copies of the files the quick starts read and the real tools folder."""
    shared = tmp_path_factory.mktemp("readme") / "shared"
    data = shared / "data"
    data.mkdir(parents=True)
    small_copy("kang2018_muscat_subset.h5ad", data, "cluster_id", 200)
    small_copy("kang2018_muscat_example_sce.h5ad", data, None, 10**6)
    small_copy("papalexi2021_sceptre_lowmoi.h5ad", data, "perturbation", 60)
    if not GENERATOR.is_file():
        reason = f"{GENERATOR} is missing: put the shared folder beside the clone"
        pytest.fail(reason) if os.environ.get("STAGEKIT_REQUIRE_SHARED") else pytest.skip(reason)
    (shared / "tools").symlink_to(GENERATOR.parent)
    return shared


def test_readme_has_a_quick_start_per_pipeline():
    titles = set(quick_starts())
    assert {"Phenotype clustering", "Cross-species integration", "Cell annotation from few labels",
            "Perturbation response", "Perturbation transfer", "Cell segmentation"} <= titles
    for code in quick_starts().values():
        assert len([line for line in code.splitlines() if line.strip() and not line.startswith("#")]) <= 8


@pytest.mark.parametrize("title", sorted(quick_starts()))
def test_quick_start_runs(title, small_shared):
    work = small_shared.parent / re.sub(r"\W+", "_", title)
    work.mkdir()
    script = "set -euo pipefail\nmkdir -p run\n" + shortened(quick_starts()[title], title.startswith("Perturbation"))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    run = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, f"{title}: exit {run.returncode}\n{run.stderr[-3000:]}"
    commands = "\n".join(line.split("#", 1)[0] for line in script.splitlines())
    outputs = re.findall(r"-o (run/\S+)", commands)
    missing = [path for path in outputs if not (work / path.rstrip("/")).exists()]
    assert not missing, f"{title}: no {missing}"
