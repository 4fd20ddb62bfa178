"""Notebook 01's pre-LN vs post-LN comparison over several seeds, saved as CSV for its headline.

    COURSE_HEADLESS=1 python scripts/seeds_prenorm.py     # seeds 0-4 -> course/results/prenorm_seeds.csv

The notebook trains two identical 6-layer TinyGPTs (d_model 64, 4 heads, block 64), one with the
paper's post-LN blocks and one with pre-LN blocks, for 100 steps at lr 3e-3 with no warm-up
(batch 16), and compares their validation loss. One training run is one draw: the seed (weights,
batches) and the processor (float summation order) move it. This script repeats the notebook's
exact run (``course.models.train_tiny_lm``, the same arguments) for each seed; the notebook reads
the CSV and says which placement ends lower only if every seed agrees.
"""

from __future__ import annotations

import argparse
import time

import course
from course import bench, data
from course.models import GPTConfig, train_tiny_lm

CONFIG = dict(n_layer=6, n_head=4, d_model=64, block_size=64)
STEPS, BATCH, LR = 100, 16, 3e-3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--out", default=str(bench.RESULTS_DIR / "prenorm_seeds.csv"))
    args = ap.parse_args()
    vocab = data.CharTokenizer().vocab_size
    rows, start = [], time.perf_counter()
    for seed in args.seeds:
        for placement, pre_ln in (("post-LN", False), ("pre-LN", True)):
            _, history = train_tiny_lm(GPTConfig(vocab_size=vocab, **CONFIG, pre_ln=pre_ln), steps=STEPS,
                                       batch_size=BATCH, lr=LR, warmup=1, eval_every=STEPS, seed=seed,
                                       progress=False)
            rows.append({"seed": seed, "placement": placement, "val_loss": round(history.val_loss[-1], 4)})
            print(f"seed {seed} {placement:8s} validation loss {history.val_loss[-1]:.3f}", flush=True)
    tags = {"script": "scripts/seeds_prenorm.py", "seeds": " ".join(map(str, args.seeds)),
            "config": f"{CONFIG}, {STEPS} steps, batch {BATCH}, lr {LR}, warmup 1",
            "seconds": f"{time.perf_counter() - start:.0f}"}
    print(f"wrote {bench.save_csv(rows, args.out, tags=tags)}")


if __name__ == "__main__":
    main()
