"""Notebook 05's benchmark over several seeds, saved as CSV for the notebook's headline.

    COURSE_HEADLESS=1 python scripts/seeds_speculative.py     # seeds 0-4 -> course/results/speculative_seeds.csv
    COURSE_HEADLESS=1 python scripts/seeds_speculative.py --seeds 0 1 --out /tmp/spec.csv

One run of the benchmark samples one text per prompt, so its acceptance rate alpha is one draw, and
its timings are one draw of the machine's noise. This script runs the notebook's own
``speculative_benchmark`` (it executes the solution notebook's code cells up to and including the
cell that defines it, skipping check cells and the cells marked ``# NBVAL_IGNORE_OUTPUT``) once per
seed: seed s samples prompt i with generator seed 1000 s + i. One row per (seed, draft, gamma).
Run it on a quiet machine: the speed-ups are timings (the CSV records the load average).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
from pathlib import Path

from run_notebook_torchrun import code_cells

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "solutions" / "05_speculative_decoding.ipynb"
DEFINES = "def speculative_benchmark("


def notebook_namespace() -> dict:
    """The notebook's definitions, as its cells leave them just after ``speculative_benchmark`` is defined."""
    namespace = {"__name__": "__main__"}
    for i, source in enumerate(code_cells(NOTEBOOK)):
        if source.startswith("# NBVAL_IGNORE_OUTPUT"):
            continue  # timing demos and plots: not needed to define the benchmark
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(source, f"<{NOTEBOOK.name} code cell {i}>", "exec"), namespace)
        if DEFINES in source:
            return namespace
    raise RuntimeError(f"{NOTEBOOK.name} defines no speculative_benchmark")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--out", default=str(ROOT / "course" / "results" / "speculative_seeds.csv"))
    args = ap.parse_args()
    os.environ.setdefault("COURSE_HEADLESS", "1")
    os.environ.setdefault("MPLBACKEND", "Agg")
    ns = notebook_namespace()
    from course import bench  # after the notebook's `import course` configured threads and Triton

    rows, load = [], [os.getloadavg()[0]]
    for seed in args.seeds:
        result = ns["speculative_benchmark"](seed=seed)
        for r in result.rows:
            name = r["draft"]
            rows.append({"seed": seed, "draft": name, "gamma": r["gamma"],
                         "pooled_alpha": round(result.alpha[name], 4), "c": round(result.c[name], 4),
                         "alpha_gamma": round(r["alpha(gamma)"], 4), "tokens_per_call": round(r["tokens/call"], 4),
                         "verify_over_plain": round(r["verify/plain call"], 4),
                         "measured_x": round(r["measured x"], 4), "analytic_x": round(r["analytic x"], 4),
                         "pooled_analytic_x": round(r["pooled analytic x"], 4),
                         "with_verify_x": round(r["with verify x"], 4),
                         "best": int(r is result.best[name])})
        b = result.best["draft"]
        print(f"seed {seed}: alpha {result.alpha['draft']:.3f} (bigram {result.alpha['bigram']:.3f}), "
              f"c {result.c['draft']:.3f}, best gamma {b['gamma']}: measured {b['measured x']:.2f}x, "
              f"formula {b['analytic x']:.2f}x", flush=True)
        load.append(os.getloadavg()[0])
    tags = {"script": "scripts/seeds_speculative.py", "notebook": NOTEBOOK.name,
            "seeds": " ".join(map(str, args.seeds)),
            "config": f"{len(ns['bench_prompts'])} prompts x {ns['N_NEW']} new tokens, T = 1, "
                      f"best of {ns['ROUNDS']} interleaved rounds",
            # timings depend on what else ran: the 1-minute load average before and after each seed
            "load_average": " ".join(f"{x:.1f}" for x in load)}
    path = bench.save_csv(rows, args.out, tags=tags)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
