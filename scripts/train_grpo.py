"""Notebook 10's longer GRPO run over several seeds, saved as CSV for the notebook to plot.

    COURSE_HEADLESS=1 COURSE_THREADS=1 python scripts/train_grpo.py    # defaults: seeds 0,1,2, 1000 steps

wrote the committed course/results/grpo_full.csv and grpo_full_passk.csv in 3062 s of wall time (about 176 s of
CPU time by ps: 2 CPU cores shared with other jobs, load 12-18; on an idle core expect about 3 minutes).

For each seed: SFT a fresh TinyGPT (initialised with that seed) to the answer format for ``--sft-steps``
steps, then GRPO with outcome supervision for a fixed ``--steps`` updates (a fixed count, not a time
budget, so that the result does not depend on the machine's load), logging held-out greedy accuracy every
``--eval-every`` updates. pass@k and maj@k (k = 1..16, from 16 samples at temperature 1) are measured
before and after RL. The task (train/held-out split) is the notebook's and the same for every seed; the
seed sets the initial weights, the SFT minibatches and GRPO's sampling. Two CSVs, one row per seed and
point: the curve (``--out``) and the pass/maj table (``--out`` with ``_passk`` before ``.csv``).

Padding: prompts are left-padded to the task's width and every step (SFT, sampling, log-probs of the policy
and the reference, evaluation) hides that padding from the model with an attention mask, course.rl's default
since issue 19 item 4; runs before it attended to the spaces.

Size: 1000 GRPO updates per seed (an earlier single-seed version ran 2000) so that 3 seeds of this and the
other scripts of notebooks 09 and 10 fit the course's CPU budget.

The results depend on float summation order (processor, SIMD width, threads): another machine gives
other draws from the same distribution, which is why the notebook reads the spread over seeds.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

import course
from course import bench, rl

TOK = course.data.CharTokenizer()


def pass_maj_rows(model, task, seed, label, k_max=16):
    samples = rl.sample_texts(model, TOK, task.heldout, k_max,
                              width=task.width, max_new_tokens=task.max_new_tokens, seed=seed)
    rows = []
    for k in (1, 2, 4, 8, 16):
        p, m = rl.pass_and_maj(samples, task.heldout, k)
        rows.append({"seed": seed, "model": label, "k": k, "pass_at_k": round(p, 4), "maj_at_k": round(m, 4)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds, one full run each")
    ap.add_argument("--max-operand", type=int, default=19)
    ap.add_argument("--sft-steps", type=int, default=200)
    ap.add_argument("--steps", type=int, default=1000, help="GRPO updates (fixed; no time budget)")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--beta", type=float, default=0.04)
    ap.add_argument("--clip", type=float, default=0.2)
    ap.add_argument("--supervision", choices=["outcome", "process"], default="outcome")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--out", default="course/results/grpo_full.csv")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]

    task = rl.addition_task(args.max_operand)
    curve, passk, seconds = [], [], []
    t_all = time.perf_counter()
    for seed in seeds:
        t_seed = time.perf_counter()
        course.seed_everything(seed)
        policy = rl.tiny_policy(task, seed)
        rl.train_sft(policy, TOK, task.train, width=task.width, steps=args.sft_steps, seed=seed)
        passk += pass_maj_rows(policy, task, seed, "sft")
        ref = copy.deepcopy(policy).eval()

        def report(h, seed=seed):
            print(f"seed {seed} step {h.step[-1]:>6}  heldout acc {h.heldout_accuracy[-1]:.2f}  train reward "
                  f"{h.train_reward[-1]:.3f}  kl {h.kl[-1]:.3f}  {h.seconds[-1]:.0f} s", flush=True)

        hist = rl.train_grpo(policy, ref, TOK, task.train, task.heldout, width=task.width,
                             max_new_tokens=task.max_new_tokens, steps=args.steps, prompts_per_step=args.prompts,
                             group_size=args.group, lr=args.lr, clip_eps=args.clip, beta=args.beta,
                             eval_every=args.eval_every, seed=seed, supervision=args.supervision, on_log=report)
        passk += pass_maj_rows(policy, task, seed, "grpo")
        curve += [{"seed": seed, "step": s, "heldout_accuracy": a, "train_reward": round(r, 4), "kl": round(k, 5),
                   "train_seconds": round(t, 2)}
                  for s, a, r, k, t in zip(hist.step, hist.heldout_accuracy, hist.train_reward, hist.kl,
                                           hist.seconds, strict=True)]
        seconds.append(time.perf_counter() - t_seed)
        print(f"seed {seed}: held-out accuracy {hist.heldout_accuracy[0]:.2f} -> {hist.heldout_accuracy[-1]:.2f} "
              f"in {seconds[-1]:.0f} s (SFT, GRPO, evaluation)", flush=True)
    total = time.perf_counter() - t_all
    tags = {"script": "scripts/train_grpo.py", "task": f"a+b, operands <= {args.max_operand}",
            "seeds": ",".join(map(str, seeds)),
            "config": " ".join(f"{k}={v}" for k, v in vars(args).items() if k not in ("out", "seeds")),
            "seconds_per_seed": ",".join(f"{s:.0f}" for s in seconds), "seconds_total": f"{total:.0f}",
            "threads": str(torch.get_num_threads())}
    out = Path(args.out)
    bench.save_csv(curve, out, tags=tags)
    bench.save_csv(passk, out.with_name(out.stem + "_passk.csv"), tags=tags)
    print(f"{len(seeds)} seeds in {total:.0f} s; wrote {out}")


if __name__ == "__main__":
    main()
