"""Segmentation fidelity on synthetic tissue with known truth, nucleus expansion side by side.

For each generator seed: `make_xenium_synthetic.py --layout tissue --missed_nuclei 0.1` (irregular touching
cells, off-centre nuclei, 10 % of nuclei missing), then the README chain `segment -> extract -> evaluate`. A
transcript is correct when it goes to its true cell or, for background transcripts and cells whose nucleus was
missed, to no nucleus-bearing cell. Both methods are scored on the same transcripts (those that pass the qv and
control-probe filters). Target: stagekit >= expansion (5 um) + 10 points.

`--transfer` also trains on seed A and fine-tunes with `--from` on seed B, against training on B from scratch,
and prints the accuracy after each number of epochs for both.

    python benchmarks/segmentation_synthetic.py [--seeds 0 1 2] [--workdir DIR] [--transfer]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _chain import stagekit

GENERATOR = Path(__file__).resolve().parents[1].parent / "shared" / "tools" / "make_xenium_synthetic.py"


def sample(work: Path, seed: int) -> Path:
    folder = work / f"tissue{seed}"
    if not (folder / "transcripts.parquet").is_file():
        subprocess.run([sys.executable, str(GENERATOR), "--layout", "tissue", "--missed_nuclei", "0.1", "--seed",
                        str(seed), "--out", str(folder)], check=True, capture_output=True)
    return folder


def scored(work: Path, bundle: Path, folder: Path, name: str) -> dict:
    stagekit("extract", bundle, folder, "-o", work / f"{name}_cells", "-q")
    stagekit("evaluate", work / f"{name}_cells", "-o", work / f"{name}_report", "-q")
    return json.loads((work / f"{name}_report" / "metrics.json").read_text())


def fidelity(work: Path, seeds: list[int], extra: list[str]) -> None:
    rows = []
    for seed in seeds:
        folder = sample(work, seed)
        started = time.perf_counter()
        stagekit("segment", "--preset", "segger", folder, "-o", work / f"seg{seed}.stk", "-q", *extra)
        took = time.perf_counter() - started
        report = scored(work, work / f"seg{seed}.stk", folder, f"seg{seed}")
        ours, expanded = report["segmentation"]["stagekit"], report["segmentation"]["expansion_5um"]
        rows.append((seed, ours, expanded, report["links"].get("auroc", float("nan")), took))
        print(f"seed {seed}: {report['transcripts']:,} transcripts, segment {took:.0f} s", flush=True)
    print(f"\n{'seed':>4} {'correct':>8} {'expansion':>9} {'gain':>6} {'assigned':>8} {'exp.':>6} "
          f"{'MECR':>6} {'exp.':>6} {'val AUROC':>9}")
    for seed, ours, expanded, auroc, _ in rows:
        print(f"{seed:>4} {ours['correct']:8.3f} {expanded['correct']:9.3f} "
              f"{100 * (ours['correct'] - expanded['correct']):+6.1f} {ours['assigned']:8.3f} "
              f"{expanded['assigned']:6.3f} {ours['mecr']:6.3f} {expanded['mecr']:6.3f} {auroc:9.3f}")
    gain = [100 * (o["correct"] - e["correct"]) for _, o, e, _, _ in rows]
    print(f"mean gain {sum(gain) / len(gain):+.1f} points (target +10); correct on cells with a nucleus / without: "
          + ", ".join(f"{o['correct_nucleus_cells']:.3f}/{o['correct_without_nucleus']:.3f} vs "
                      f"{e['correct_nucleus_cells']:.3f}/{e['correct_without_nucleus']:.3f}" for _, o, e, _, _ in rows))


def transfer(work: Path, source: int, target: int, extra: list[str]) -> None:
    """Accuracy on the target sample after E epochs: fine-tuned from the source model vs from scratch."""
    source_dir, target_dir = sample(work, source), sample(work, target)
    stagekit("segment", "--preset", "segger", source_dir, "-o", work / f"source{source}.stk", "-q", *extra)
    print(f"\ntransfer seed {source} -> seed {target}: correct after E epochs")
    print(f"{'epochs':>6} {'from scratch':>12} {'--from':>8}")
    for epochs in (1, 2, 4, 8, 16):
        run = ["--set", f"training.epochs={epochs}", "--set", "training.early_stopping_patience=0", "-q", *extra]
        stagekit("segment", "--preset", "segger", target_dir, "-o", work / f"scratch{epochs}.stk", *run)
        stagekit("segment", "--preset", "segger", target_dir, "--from", work / f"source{source}.stk",
                 "-o", work / f"from{epochs}.stk", *run)
        scratch = scored(work, work / f"scratch{epochs}.stk", target_dir, f"scratch{epochs}")
        tuned = scored(work, work / f"from{epochs}.stk", target_dir, f"from{epochs}")
        print(f"{epochs:>6} {scratch['segmentation']['stagekit']['correct']:12.3f} "
              f"{tuned['segmentation']['stagekit']['correct']:8.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--transfer", action="store_true")
    parser.add_argument("--set", action="append", default=[], help="extra --set for every segment run")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="stagekit-seg-"))
    work.mkdir(parents=True, exist_ok=True)
    extra = [item for value in args.set for item in ("--set", value)]
    fidelity(work, args.seeds, extra)
    if args.transfer:
        transfer(work, args.seeds[0], args.seeds[1] if len(args.seeds) > 1 else args.seeds[0] + 1, extra)


if __name__ == "__main__":
    main()
