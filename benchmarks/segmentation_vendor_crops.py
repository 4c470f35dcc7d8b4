"""Segmentation on the three real crops of ../shared/data/spatial_minis/ in their vendors' layouts: MERSCOPE mouse
brain and CosMx lung (the vendor's cells as prior outlines), ISS mouse CA1 (pciSeq's nucleus label image).

For each crop and seed: `segment --preset segger` as a user runs it, `extract`, `evaluate`; prints the share of
transcripts assigned, transcripts per cell, MECR (lower: fewer cells mixing exclusive markers) and control probes
per 1,000 transcripts in cells (lower: less background taken in) for stagekit, 5 um nucleus expansion and, where
the export has them, the vendor's own cells - all on the same transcripts. No truth exists for these samples; these
are the field's real-data proxies. The MERSCOPE and CosMx crops are put into the vendors' layouts by
tests/segmentation/vendor_layouts.py (documented there); the ISS sample's pixel size is not published with it:
0.325 micron (a 20x objective on a 6.5 micron-pixel camera) makes its median nucleus 12 micron across.

    python benchmarks/segmentation_vendor_crops.py [--seeds 0 1 2] [--crops merscope cosmx iss] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _chain import stagekit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.segmentation import vendor_layouts  # noqa: E402 - the converters the tests use

CROPS = {"merscope": vendor_layouts.merscope, "cosmx": vendor_layouts.cosmx, "iss": vendor_layouts.iss}
MICRON_PER_UNIT = {"iss": 0.325}
COLUMNS = ("assigned", "transcripts_per_cell_median", "mecr", "control_probes_per_1k")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--crops", nargs="+", choices=sorted(CROPS), default=["merscope", "cosmx", "iss"])
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="stagekit-crops-"))
    from stagekit.bundle import read_bundle

    for crop in args.crops:
        folder = CROPS[crop](work / crop / "sample")
        scale = ["--micron-per-unit", MICRON_PER_UNIT[crop]] if crop in MICRON_PER_UNIT else []
        runs = []
        for seed in args.seeds:
            run = work / crop / f"seed{seed}"
            run.mkdir(parents=True, exist_ok=True)
            started = time.perf_counter()
            stagekit("segment", "--preset", "segger", folder, "--format", crop, *scale, "--seed", seed,
                     "-o", run / "seg.stk", "-q")
            seconds = time.perf_counter() - started
            stagekit("extract", run / "seg.stk", folder, "-o", run / "seg", "-q")
            stagekit("evaluate", run / "seg", "-o", run / "report", "-q")
            methods = json.loads((run / "report" / "metrics.json").read_text())["segmentation"]
            history = read_bundle(run / "seg.stk").history
            runs.append({"methods": methods, "seconds": seconds, "epochs": len(history["val_auroc"]),
                         "auroc": max(history["val_auroc"])})
        print(f"\n{crop}: {len(args.seeds)} seed(s); segment {np.mean([r['seconds'] for r in runs]):.0f} s, "
              f"{np.mean([r['epochs'] for r in runs]):.0f} epochs, best held-out link AUROC "
              f"{np.mean([r['auroc'] for r in runs]):.3f} (mean)")
        print(f"{'method':<16}" + "".join(f"{c:>30}" for c in COLUMNS))
        for method in runs[0]["methods"]:
            cells = []
            for column in COLUMNS:
                values = [r["methods"][method].get(column, np.nan) for r in runs]
                cells.append(f"{np.mean(values):.3f} +- {np.std(values):.3f}" if np.isfinite(values).all() else "-")
            print(f"{method:<16}" + "".join(f"{c:>30}" for c in cells))


if __name__ == "__main__":
    main()
