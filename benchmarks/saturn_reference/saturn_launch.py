"""Run SATURN's unmodified train-saturn.py with phase timers and CPU-only compatibility shims.

Usage: python saturn_launch.py SATURN_SRC_DIR TIMINGS_JSON [--kmeans-n-init N] -- <train-saturn.py arguments>

How: the script's module-level code (imports, function definitions, and its own os.environ thread settings) is
executed as-is in a namespace; timers are wrapped around the functions it looks up at call time; then its
`if __name__ == '__main__':` block (argparse + trainer(args)) is executed unchanged in that namespace.
No SATURN source file is edited.

Shims (nothing algorithmic):
  S1  torch.cuda.set_device -> no-op when CUDA is unavailable (the script calls torch.cuda.set_device(args.device_num)
      unconditionally; CPU-only torch 2.13 raises AttributeError: torch._C has no _cuda_setDevice).
  S2  thread counts set by the caller (SATURN_THREADS, default 1): train-saturn.py sets OMP_NUM_THREADS=4 /
      MKL_NUM_THREADS=6 / OPENBLAS_NUM_THREADS=4 in os.environ at import; here numpy/torch/sklearn are imported
      first under the caller's settings, then torch.set_num_threads and threadpoolctl.threadpool_limits
      (reasserted after the script's top runs).
  S3  (opt-in, --kmeans-n-init N) sklearn>=1.4 changed KMeans' default n_init from 10 to 'auto' (=1 with k-means++);
      passing 10 restores the default of the sklearn the paper used. Only the centroid-init phase is affected.
  S4  torchvision stub while the script's imports run: utils/transformations.py (imported via pretrain_utils) does
      `import torchvision.datasets as datasets` and never uses it. PyPI's torchvision 0.28.0 is a CUDA build
      (_C.so needs libc10_cuda.so) and fails to import under torch 2.13.0+cpu ("operator torchvision::nms does not
      exist"), also breaking torchmetrics -> lightning -> scvi; so torchvision is NOT installed, scvi/torchmetrics
      are imported first (they then see no torchvision), and an empty `torchvision`/`torchvision.datasets` module is
      present only while the script's module-level imports execute.
"""
import ast
import json
import os
import resource
import sys
import time
from pathlib import Path

argv = sys.argv[1:]
if "--" not in argv or len(argv) < 3:
    raise SystemExit(__doc__)
cut = argv.index("--")
own, saturn_args = argv[:cut], argv[cut + 1:]
src_dir, timings_path = Path(own[0]).resolve(), Path(own[1]).resolve()
kmeans_n_init = int(own[own.index("--kmeans-n-init") + 1]) if "--kmeans-n-init" in own else None

_caller_threads = {k: os.environ.get(k, "1") for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                                          "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")}
# S2: import the numeric stacks while the caller's thread settings are in force.
import types  # noqa: E402

import scvi.distributions  # noqa: E402,F401  (S4: before the stub exists)
import sklearn.cluster  # noqa: E402,F401
import threadpoolctl  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("SATURN_THREADS", "1")))
torch.set_num_interop_threads(1)
_limits = threadpoolctl.threadpool_limits(int(os.environ.get("SATURN_THREADS", "1")))

# S1
if not torch.cuda.is_available():
    torch.cuda.set_device = lambda *a, **k: None

EVENTS = []
T0_WALL, T0_CPU = time.perf_counter(), time.process_time()


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def record(name, wall, cpu, **extra):
    ev = {"name": name, "wall_s": round(wall, 4), "cpu_s": round(cpu, 4), "peak_rss_mib_so_far": round(rss_mib(), 1),
          **extra}
    EVENTS.append(ev)
    print(f"[saturn-timer] {json.dumps(ev)}", flush=True)


def timed(name, fn, **extra):
    def wrapper(*a, **k):
        w, c = time.perf_counter(), time.process_time()
        try:
            return fn(*a, **k)
        finally:
            record(name, time.perf_counter() - w, time.process_time() - c, **extra)
    wrapper.__wrapped__ = fn
    return wrapper


os.chdir(src_dir)
sys.path.insert(0, str(src_dir))
script = src_dir / "train-saturn.py"
tree = ast.parse(script.read_text(), filename=str(script))


def is_main_guard(node) -> bool:
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__")


top = ast.Module(body=[n for n in tree.body if not is_main_guard(n)], type_ignores=[])
main_blocks = [n for n in tree.body if is_main_guard(n)]
assert len(main_blocks) == 1, "expected exactly one `if __name__ == '__main__':` block"
main = ast.Module(body=main_blocks[0].body, type_ignores=[])

ns = {"__name__": "__main__", "__file__": str(script), "__builtins__": __builtins__}
w, c = time.perf_counter(), time.process_time()
_stub = {n: types.ModuleType(n) for n in ("torchvision", "torchvision.datasets")}  # S4
_stub["torchvision"].datasets = _stub["torchvision.datasets"]
assert "torchvision" not in sys.modules
sys.modules.update(_stub)
try:
    exec(compile(top, str(script), "exec"), ns)
finally:
    for n in _stub:
        sys.modules.pop(n, None)
record("import_saturn_modules", time.perf_counter() - w, time.process_time() - c)
# S2 again: the script's top rewrote os.environ thread variables; put back the caller's values so libraries loaded
# later (e.g. skmisc for seurat_v3) start with them, and reassert limits on the runtimes already loaded.
os.environ.update(_caller_threads)
torch.set_num_threads(int(os.environ.get("SATURN_THREADS", "1")))
_limits = threadpoolctl.threadpool_limits(int(os.environ.get("SATURN_THREADS", "1")))

import data.multi_species_data as msd  # noqa: E402  (already imported by the script)
import model.saturn_model as sm  # noqa: E402
import scanpy as sc  # noqa: E402

if kmeans_n_init is not None:  # S3
    _KMeans = sm.KMeans

    class KMeansNInit(_KMeans):
        def __init__(self, n_clusters=8, **kw):
            kw.setdefault("n_init", kmeans_n_init)
            super().__init__(n_clusters=n_clusters, **kw)
    KMeansNInit.__name__ = "KMeans"
    sm.KMeans = KMeansNInit


def densify_timer(fn):
    def wrapper(X):
        w, c = time.perf_counter(), time.process_time()
        out = fn(X)
        record("densify_X (data_to_torch_X)", time.perf_counter() - w, time.process_time() - c,
               shape=list(out.shape), dense_mib=round(out.numel() * out.element_size() / 2**20, 1))
        return out
    return wrapper


msd.data_to_torch_X = densify_timer(msd.data_to_torch_X)
sc.pp.highly_variable_genes = timed("highly_variable_genes (seurat_v3)", sc.pp.highly_variable_genes)
ns["load_gene_embeddings_adata"] = timed("load_gene_embeddings_adata", ns["load_gene_embeddings_adata"])
ns["make_centroids"] = timed("make_centroids (KMeans)", ns["make_centroids"])
ns["pretrain_saturn"] = timed("pretrain_saturn (all pretrain epochs)", ns["pretrain_saturn"])
ns["train"] = timed("metric_train (one metric epoch)", ns["train"])
ns["trainer"] = timed("trainer (whole run after arg parsing)", ns["trainer"])

# Per-epoch timer for the pretrain loop: each epoch iterates its DataLoader once, and the loop body runs while the
# generator below is suspended, so first-next -> StopIteration spans the whole epoch (batches + optimisation).
STATE = {"in_embed": 0, "made": 0}
_DataLoader = torch.utils.data.DataLoader


class TimedDataLoader(_DataLoader):
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        if STATE["in_embed"]:
            self._tag = None
        else:
            STATE["made"] += 1
            self._tag = {1: "pretrain_epoch", 2: "metric_epoch"}.get(STATE["made"], f"loader{STATE['made']}_epoch")
        self._epoch = 0

    def __iter__(self):
        it = super().__iter__()
        if self._tag is None:
            return it
        return self._timed(it)

    def _timed(self, it):
        self._epoch += 1
        w, c, n = time.perf_counter(), time.process_time(), 0
        for b in it:
            n += 1
            yield b
        record(self._tag, time.perf_counter() - w, time.process_time() - c, epoch=self._epoch, batches=n)


def in_embed(fn, name):
    def wrapper(*a, **k):
        STATE["in_embed"] += 1
        try:
            return timed(name, fn)(*a, **k)
        finally:
            STATE["in_embed"] -= 1
    return wrapper


ns["get_all_embeddings"] = in_embed(ns["get_all_embeddings"], "get_all_embeddings (pretrain inference)")
ns["get_all_embeddings_metric"] = in_embed(ns["get_all_embeddings_metric"], "get_all_embeddings_metric (inference)")
torch.utils.data.DataLoader = TimedDataLoader

sys.argv = [str(script)] + saturn_args
status = 0
try:
    exec(compile(main, str(script), "exec"), ns)
except SystemExit as e:
    status = e.code or 0
    raise
finally:
    info = {"total_wall_s": round(time.perf_counter() - T0_WALL, 3),
            "total_cpu_s": round(time.process_time() - T0_CPU, 3),
            "peak_rss_mib": round(rss_mib(), 1), "torch_threads": torch.get_num_threads(),
            "threadpools": [(p["internal_api"], p["num_threads"], Path(p["filepath"]).name)
                            for p in threadpoolctl.threadpool_info()],
            "events": EVENTS}
    timings_path.write_text(json.dumps(info, indent=1))
