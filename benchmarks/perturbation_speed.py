"""`pretrain --preset transition` training speed and memory against Arc Institute's STATE (arc-state), side by side.

Same data (Papalexi 2021 ECCITE-seq CRISPRko, THP-1: 20,729 cells x 299 genes; the `unassigned` cells left out, so
16,192 cells of 25 targets + control, one context), same gene space (the 299 log-normalised genes, no PCA), same
shapes: state_sm-style transition model, hidden 128, 4 transformer layers, 4 heads, cell sets of 32 cells, 16 sets
per optimizer step, energy distance, no gene decoder, no validation, CPU, 2 torch threads.

Each side trains twice, each time in a fresh process: N and 2N optimizer steps. CPU time (user + sys) and peak RSS
of each run's process tree come from wait4 on that child alone. CPU-s per step = (cpu(2N) - cpu(N)) /
(steps(2N) - steps(N)), which removes imports, data loading and start-up. Targets: stagekit >= 5x the steps per
CPU-second of arc-state, and the same or lower peak RSS. Reference measured earlier at these shapes: arc-state
3.3 CPU-s per step, 0.79 GB peak RSS.

CPU time is only comparable on a quiet machine: with 2 threads on 2 cores, another process on one core makes a
run's CPU time several-fold (torch's OpenMP threads spin while they wait). Each run therefore waits (--wait-quiet)
for the other processes to leave the cores free and runs beside a busy core are marked *; with --repeats R each
side runs R pairs and its figure takes the N-step run and the 2N-step run with the least CPU time (noise only adds
CPU time). The differences are kept at 10-20 CPU-s a side, well above the +-2 CPU-s start-up noise of a run. On a
quiet 2-core machine one repeat takes about 1.5 minutes for arc-state and 1.5 for stagekit.

arc-state 0.11.1 runs in its own venv, built on first use at benchmarks/.cache/arc-state-venv (torch pinned to
2.13.0, ~2.5 GB, 2-6 minutes) and reused while it imports; when it cannot be built the stagekit side still runs.
Its input (an .h5ad as `state tx preprocess_train` leaves it, every gene kept, and cell-load's TOML) is written to
a temporary folder; `--keep DIR` keeps it with the logs and outputs.

    python benchmarks/perturbation_speed.py [--steps 48] [--repeats 2] [--json out.json] [--only arc-state]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "papalexi2021_sceptre_lowmoi.h5ad"
CACHE = Path(__file__).resolve().parent / ".cache"
ARC_VENV = CACHE / "arc-state-venv"
ARC_STATE = "arc-state==0.11.1"
TORCH_PIN = "torch==2.13.0"
PERT_KEY, CONTROL, EXCLUDE, CONTEXT = "perturbation", "control", "unassigned", "THP-1"
BATCH_KEY = "bio_rep"  # arc-state needs a batch column; its random control mapping ignores it, as stagekit does here
TARGET_SUM = 1e4  # the same log-normalisation as stagekit's gene space: log1p(counts / total * 1e4)
BUSY = 0.2  # cores other processes may use during a run before its figures are flagged
REFERENCE = {"arc_state_cpu_s_per_step": 3.3, "arc_state_peak_rss_gb": 0.79}
SHAPES = {"hidden": 128, "n_layers": 4, "n_heads": 4, "cell_set_len": 32, "sets_per_step": 16, "loss": "energy",
          "genes": 299}


@dataclass(frozen=True)
class Data:
    """What both sides train on: the file, how stagekit reads it, and cell-load's obs columns for it."""

    path: Path
    label: str
    stagekit_args: tuple[str, ...]
    in_genes: bool  # stagekit works in the genes, no decoder (arc-state's shapes); else its preset's PCA + decoder
    arc_columns: tuple[tuple[str, str], ...]  # cell-load's pert_col, cell_type_key, batch_col
    arc_embed_key: str  # "" : cell-load reads X


PAPALEXI = Data(DATA, f"{DATA.name} ({SHAPES['genes']} genes, '{EXCLUDE}' dropped, one context)",
                ("--pert-key", PERT_KEY, "--control", CONTROL, "--exclude", EXCLUDE), True,
                (("pert_col", PERT_KEY), ("cell_type_key", "cell_type"), ("batch_col", "batch")), "X_hvg")


def screen_data(path: Path) -> Data:
    """A `make_screen.py` screen, read by both from the same file: stagekit with --backed and its preset's space
    (PCA-50 of the highly variable genes, a decoder to them), arc-state with cell-load reading X's rows (the
    genes in and out), the context as cell type (and as cell-load's required batch column)."""
    return Data(path, f"{path.name} (make_screen.py; stagekit --backed, PCA-50 + gene decoder; arc-state on X)",
                ("--pert-key", "perturbation", "--control", "control", "--context-key", "context", "--backed"),
                False, (("pert_col", "perturbation"), ("cell_type_key", "context"), ("batch_col", "context")), "")


@dataclass
class Run:
    """One training run in its own process: CPU seconds (user + sys) and peak RSS of its process tree."""

    steps: int
    cpu_s: float
    peak_rss_gb: float
    wall_s: float
    returncode: int
    log: str
    other_cores: float = 0.0  # CPU the rest of the machine used meanwhile, in cores (contention inflates cpu_s)
    loop_cpu_s: float = math.nan  # stagekit only: the CPU time its own history gives the training loop


@dataclass
class Plan:
    """What every side runs: N and 2N steps (`steps` for arc-state; `stagekit_steps`, or `stagekit_epochs` while
    stagekit has no training.max_steps: a stagekit step costs little, so its difference needs more of them to stand
    above start-up noise), `repeats` pairs, `threads`, waiting up to `wait_s` before each run for the rest of the
    machine to go quiet; inputs, outputs and logs in `tmp`."""

    steps: int
    stagekit_steps: int
    stagekit_epochs: int
    threads: int
    repeats: int
    wait_s: float
    tmp: Path
    stagekit_extra: list[str] = field(default_factory=list)  # further --set values for stagekit


@dataclass
class Side:
    """One side's runs: `pairs` of (N-step run, 2N-step run), one pair per repeat."""

    name: str
    version: str = ""
    command: str = ""
    pairs: list[list[Run]] = field(default_factory=list)
    note: str = ""

    @staticmethod
    def _pair_ok(pair: list[Run]) -> bool:
        return len(pair) == 2 and all(r.returncode == 0 for r in pair) and pair[1].steps > pair[0].steps > 0

    @property
    def ok(self) -> bool:
        return any(self._pair_ok(p) for p in self.pairs)

    def least(self, which: int) -> Run | None:
        """The run with the least CPU time among the N-step (`which` 0) or 2N-step (1) runs of complete pairs: noise
        here (another process on a core, a slow start) only ever adds CPU time."""
        return min((p[which] for p in self.pairs if self._pair_ok(p)), key=lambda r: r.cpu_s, default=None)

    @property
    def cpu_s_per_step(self) -> float:
        a, b = self.least(0), self.least(1)
        return math.nan if a is None or b is None else (b.cpu_s - a.cpu_s) / (b.steps - a.steps)

    @property
    def per_step_each(self) -> list[float]:
        """The figure of each complete pair on its own, for the spread."""
        return [(b.cpu_s - a.cpu_s) / (b.steps - a.steps) for a, b in filter(self._pair_ok, self.pairs)]

    @property
    def peak_rss_gb(self) -> float:
        return max((r.peak_rss_gb for p in self.pairs for r in p if r.returncode == 0), default=math.nan)

    @property
    def other_cores(self) -> float:
        """The most other processes used during the two runs the figure comes from, in cores."""
        return max((r.other_cores for r in (self.least(0), self.least(1)) if r is not None), default=0.0)


def thread_env(threads: int) -> dict[str, str]:
    """The environment of every training child: `threads` BLAS/OpenMP threads, no GPU, no network logging."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
                "VECLIB_MAXIMUM_THREADS"):
        env[var] = str(threads)
    env |= {"CUDA_VISIBLE_DEVICES": "", "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "1",
            "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("VIRTUAL_ENV", None)
    return env


def machine_busy_s() -> float:
    """CPU seconds all processes of the machine have used since boot (/proc/stat; 0 where there is none)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def wait_quiet(max_wait_s: float, window_s: float = 3.0, busy_cores: float = BUSY) -> float:
    """Wait (up to `max_wait_s`) until the rest of the machine uses under `busy_cores` over `window_s`; returns the
    cores it used in the last window. On 2 cores, one busy core makes a 2-thread run's CPU time several-fold."""
    deadline, said = time.monotonic() + max_wait_s, False
    while True:
        before = machine_busy_s()
        time.sleep(window_s)
        used = (machine_busy_s() - before) / window_s
        if used < busy_cores or time.monotonic() >= deadline:
            return used
        if not said:
            print(f"waiting up to {max_wait_s:.0f} s for a quiet machine (other processes use {used:.1f} cores)",
                  flush=True)
            said = True


def measure(cmd: list[str], env: dict[str, str], log: Path, cwd: Path, steps: int, wait_s: float) -> Run:
    """Run `cmd` to completion; its rusage from wait4 covers it and every descendant it waited for, so the figures
    are this run's alone (RUSAGE_CHILDREN of this process would carry the max RSS of earlier runs). Also notes how
    busy the rest of the machine was: torch's OpenMP threads spin while a core is taken, which inflates CPU time."""
    wait_quiet(wait_s)
    t0, busy0 = time.monotonic(), machine_busy_s()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall, cpu = time.monotonic() - t0, usage.ru_utime + usage.ru_stime
    other = max(machine_busy_s() - busy0 - cpu, 0.0) / max(wall, 1e-9)
    return Run(steps, cpu, usage.ru_maxrss / 1024**2, wall, proc.returncode, str(log), other)


def tail(path: str, lines: int = 15) -> str:
    text = Path(path).read_text(errors="replace").splitlines()
    return "\n".join("    " + line for line in text[-lines:])


# ---------------------------------------------------------------- arc-state


def arc_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def arc_state_works(venv: Path) -> str:
    """arc-state's version when the venv imports state and cell_load on the pinned torch, else ''."""
    probe = ("import importlib.metadata as m, torch, state, cell_load, geomloss; "
             "assert torch.__version__.startswith('2.13.0'), torch.__version__; print(m.version('arc-state'))")
    if not arc_python(venv).exists():
        return ""
    done = subprocess.run([str(arc_python(venv)), "-c", probe], capture_output=True, text=True,
                          env=thread_env(1))
    return done.stdout.strip() if done.returncode == 0 else ""


def build_arc_state_venv(venv: Path, rebuild: bool) -> tuple[str, str]:
    """(version, '') with a working venv, building it when missing or broken; ('', why) when it cannot be built."""
    version = "" if rebuild else arc_state_works(venv)
    if version:
        return version, ""
    log = venv.parent / "arc-state-build.log"
    venv.parent.mkdir(parents=True, exist_ok=True)
    constraints = venv.parent / "arc-state-constraints.txt"
    constraints.write_text(TORCH_PIN + "\n")  # arc-state may not move torch off the CPU build
    print(f"building the arc-state venv at {venv} (torch then {ARC_STATE}; minutes, ~2.5 GB; log {log})",
          flush=True)
    pip = [str(arc_python(venv)), "-m", "pip", "install", "--disable-pip-version-check"]
    steps = [[sys.executable, "-m", "venv", "--clear", str(venv)],
             pip + [TORCH_PIN], pip + ["-c", str(constraints), ARC_STATE]]
    with open(log, "w") as out:
        for cmd in steps:
            out.write("$ " + shlex.join(cmd) + "\n")
            out.flush()
            if subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
                last = [ln for ln in log.read_text(errors="replace").splitlines()
                        if ln.strip() and not ln.startswith("WARNING: Location")]
                what = "python -m venv" if cmd[1:3] == ["-m", "venv"] else f"pip install {cmd[-1]}"
                return "", f"`{what}` failed ({last[-1].strip() if last else 'no output'}; see {log})"
    version = arc_state_works(venv)
    return (version, "") if version else ("", f"the venv was built but does not import arc-state ({log})")


def write_arc_state_inputs(data: Path, folder: Path) -> Path:
    """arc-state's input as `state tx preprocess_train` would leave it, but with every gene kept: an .h5ad with the
    log-normalised counts in X and in obsm['X_hvg'] (dense), categorical perturbation / cell-type / batch columns
    (the `unassigned` cells and their category dropped), and the cell-load TOML that trains on the whole file."""
    import anndata
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    adata = anndata.read_h5ad(data)
    adata = adata[adata.obs[PERT_KEY] != EXCLUDE].copy()
    counts = sp.csr_matrix(adata.X, dtype=np.float32)
    totals = np.asarray(counts.sum(axis=1)).ravel()
    lognorm = sp.diags((TARGET_SUM / np.maximum(totals, 1.0)).astype(np.float32)) @ counts
    lognorm.data = np.log1p(lognorm.data)
    obs = pd.DataFrame({PERT_KEY: adata.obs[PERT_KEY].astype(str).astype("category"),
                        "cell_type": pd.Categorical([CONTEXT] * adata.n_obs),
                        "batch": adata.obs[BATCH_KEY].astype(str).astype("category")}, index=adata.obs_names)
    out = anndata.AnnData(X=lognorm.tocsr(), obs=obs, var=pd.DataFrame(index=adata.var_names))
    out.var["gene_name"] = np.asarray(adata.var_names, dtype=str)
    out.obsm["X_hvg"] = lognorm.toarray()
    out.uns["log1p"] = {"base": None}
    (folder / "data").mkdir(parents=True, exist_ok=True)
    out.write_h5ad(folder / "data" / "papalexi_thp1.h5ad")
    toml = folder / "papalexi.toml"
    toml.write_text(f'[datasets]\npapalexi = "{folder / "data"}"\n\n[training]\npapalexi = "train"\n')
    return toml


def link_arc_state_inputs(data: Path, folder: Path) -> Path:
    """cell-load's TOML over a folder holding (a link to) the file itself: both sides read the same bytes."""
    (folder / "data").mkdir(parents=True, exist_ok=True)
    link = folder / "data" / data.name
    link.unlink(missing_ok=True)
    link.symlink_to(data.resolve())
    toml = folder / "screen.toml"
    toml.write_text(f'[datasets]\nscreen = "{folder / "data"}"\n\n[training]\nscreen = "train"\n')
    return toml


def arc_state_overrides(toml: Path, out_dir: Path, steps: int, data: Data = PAPALEXI) -> list[str]:
    """Hydra overrides of `state tx train` for the shapes above (read from arc-state 0.11.1's configs and
    state/_cli/_tx/_train.py, cell_load's PerturbationDataModule and state/tx/models/state_transition.py)."""
    backbone = "model.kwargs.transformer_backbone_kwargs"
    return [
        # data: cell-load over the prepared file, genes as the cell representation and as the output space
        f"data.kwargs.toml_config_path={toml}", f"data.kwargs.embed_key={data.arc_embed_key or 'null'}",
        "data.kwargs.output_space=gene", *[f"data.kwargs.{k}={v}" for k, v in data.arc_columns],
        f"data.kwargs.control_pert={CONTROL}", "data.kwargs.num_workers=0", "data.kwargs.pin_memory=false",
        # model: state_sm (Llama backbone, bidirectional attention) scaled to hidden 128 / 4 layers / 4 heads
        "model=state_sm", f"model.kwargs.hidden_dim={SHAPES['hidden']}",
        f"model.kwargs.cell_set_len={SHAPES['cell_set_len']}",
        f"{backbone}.num_hidden_layers={SHAPES['n_layers']}", f"{backbone}.num_attention_heads={SHAPES['n_heads']}",
        f"{backbone}.num_key_value_heads={SHAPES['n_heads']}",
        f"{backbone}.head_dim={SHAPES['hidden'] // SHAPES['n_heads']}",
        f"{backbone}.intermediate_size={4 * SHAPES['hidden']}",  # state_sm: 4 x hidden (2688 = 4 x 672)
        "model.kwargs.loss=energy", "model.kwargs.distributional_loss=energy", "model.kwargs.gene_decoder_bool=false",
        # training: 16 sets per step, exactly `steps` optimizer steps, no validation or checkpoints before the end
        f"training.batch_size={SHAPES['sets_per_step']}", f"training.max_steps={steps}",
        "training.val_freq=1000000", "training.ckpt_every_n_steps=1000000",
        "use_wandb=false", f"output_dir={out_dir}", "name=bench", "overwrite=true",
    ]


def run_arc_state(venv: Path, version: str, data: Data, plan: Plan) -> Side:
    side = Side("arc-state", version)
    prepare = write_arc_state_inputs if data == PAPALEXI else link_arc_state_inputs
    toml = prepare(data.path, plan.tmp / "arc_input")
    for repeat in range(plan.repeats):
        pair: list[Run] = []
        side.pairs.append(pair)
        for n in (plan.steps, 2 * plan.steps):
            out = plan.tmp / f"arc_out_{repeat}_{n}"
            cmd = [str(venv / "bin" / "state"), "tx", "train", *arc_state_overrides(toml, out, n, data)]
            side.command = shlex.join(cmd)
            log = plan.tmp / f"arc_{repeat}_{n}.log"
            pair.append(measure(cmd, thread_env(plan.threads), log, plan.tmp, n, plan.wait_s))
            if pair[-1].returncode != 0:
                side.note = f"`state tx train` exited {pair[-1].returncode}:\n{tail(pair[-1].log)}"
                return side
            if not (out / "bench" / "checkpoints" / "final.ckpt").exists():
                side.note = "`state tx train` wrote no final.ckpt: did it train?"
    return side


# ---------------------------------------------------------------- stagekit


def stagekit_sets(steps_key: str, steps: int, threads: int, in_genes: bool = True) -> list[str]:
    """The --set list of the spec; `steps_key` is training.max_steps when stagekit has it, else training.epochs;
    `in_genes`: the genes as the cell representation, no decoder (else the preset's PCA and gene decoder)."""
    space = ["data.n_components=0", "loss.decoder_weight=0.0"] if in_genes else []
    return [*space, f"model.hidden={SHAPES['hidden']}", f"model.n_layers={SHAPES['n_layers']}",
            f"model.n_heads={SHAPES['n_heads']}", f"sets.cell_set_len={SHAPES['cell_set_len']}",
            f"training.batch_size={SHAPES['sets_per_step']}", 'loss.kind="energy"',
            f"{steps_key}={steps}", "training.val_fraction=0", f"runtime.threads={threads}"]


def stagekit_command(data: Data, sets: list[str], out: Path) -> list[str]:
    cli = Path(sys.executable).with_name("stagekit")
    base = [str(cli)] if cli.exists() else [sys.executable, "-m", "stagekit"]
    return [*base, "pretrain", "--preset", "transition", str(data.path), *data.stagekit_args,
            *[a for s in sets for a in ("--set", s)], "-q", "-o", str(out)]


def stagekit_has_max_steps(data: Data, threads: int, tmp: Path) -> tuple[bool, str]:
    """Whether `training.max_steps` is a key (checked with --print-config, no training) and stagekit's complaint
    if not. Any other failure counts as yes: the training run then fails and its error is reported."""
    cmd = stagekit_command(data, stagekit_sets("training.max_steps", 1, threads, data.in_genes), tmp / "probe.stk")
    done = subprocess.run([*cmd[:-3], "--print-config"], capture_output=True, text=True, env=thread_env(threads))
    complaint = " ".join((done.stderr or done.stdout).strip().splitlines()[-1:])
    return done.returncode == 0 or "max_steps" not in complaint, complaint


def bundle_loop_cpu_s(path: Path) -> float:
    """The CPU time of the training loop by stagekit's own account (history epoch_cpu_s), NaN if absent."""
    from stagekit.bundle import read_bundle

    values = read_bundle(path, weights=False, results=False).history.get("epoch_cpu_s", [])
    return float(sum(values)) if values else math.nan


def bundle_steps(path: Path) -> int:
    """Optimizer steps a stagekit bundle ran: a step count in its history or data where there is one, else from
    the cells each epoch trained on (cells_per_s x epoch_time_s; cells_per_s counts cells since d52bef5, sets
    before), `sets.cell_set_len` cells a set and `training.batch_size` sets a step (the last step of an epoch
    takes the rest)."""
    from stagekit.bundle import read_bundle

    bundle = read_bundle(path, weights=False, results=False)
    history = {k: [v for v in values if not math.isnan(v)] for k, values in bundle.history.items()}
    for key in ("global_step", "optimizer_steps"):
        if history.get(key):
            return int(history[key][-1])
    for key in ("steps", "train_steps"):
        if history.get(key):
            return int(sum(history[key]))
    for key in ("global_step", "steps", "optimizer_steps"):
        if key in bundle.data:
            return int(bundle.data[key])
    if history.get("cells_per_s") and history.get("epoch_time_s"):
        cells = [r * t for r, t in zip(history["cells_per_s"], history["epoch_time_s"], strict=True)]
        return sum(math.ceil(round(n / SHAPES["cell_set_len"]) / SHAPES["sets_per_step"]) for n in cells)
    raise KeyError(f"no step count in the bundle (history: {sorted(bundle.history)}; data: {sorted(bundle.data)})")


def run_stagekit(data: Data, plan: Plan) -> Side:
    """STAGEKIT SIDE, written against the spec while `--preset transition` settles: tolerant of a missing
    training.max_steps key (then epochs E and 2E, steps counted from the bundle) and reports, never crashes."""
    import stagekit

    side = Side("stagekit", getattr(stagekit, "__version__", "?"))
    has_max_steps, why = stagekit_has_max_steps(data, plan.threads, plan.tmp)
    n, e = plan.stagekit_steps, plan.stagekit_epochs
    key, counts = ("training.max_steps", (n, 2 * n)) if has_max_steps else ("training.epochs", (e, 2 * e))
    if not has_max_steps:
        side.note = f"no training.max_steps ({why}): ran training.epochs={e} and {2 * e}, steps counted from the bundle"
    for repeat in range(plan.repeats):
        pair: list[Run] = []
        side.pairs.append(pair)
        for n in counts:
            out = plan.tmp / f"stagekit_{repeat}_{n}.stk"
            cmd = stagekit_command(data, stagekit_sets(key, n, plan.threads, data.in_genes) + plan.stagekit_extra,
                                   out)
            side.command = shlex.join(cmd)
            log = plan.tmp / f"stagekit_{repeat}_{n}.log"
            pair.append(measure(cmd, thread_env(plan.threads), log, plan.tmp, n, plan.wait_s))
            if pair[-1].returncode != 0:
                side.note += f"\n`stagekit pretrain` exited {pair[-1].returncode}:\n{tail(pair[-1].log)}"
                return side
            try:
                pair[-1].loop_cpu_s = bundle_loop_cpu_s(out)
                pair[-1].steps = n if has_max_steps else bundle_steps(out)
            except Exception as err:  # noqa: BLE001  the stage is still being written: report, never crash the bench
                side.note += f"\ncannot count the steps of {out.name}: {type(err).__name__}: {err}"
                if not has_max_steps:
                    pair[-1].steps = 0
                    return side
    return side


# ---------------------------------------------------------------- report


def fmt(value: float, spec: str) -> str:
    return "n/a" if value is None or math.isnan(value) else format(value, spec)


def report(sides: list[Side], steps: int, threads: int, data: Data = PAPALEXI) -> dict:
    by_name = {s.name: s for s in sides}
    arc, ours = by_name.get("arc-state"), by_name.get("stagekit")
    print(f"data: {data.label}; shapes: hidden "
          f"{SHAPES['hidden']}, {SHAPES['n_layers']} layers, {SHAPES['n_heads']} heads, sets of "
          f"{SHAPES['cell_set_len']}, {SHAPES['sets_per_step']} sets/step, {SHAPES['loss']} loss"
          f"{', no decoder' if data.in_genes else ''}; "
          f"{threads} threads; each side runs N and 2N steps (arc-state N={steps})")
    print(f"{'':26s} {'steps/CPU-s':>11s} {'CPU-s/step':>11s} {'peak RSS GB':>12s}  runs: steps, CPU s, wall s")
    for side in sides:
        per_step = side.cpu_s_per_step
        runs = "; ".join(f"{r.steps}, {r.cpu_s:.1f}, {r.wall_s:.0f}" + ("*" if r.other_cores > BUSY else "")
                         for p in side.pairs for r in p)
        rate = 1 / per_step if per_step else math.nan
        print(f"{side.name + ' ' + side.version:26s} {fmt(rate, '11.3f')} {fmt(per_step, '11.3f')} "
              f"{fmt(side.peak_rss_gb, '12.2f')}  {runs}")
    ratio = arc.cpu_s_per_step / ours.cpu_s_per_step if arc and ours and arc.ok and ours.ok else math.nan
    rss_ratio = ours.peak_rss_gb / arc.peak_rss_gb if arc and ours and arc.ok and ours.ok else math.nan
    print(f"{'speed stagekit / arc-state':26s} {fmt(ratio, '11.2f')}x  (target >= 5x)")
    print(f"{'RSS stagekit / arc-state':26s} {fmt(rss_ratio, '11.2f')}x  (target <= 1x)")
    loop = [r.loop_cpu_s / r.steps for p in (ours.pairs if ours else []) for r in p
            if r.steps and not math.isnan(r.loop_cpu_s)]
    if loop:
        print(f"{'stagekit, loop only':26s} {'':11s} {statistics.median(loop):11.3f}  (its own epoch_cpu_s per step, "
              "a cross-check that leaves start-up out)")
    print(f"reference (measured earlier): arc-state {REFERENCE['arc_state_cpu_s_per_step']} CPU-s/step, "
          f"{REFERENCE['arc_state_peak_rss_gb']} GB peak RSS")
    busy = max((s.other_cores for s in sides), default=0.0)
    if any(r.other_cores > BUSY for s in sides for p in s.pairs for r in p):
        print(f"runs marked * ran beside other processes using over {BUSY} cores; each figure takes the N-step and "
              "the 2N-step run with the least CPU time of its side")
    if busy > BUSY:
        print(f"WARNING: the figures include runs beside other processes using up to {busy:.1f} cores; with "
              f"{threads} threads on {os.cpu_count()} cores their CPU times grow several-fold (OpenMP threads spin): "
              "rerun on a quiet machine")
    for side in sides:
        if side.note.strip():
            print(f"{side.name}: {side.note.strip()}")
    return {"data": str(data.path), "shapes": SHAPES, "steps": steps, "threads": threads, "reference": REFERENCE,
            "speed_ratio": ratio, "rss_ratio": rss_ratio, "other_cores_max": busy,
            "sides": {s.name: {"version": s.version, "cpu_s_per_step": s.cpu_s_per_step,
                               "cpu_s_per_step_each_pair": s.per_step_each,
                               "steps_per_cpu_s": 1 / s.cpu_s_per_step if s.ok else math.nan,
                               "peak_rss_gb": s.peak_rss_gb, "command": s.command, "note": s.note.strip(),
                               "runs": [[asdict(r) for r in p] for p in s.pairs]} for s in sides}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=48, help="N: arc-state trains N and 2N optimizer steps (its "
                        "epoch here is 32 steps of 16 sets and one of 7: steps 49-96 hold one short step, -1 %%)")
    parser.add_argument("--stagekit-steps", type=int, default=256, help="N for stagekit (training.max_steps)")
    parser.add_argument("--stagekit-epochs", type=int, default=8,
                        help="while stagekit has no training.max_steps, it trains E and 2E epochs (26 steps each)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--stagekit-set", action="append", default=[], metavar="KEY=VALUE",
                        help="an extra --set for stagekit's runs (e.g. model.dropout=0.0: arc-state's transformer has "
                             "no dropout, its MLPs 0.1)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="pairs of runs per side; the least CPU time of the N and of the 2N runs is used")
    parser.add_argument("--wait-quiet", type=float, default=300, metavar="S",
                        help="before each run, wait up to S seconds for other processes to leave the cores free")
    parser.add_argument("--only", choices=("arc-state", "stagekit"), help="run one side")
    parser.add_argument("--venv", type=Path, default=ARC_VENV, help="arc-state's venv (built there if missing)")
    parser.add_argument("--rebuild-venv", action="store_true", help="build arc-state's venv anew")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--screen", type=Path, help="train on this make_screen.py screen instead of Papalexi (see "
                        "screen_data)")
    parser.add_argument("--keep", type=Path, help="keep the inputs, outputs and logs of the runs in this folder")
    args = parser.parse_args()

    data = screen_data(args.screen) if args.screen else PAPALEXI
    sides: list[Side] = []
    with tempfile.TemporaryDirectory(prefix="perturbation_speed_") as scratch:
        plan = Plan(args.steps, args.stagekit_steps, args.stagekit_epochs, args.threads, args.repeats,
                    args.wait_quiet, args.keep or Path(scratch), args.stagekit_set)
        plan.tmp.mkdir(parents=True, exist_ok=True)
        if args.only != "stagekit":
            version, why = build_arc_state_venv(args.venv, args.rebuild_venv)
            if version:
                sides.append(run_arc_state(args.venv, version, data, plan))
            else:
                print(f"arc-state side skipped: its venv could not be built: {why}")
        if args.only != "arc-state":
            sides.append(run_stagekit(data, plan))
        figures = report(sides, args.steps, args.threads, data)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
