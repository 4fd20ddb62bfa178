"""Notebook 04's training comparison over seeds: fp32, BitNet (binary) and BitNet b1.58 (ternary)
TinyGPTs trained on the same data and budget, and the counted bigram baseline, saved as CSV.

    COURSE_HEADLESS=1 COURSE_THREADS=1 python scripts/seeds_bitnet.py     # 157 s CPU (919 s wall on 2 shared, busy cores)

The committed CSVs were made by exactly this command on an AMD EPYC (AVX2, torch 2.13.0, 1 thread);
on the same processor and settings it reproduces them exactly; elsewhere the numbers may differ
(float summation order) as another seed would, which is why the notebook reads the spread.

It calls the solution notebook's own code (``BitLinear`` with its quantizers, ``to_bitnet``,
``bigram_loss``: see scripts/notebook_defs.py) with the notebook's config (2 layers, width 64,
context 64), steps, batch, learning rate and schedule (``course.models.train_tiny_lm``). A seed sets
the initial weights and the batch order; validation windows are the same for every run (seed 0 of
``evaluate_loss``). Rows go to course/results/bitnet_training.csv: one per model, seed and evaluation
step. The bigram baseline is counted, not trained, so it is the same on every seed.

``--quick`` runs one seed for 10 steps and writes nothing (a smoke test).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import course
from course import bench, data, spread
from course.models import GPTConfig, TinyGPT, train_tiny_lm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import notebook_defs  # noqa: E402

QUICK = "--quick" in sys.argv
SEEDS = [0] if QUICK else [0, 1, 2, 3, 4]
STEPS = 10 if QUICK else 300                 # the notebook's STEPS
EVAL_EVERY = 5 if QUICK else 50
CONFIG = GPTConfig(n_layer=2, n_head=4, d_model=64, block_size=64)
KINDS = ("fp32", "BitNet (binary)", "BitNet b1.58 (ternary)")
OUT = Path(__file__).resolve().parents[1] / "course" / "results" / "bitnet_training.csv"

nb = notebook_defs.load("solutions/04_bitnet.ipynb")
TOKENS = data.CharTokenizer().encode(data.corpus())
train_tokens, val_tokens = data.train_val_split(TOKENS)
bigram = nb["bigram_loss"](train_tokens, val_tokens, CONFIG)

start, cpu_start = time.perf_counter(), time.process_time()
rows = []
for seed in SEEDS:
    for kind in KINDS:
        course.seed_everything(seed)
        model = TinyGPT(CONFIG)
        if kind != "fp32":
            nb["to_bitnet"](model, ternary="ternary" in kind)
        _, history = train_tiny_lm(CONFIG, model=model, steps=STEPS, batch_size=16, lr=3e-3, warmup=20,
                                   eval_every=EVAL_EVERY, tokens=TOKENS, seed=seed, progress=False)
        for step, loss in zip(history.val_steps, history.val_loss):
            rows.append({"model": kind, "seed": seed, "step": step + 1, "val_loss": round(loss, 5)})
    rows.append({"model": "bigram (counted)", "seed": seed, "step": STEPS, "val_loss": round(bigram, 5)})
    print(f"seed {seed} done at {time.perf_counter() - start:.0f} s", flush=True)

seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
final = [r for r in rows if r["step"] == STEPS]
for kind, values in spread.by_group(final, "model", "val_loss").items():
    print(f"{kind:<24} val loss after {STEPS} steps {spread.spread(values).format()}")
print(f"total {seconds:.0f} s wall, {cpu_seconds:.0f} s CPU")
if not QUICK:
    tags = {"script": "scripts/seeds_bitnet.py",
            "command": "COURSE_HEADLESS=1 COURSE_THREADS=1 python scripts/seeds_bitnet.py",
            "seeds": " ".join(map(str, SEEDS)), "wall_seconds": f"{seconds:.0f}", "cpu_seconds": f"{cpu_seconds:.0f}",
            "config": (f"notebook 04 recipe: TinyGPT {CONFIG.n_layer} layers x {CONFIG.d_model}, context "
                       f"{CONFIG.block_size}, course corpus, {STEPS} steps, batch 16, AdamW lr 3e-3, warm-up 20 + cosine, "
                       f"validation every {EVAL_EVERY} steps on 8 x 32 fixed windows; bigram: add-one counts")}
    print("wrote", bench.save_csv(rows, OUT, tags=tags))
