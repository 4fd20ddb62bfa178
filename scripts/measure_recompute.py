"""Notebook 08's activation recomputation over seeds and depths: memory (exact, MemTracker) and time
(wall and CPU, median of repeats), saved as CSV for the notebook to plot with its spread.

    COURSE_HEADLESS=1 COURSE_THREADS=1 python scripts/measure_recompute.py

It calls ``course.parallel.recompute.measure`` (the notebook's code) on residual MLP blocks of width 64
(256 inside), batch 256, depths 2, 4, 6 and 8, seeds 0-4 (a seed sets the weights and the input),
both without and with ``torch.utils.checkpoint``, and writes course/results/recompute_memory_time.csv
with the environment tags of course.bench (processor, threads, versions, date). Bytes are exact and
the same on any machine with this torch; times are this machine's and vary with its load.
``--quick`` runs one seed and one depth and writes nothing (a smoke test).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import course  # noqa: F401 - sets threads (COURSE_THREADS) and the numeric configuration
from course import bench
from course.parallel import recompute

QUICK = "--quick" in sys.argv
SEEDS = [0] if QUICK else [0, 1, 2, 3, 4]
DEPTHS = [2] if QUICK else [2, 4, 6, 8]
WIDTH, BATCH, REPEATS = 64, 256, 3 if QUICK else 10
OUT = Path(__file__).resolve().parents[1] / "course" / "results" / "recompute_memory_time.csv"


def main() -> None:
    start, rows = time.process_time(), []
    for seed in SEEDS:
        for depth in DEPTHS:
            for r in recompute.measure(depth=depth, width=WIDTH, batch=BATCH, repeats=REPEATS, seed=seed):
                rows.append({"seed": seed, "depth": depth, "width": WIDTH, "batch": BATCH, "recompute": r["recompute"],
                             "saved_for_backward_bytes": r["saved for backward B"], "peak_bytes": r["peak B"],
                             "median_wall_ms": round(r["median ms"], 3), "median_cpu_ms": round(r["median CPU ms"], 3),
                             "repeats": REPEATS, "max_grad_difference": r["max |grad - grad without recompute|"]})
            print(f"seed {seed} depth {depth}: {rows[-2]['median_cpu_ms']:.1f} / {rows[-1]['median_cpu_ms']:.1f} CPU ms")
    if QUICK:
        print(f"quick run: {len(rows)} rows, nothing written")
        return
    bench.save_csv(rows, OUT, tags={"script": "scripts/measure_recompute.py", "seeds": " ".join(map(str, SEEDS))})
    print(f"wrote {OUT} ({len(rows)} rows) in {time.process_time() - start:.0f} s CPU")


if __name__ == "__main__":
    main()
