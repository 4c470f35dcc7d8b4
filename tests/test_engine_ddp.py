"""The engine under 2-process CPU DDP: validation metrics come from the whole validation set gathered from both
processes (not per-process or per-batch averages), and rank 0 writes them to the live logs; each process's RNG
stream is stored and restored on resume; a signal or a stop on one process is applied by all at the same step."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "scripts" / "ddp_engine.py"


@pytest.mark.slow
def test_whole_set_metrics_and_per_rank_rng_under_ddp(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=300,
                          env=os.environ | {"PYTHONWARNINGS": "ignore", "LIVE_LOG_DIR": str(tmp_path / "logs")},
                          cwd=SCRIPT.parents[2])
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["val_n"] == [report["n_val"]] * 4  # every validation cell, from both processes, once
    assert report["val_auroc"] == pytest.approx(report["recomputed_auroc"], abs=1e-6) and report["val_auroc"] > 0.75
    assert report["rng_rows"] == 2 and report["rng_rows_differ"]
    # a signal to one process stops both at the same step; resume restores each process's RNG stream
    assert report["interrupted"] == "interrupted" and report["resumed_equal"]
    # a guard that fires on one process only stops both, with its message, at the last good state
    assert report["stopped"] == "stopped" and report["stop_message"] == "rank 1 saw a collapse"
    assert report["stopped_epochs"] == 1
    assert report["two_phase_ranks_equal"]  # both processes trained the unfrozen layer identically in phase 2
    # live logs: one run folder, written by rank 0, with the gathered validation figures
    assert report["log_folders"] == ["version_0"] and report["logged_val_n"] == [report["n_val"]] * 4
