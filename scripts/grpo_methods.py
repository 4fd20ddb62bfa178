"""Notebook 10's unified-view comparison over several seeds, saved as CSV for the notebook to plot.

    COURSE_HEADLESS=1 COURSE_THREADS=1 python scripts/grpo_methods.py   # seeds 0,1,2, 300 updates each

wrote the committed course/results/grpo_methods.csv as three processes, one per seed, run concurrently and merged
(``--merge``, below): about 2015 s of wall time each (about 98 s of CPU time each by ps: 2 CPU cores shared with
other jobs, load 12-18; on an idle core expect about 5 minutes for all three seeds).

For each seed, from one SFT start (a fresh TinyGPT initialised with that seed, 200 SFT steps, as in the
notebook), train for ``--steps`` updates each: more SFT on the gold answers, RFT (SFT on the SFT model's
correct samples, 8 per question), online RFT (GRPO's loop with the reward as the coefficient, beta 0),
GRPO with outcome and with process supervision, and PPO from notebook 09 (``course.rlhf.train_ppo``: value
network, GAE, one update per batch of 128 completions, like GRPO). Held-out greedy accuracy is logged
every ``--eval-every`` updates.

Same optimiser schedule for every method: one AdamW (lr 3e-4, no weight decay) created at the start of
the run and kept for all ``--steps`` updates; evaluation never restarts it. (An earlier version restarted
AdamW every 100 updates for SFT, RFT and PPO but not for GRPO.)

Padding: every method hides the prompts' left padding from the model (course.rl's default, and
``rlhf.train_ppo(mask_padding=True)`` for PPO), in training and in evaluation. The SFT and RFT runs are
``rl.train_sft`` with an evaluation callback, the loop scripts/grpo_uncovered.py uses too.

Seeds are independent (each reseeds everything), so they may run as separate processes and be combined:

    python scripts/grpo_methods.py --seeds 0 --out /tmp/s0.csv   # ... one per seed, then
    COURSE_THREADS=1 python scripts/grpo_methods.py --merge /tmp/s0.csv,/tmp/s1.csv,/tmp/s2.csv

Size: 300 updates (an earlier single-seed version ran 2000) so that 3 seeds of all six methods fit the
course's CPU budget; the longer GRPO-only run is scripts/train_grpo.py. Training seconds are logged for information only: they
depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

import course
from course import bench, rl, rlhf
from course.seed_csv import add_merge_option, merged
from course.data import CharTokenizer, is_correct

TOK = CharTokenizer()
LR = 3e-4


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--sft-steps", type=int, default=200)
    ap.add_argument("--methods", default="sft,rft,online_rft,grpo_outcome,grpo_process,ppo")
    ap.add_argument("--out", default="course/results/grpo_methods.csv")
    add_merge_option(ap)
    args = ap.parse_args()
    if merged(args):
        return
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = args.methods.split(",")
    task = rl.addition_task(19)
    rows, seconds = [], []

    def acc(model):
        return rl.greedy_accuracy(model, TOK, task.heldout, width=task.width, max_new_tokens=task.max_new_tokens)

    t_all = time.perf_counter()
    for seed in seeds:
        t_seed = time.perf_counter()
        course.seed_everything(seed)
        sft = rl.tiny_policy(task, seed)
        rl.train_sft(sft, TOK, task.train, width=task.width, steps=args.sft_steps, seed=seed)
        sft.eval()

        def record(method, step, spent, accuracy, seed=seed):
            rows.append({"seed": seed, "method": method, "step": step, "heldout_accuracy": accuracy,
                         "train_seconds": round(spent, 2)})
            print(f"seed {seed} {method:<13} step {step:>5}  acc {accuracy:.2f}  {spent:.0f} s", flush=True)

        def sft_like(method, examples, data_seed):
            model = copy.deepcopy(sft)
            record(method, 0, 0.0, acc(model))
            rl.train_sft(model, TOK, examples, width=task.width, steps=args.steps, batch_size=64, lr=LR,
                         seed=data_seed, eval_every=args.eval_every,
                         on_eval=lambda step, m, spent: record(method, step, spent, acc(m)))

        def grpo_like(method, **kwargs):
            rl.train_grpo(copy.deepcopy(sft), sft, TOK, task.train, task.heldout, width=task.width,
                          max_new_tokens=task.max_new_tokens, steps=args.steps, prompts_per_step=16, group_size=8,
                          lr=LR, eval_every=args.eval_every, seed=seed,
                          on_log=lambda h: record(method, h.step[-1], h.seconds[-1], h.heldout_accuracy[-1]),
                          **kwargs)

        if "sft" in methods:
            sft_like("SFT", task.train, 1000 + seed)
        if "rft" in methods:
            samples = rl.sample_texts(sft, TOK, task.train, 8, width=task.width,
                                      max_new_tokens=task.max_new_tokens, seed=1000 + seed)
            data = rl.rft_examples(task.train, samples)
            print(f"seed {seed} RFT data: {len(data)} correct samples", flush=True)
            sft_like("RFT", data, 1000 + seed)
        if "online_rft" in methods:
            grpo_like("online RFT", advantages=lambda r: r, beta=0.0)
        if "grpo_outcome" in methods:
            grpo_like("GRPO outcome", beta=0.04)
        if "grpo_process" in methods:
            grpo_like("GRPO process", beta=0.04, supervision="process")
        if "ppo" in methods:
            model = copy.deepcopy(sft)
            value_model = rlhf.ScalarHeadGPT(copy.deepcopy(sft))
            reward = rlhf.per_example(lambda e, text: float(is_correct(e, text)))
            record("PPO", 0, 0.0, acc(model))
            eval_seconds = [0.0]
            t_ppo = time.perf_counter()

            def evaluate(step, policy):
                if step % args.eval_every == 0 or step == args.steps:
                    start = time.perf_counter()
                    accuracy = acc(policy)
                    eval_seconds[0] += time.perf_counter() - start
                    record("PPO", step, time.perf_counter() - t_ppo - eval_seconds[0], accuracy)

            rlhf.train_ppo(model, sft, reward, task.train, tok=TOK, width=task.width,
                           max_new_tokens=task.max_new_tokens, steps=args.steps, value_model=value_model,
                           batch_size=128, ppo_epochs=1, minibatch_size=128, lr=LR, beta=0.04, seed=seed,
                           progress=False, callback=evaluate, mask_padding=True)
        seconds.append(time.perf_counter() - t_seed)
        print(f"seed {seed} done in {seconds[-1]:.0f} s", flush=True)

    total = time.perf_counter() - t_all
    tags = {"script": "scripts/grpo_methods.py", "task": "a+b, operands <= 19", "seeds": ",".join(map(str, seeds)),
            "config": " ".join(f"{k}={v}" for k, v in vars(args).items() if k not in ("out", "seeds")),
            "optimizer": f"one AdamW per run, lr={LR}, never restarted (all methods)",
            "seconds_per_seed": ",".join(f"{s:.0f}" for s in seconds), "seconds_total": f"{total:.0f}",
            "threads": str(torch.get_num_threads())}
    bench.save_csv(rows, args.out, tags=tags)
    print(f"{len(seeds)} seeds in {total:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
