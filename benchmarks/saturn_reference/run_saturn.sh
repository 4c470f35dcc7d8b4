#!/usr/bin/env bash
# Train the ORIGINAL SATURN (snap-stanford/SATURN train-saturn.py, unmodified) on a stagekit synthetic species folder
# and print wall time, CPU time, peak RSS and per-phase / per-epoch timings.
#
# usage: run_saturn.sh DATA_DIR [M=200] [HV_GENES=500] [PRETRAIN_BS=4096] [METRIC_BS=4096] [PRETRAIN_EPOCHS=1] [METRIC_EPOCHS=1]
#   DATA_DIR holds {species}.h5ad + {species}.npz (benchmarks/saturn_speed.py:write_species output).
# SATURN is not on PyPI: give a checkout of github.com/snap-stanford/SATURN (this was run at 6906abf) as
# SATURN_SRC, or a bare clone as SATURN_MIRROR with SATURN_SETUP=1 to export it.
# env: SATURN_SRC (default /tmp/saturn_src), SATURN_VENV (/tmp/saturn-venv), WORK (default $TMPDIR/saturn_ref),
#      SATURN_MIRROR (/work/.mirror/snap-stanford+SATURN/repo, used only if SATURN_SRC is missing),
#      SATURN_THREADS (default 1; the stagekit benchmarks use 2), NICE (default 0), KMEANS_N_INIT (unset = sklearn default 'auto'; 10 = the paper-era sklearn default),
#      CENTROIDS_CACHE=path.pkl to reuse SATURN's --centroids_init_path across runs (default: fresh, KMeans timed),
#      SATURN_SETUP=1 to create the venv / source tree if missing; SATURN_SEED (default 0).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DATA_DIR="$(cd "${1:?usage: run_saturn.sh DATA_DIR [M] [HV] [PRETRAIN_BS] [METRIC_BS] [PRETRAIN_EPOCHS] [METRIC_EPOCHS]}" && pwd)"
M="${2:-200}"; HV="${3:-500}"; PBS="${4:-4096}"; BS="${5:-4096}"; PEP="${6:-1}"; EP="${7:-1}"
SRC="${SATURN_SRC:-/tmp/saturn_src}"; VENV="${SATURN_VENV:-/tmp/saturn-venv}"; WORK="${WORK:-${TMPDIR:-/tmp}/saturn_ref}"
MIRROR="${SATURN_MIRROR:-/work/.mirror/snap-stanford+SATURN/repo}"; NICE="${NICE:-0}"
T="${SATURN_THREADS:-1}"; export SATURN_THREADS="$T" OMP_NUM_THREADS=$T MKL_NUM_THREADS=$T OPENBLAS_NUM_THREADS=$T NUMBA_NUM_THREADS=$T NUMEXPR_NUM_THREADS=$T \
       VECLIB_MAXIMUM_THREADS=1 PYTHONHASHSEED=0 PYTHONWARNINGS=ignore MPLBACKEND=Agg

if [[ ! -f "$SRC/train-saturn.py" ]]; then
  [[ "${SATURN_SETUP:-0}" == 1 ]] || { echo "no $SRC/train-saturn.py (set SATURN_SETUP=1 to export it from $MIRROR)"; exit 2; }
  mkdir -p "$SRC" && git --git-dir="$MIRROR" archive HEAD | tar -x -C "$SRC"
fi
if [[ ! -x "$VENV/bin/python" ]]; then
  [[ "${SATURN_SETUP:-0}" == 1 ]] || { echo "no venv at $VENV (set SATURN_SETUP=1 to create it)"; exit 2; }
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch==2.13.0                      # first and pinned: unpinned pulls CUDA wheels
  # no torchvision: PyPI's is a CUDA build that cannot import under torch+cpu (launcher shim S4 covers SATURN's unused import)
  echo "torch==2.13.0" > "$VENV/torch-pin.txt"
  "$VENV/bin/pip" install -q -c "$VENV/torch-pin.txt" scanpy anndata pandas scikit-learn tqdm scvi-tools \
      record-keeper scikit-misc networkx seaborn matplotlib plotly
fi
PY="$VENV/bin/python"

RUN="$WORK/M${M}_hv${HV}_pbs${PBS}_bs${BS}_pe${PEP}_e${EP}"
rm -rf "$RUN"; mkdir -p "$RUN/in"
"$PY" "$HERE/convert_to_saturn.py" "$DATA_DIR" "$RUN/in"

extra=(); [[ -n "${KMEANS_N_INIT:-}" ]] && extra=(--kmeans-n-init "$KMEANS_N_INIT")
CMD=(nice -n "$NICE" "$PY" "$HERE/saturn_launch.py" "$SRC" "$RUN/timings.json" "${extra[@]}" --
     --in_data "$RUN/in/run.csv" --in_label_col cell_type --ref_label_col cell_type
     --num_macrogenes "$M" --hv_genes "$HV" --pretrain_batch_size "$PBS" --batch_size "$BS"
     --pretrain_epochs "$PEP" --epochs "$EP" --centroids_init_path "${CENTROIDS_CACHE:-$RUN/centroids.pkl}"
     --work_dir "$RUN/out/" --device cpu --seed "${SATURN_SEED:-0}")
echo "+ ${CMD[*]}" | tee "$RUN/command.txt"
if [[ -x /usr/bin/time ]]; then
  /usr/bin/time -v -o "$RUN/time_v.txt" "${CMD[@]}" > "$RUN/saturn.log" 2>&1 || { tail -40 "$RUN/saturn.log"; exit 1; }
else
  "$PY" - "$RUN/time_v.txt" "${CMD[@]}" > "$RUN/saturn.log" 2>&1 <<'EOF' || { tail -40 "$RUN/saturn.log"; exit 1; }
import resource, subprocess, sys, time
t = time.perf_counter(); rc = subprocess.call(sys.argv[2:]); w = time.perf_counter() - t
r = resource.getrusage(resource.RUSAGE_CHILDREN)
open(sys.argv[1], "w").write(f"User time (seconds): {r.ru_utime}\nSystem time (seconds): {r.ru_stime}\n"
    f"Elapsed (wall clock) time (h:mm:ss or m:ss): 0:{w:.2f}\nMaximum resident set size (kbytes): {r.ru_maxrss}\n")
sys.exit(rc)
EOF
fi

"$PY" - "$RUN" <<'EOF'
import json, re, sys
from pathlib import Path
run = Path(sys.argv[1]); tv = (run / "time_v.txt").read_text()
get = lambda k: re.search(re.escape(k) + r":\s*(.+)", tv).group(1).strip()
user, sys_ = float(get("User time (seconds)")), float(get("System time (seconds)"))
wall = get("Elapsed (wall clock) time (h:mm:ss or m:ss)")
secs = sum(float(x) * 60 ** i for i, x in enumerate(reversed(wall.split(":"))))
rss = int(get("Maximum resident set size (kbytes)")) / 1024
t = json.loads((run / "timings.json").read_text())
print(f"\n== SATURN reference run: {run.name}")
print(f"process total : wall {secs:.2f} s | CPU {user + sys_:.2f} s (user {user:.2f} + sys {sys_:.2f}) | peak RSS {rss:.1f} MiB")
print(f"threads       : torch {t['torch_threads']}, pools {t['threadpools']}")
print(f"{'phase':44s} {'wall_s':>9s} {'cpu_s':>9s} {'peakRSS_MiB':>12s}  extra")
for e in t["events"]:
    extra = {k: v for k, v in e.items() if k not in ("name", "wall_s", "cpu_s", "peak_rss_mib_so_far")}
    print(f"{e['name']:44s} {e['wall_s']:9.3f} {e['cpu_s']:9.3f} {e['peak_rss_mib_so_far']:12.1f}  {extra or ''}")
for tag in ("pretrain_epoch", "metric_epoch"):
    ev = [e for e in t["events"] if e["name"] == tag]
    if ev:
        print(f"mean {tag:16s}: wall {sum(e['wall_s'] for e in ev)/len(ev):.3f} s, "
              f"CPU {sum(e['cpu_s'] for e in ev)/len(ev):.3f} s over {len(ev)} epoch(s)")
print(f"log: {run/'saturn.log'}  timings: {run/'timings.json'}  /usr/bin/time: {run/'time_v.txt'}")
EOF
