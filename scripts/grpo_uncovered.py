"""GRPO where no demonstration exists: RL against the same compute of SFT on prompts SFT never covers.

    COURSE_HEADLESS=1 COURSE_THREADS=1 python scripts/grpo_uncovered.py --seeds 0,1,2,3,4 --answer-split-too

wrote the committed course/results/grpo_uncovered.csv as five processes, one per seed
(``--seeds N --answer-split-too``), run concurrently and merged with ``--merge``: about 1200 s of wall
time each on 2 CPU cores shared with other jobs (load 12-18); the CSV records the seeds, machine, threads, versions, date and seconds. Each seed is
deterministic on one machine and thread count: the printed values of seeds 0 and 1 from a 5-seed run in one
process (stopped after seed 1) equal those of the per-seed processes.

The task is notebook 10's, ``a+b=`` with operands 0..19 (400 problems), split by **coverage**:

* ``covered``: second operand 0..14. Demonstrations (prompt and gold answer) exist for these; 50 of
  them are held out from every stage and measure what the model keeps.
* ``uncovered``: second operand 15..19 (100 problems). No demonstration of any of them is ever
  shown. Half are the RL stage's extra prompts (their answers are used only by the verifier, which
  returns 1 or 0); the other half are held out from every stage and measure the result.

For each seed, an SFT start (a fresh TinyGPT, ``--sft-steps`` SFT steps on the covered demonstrations)
then ``--steps`` updates of each, from that same start:

* ``SFT``: more SFT on the covered demonstrations (all that exist);
* ``GRPO``: outcome-supervised GRPO (``course.rl.train_grpo``, beta 0.04, the SFT start as reference)
  on prompts drawn uniformly from the whole training distribution (covered demonstrations' prompts
  and the uncovered RL prompts), rewarded by the exact-match verifier.

Equal compute, stated: both take the same number of optimiser updates with one AdamW each (lr 3e-4,
never restarted), and each update backpropagates through the same number of sequences of the same
length (128: SFT's batch of 128 demonstrations; GRPO's 16 prompts x 8 samples). That equalises the
backward passes, which dominate a training step; GRPO spends *more* forward passes (sampling its 128
completions and scoring them under the reference). So the comparison gives GRPO more compute than SFT,
not less; the SFT curve over updates (logged every ``--eval-every``) shows whether more SFT would close
the gap.

Seeds are independent (each reseeds everything): they may run as separate processes (``--seeds 3``, one
``--out`` each) and be combined with ``--merge a.csv,b.csv,...`` (course.seed_csv).

Every stage hides the prompts' left padding from the model with an attention mask (course.rl's default since
issue 19 item 4: SFT, GRPO's sampling and log-probs, greedy and pass@16 evaluation).

Held-out greedy accuracy on both held-out sets is logged every ``--eval-every`` updates; pass@16 (16
samples at temperature 1) on the uncovered held-out set is logged at the start and at the end of each
run. Run with ``--answer-split-too`` it also measures, per seed, an SFT start trained only on problems
whose sum is at most 29 and reports its pass@16 on the sums 30..38: answers no demonstration contains,
which a policy must sample at least once before GRPO can learn anything from them.

The results depend on float summation order (processor, SIMD width, threads): another machine gives
other draws from the same distribution, which is why the notebook reads the spread over seeds.
"""

from __future__ import annotations

import argparse
import copy
import random
import time

import torch

import course
from course import bench, rl
from course.seed_csv import add_merge_option, merged
from course.data import CharTokenizer, Example

TOK = CharTokenizer()
MAX_OPERAND = 19
UNCOVERED_FROM = 15  # second operands 15..19 have no demonstration
N_HELDOUT = 50  # per held-out set
PASS_K = 16


def problem(a: int, b: int) -> Example:
    return Example(f"{a}+{b}=", str(a + b))


def coverage_split(uncovered, seed: int = 0) -> dict[str, list[Example]]:
    """Every problem ``a+b=`` (operands 0..MAX_OPERAND) sorted by ``uncovered(a, b)`` into four disjoint
    lists: ``sft`` (covered demonstrations), ``covered_heldout``, ``rl_uncovered`` (prompts for RL only)
    and ``uncovered_heldout``; a held-out list has N_HELDOUT problems (half the uncovered ones if fewer)."""
    pairs = [(a, b) for a in range(MAX_OPERAND + 1) for b in range(MAX_OPERAND + 1)]
    covered = [problem(a, b) for a, b in pairs if not uncovered(a, b)]
    missing = [problem(a, b) for a, b in pairs if uncovered(a, b)]
    if len(covered) <= N_HELDOUT or len(missing) < 2:
        raise ValueError(f"split too small: {len(covered)} covered, {len(missing)} uncovered problems")
    rng = random.Random(seed)
    rng.shuffle(covered)
    rng.shuffle(missing)
    half = min(N_HELDOUT, len(missing) // 2)
    return {"sft": covered[N_HELDOUT:], "covered_heldout": covered[:N_HELDOUT],
            "rl_uncovered": missing[half:], "uncovered_heldout": missing[:half]}


WIDTH = len(f"{MAX_OPERAND}+{MAX_OPERAND}=")
MAX_NEW = len(str(2 * MAX_OPERAND)) + 1
# rl.tiny_policy reads only the sizes of a Task
TASK = rl.Task(train=[problem(0, 0)], heldout=[problem(0, 0)], width=WIDTH, max_new_tokens=MAX_NEW)


def accuracy(model, examples) -> float:
    return rl.greedy_accuracy(model, TOK, examples, width=WIDTH, max_new_tokens=MAX_NEW)


def pass_k(model, examples, seed: int) -> float:
    samples = rl.sample_texts(model, TOK, examples, PASS_K, width=WIDTH, max_new_tokens=MAX_NEW, seed=seed)
    return rl.pass_and_maj(samples, examples, PASS_K)[0]


def sft_start(examples, seed: int, steps: int):
    course.seed_everything(seed)
    model = rl.tiny_policy(TASK, seed)
    rl.train_sft(model, TOK, examples, width=WIDTH, steps=steps, seed=seed)  # lr 3e-3, batch 64
    return model.eval()


def more_sft(start, examples, *, steps: int, lr: float, eval_every: int, seed: int, log) -> torch.nn.Module:
    """SFT on ``examples`` from ``start``: batches of 128, one AdamW kept for the whole run."""
    model = copy.deepcopy(start)
    rl.train_sft(model, TOK, examples, width=WIDTH, steps=steps, batch_size=128, lr=lr, seed=1000 + seed,
                 eval_every=eval_every, on_eval=log)
    return model


def grpo(start, prompts, heldout, *, steps: int, lr: float, eval_every: int, seed: int,
         log) -> torch.nn.Module:
    """GRPO (outcome, beta 0.04, reference = ``start``) on ``prompts``; 16 prompts x 8 samples per update."""
    model = copy.deepcopy(start)
    rl.train_grpo(model, start, TOK, prompts, heldout, width=WIDTH, max_new_tokens=MAX_NEW, steps=steps,
                  prompts_per_step=16, group_size=8, lr=lr, beta=0.04, eval_every=eval_every, seed=seed,
                  on_log=lambda h: h.step[-1] > 0 and log(h.step[-1], model, h.seconds[-1]))
    return model


def answer_split_pass(seed: int, sft_steps: int) -> dict:
    """pass@16, on the 45 problems whose sum is 30..38, of an SFT start shown only sums up to 29."""
    answers = coverage_split(lambda a, b: a + b >= 30)
    start = sft_start(answers["sft"], seed, sft_steps)
    p = pass_k(start, answers["rl_uncovered"] + answers["uncovered_heldout"], 2000 + seed)
    print(f"seed {seed} answer split (sums 30..38 never demonstrated): pass@{PASS_K} of its SFT start "
          f"{p:.3f}", flush=True)
    return {"seed": seed, "split": "a+b>=30", "method": "SFT start", "step": 0, "metric": "uncovered_pass16",
            "value": round(p, 4), "train_seconds": 0.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--sft-steps", type=int, default=800)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--lr", type=float, default=3e-4, help="AdamW learning rate of both methods")
    ap.add_argument("--answer-split-too", action="store_true")
    ap.add_argument("--out", default="course/results/grpo_uncovered.csv")
    add_merge_option(ap)
    args = ap.parse_args()
    if merged(args):
        return
    seeds = [int(s) for s in args.seeds.split(",")]
    split = coverage_split(lambda a, b: b >= UNCOVERED_FROM)
    rl_prompts = split["sft"] + split["rl_uncovered"]  # the whole training distribution, as prompts
    print(f"{len(split['sft'])} covered demonstrations, {len(split['rl_uncovered'])} uncovered RL prompts, "
          f"held out: {len(split['covered_heldout'])} covered, {len(split['uncovered_heldout'])} uncovered",
          flush=True)
    rows, seconds = [], []
    t_all = time.perf_counter()
    for seed in seeds:
        t_seed = time.perf_counter()

        def record(method, step, model, spent, *, with_pass=False, split_name="b>=15", seed=seed):
            values = {"covered_greedy": accuracy(model, split["covered_heldout"]),
                      "uncovered_greedy": accuracy(model, split["uncovered_heldout"])}
            if with_pass:
                values["uncovered_pass16"] = round(pass_k(model, split["uncovered_heldout"], 2000 + seed), 4)
            for metric, value in values.items():
                rows.append({"seed": seed, "split": split_name, "method": method, "step": step,
                             "metric": metric, "value": value, "train_seconds": round(spent, 2)})
            print(f"seed {seed} {method:<5} step {step:>4}  "
                  + "  ".join(f"{k} {v:.2f}" for k, v in values.items()) + f"  {spent:.0f} s", flush=True)

        start = sft_start(split["sft"], seed, args.sft_steps)
        for method in ("SFT", "GRPO"):
            record(method, 0, start, 0.0, with_pass=True)
        kwargs = dict(steps=args.steps, lr=args.lr, eval_every=args.eval_every, seed=seed)
        for method, run in (("SFT", lambda log: more_sft(start, split["sft"], log=log, **kwargs)),
                            ("GRPO", lambda log: grpo(start, rl_prompts, split["uncovered_heldout"], log=log,
                                                      **kwargs))):
            final = {}

            def log(step, model, spent, method=method):
                final["spent"] = spent
                if step < args.steps:
                    record(method, step, model, spent)

            model = run(log)
            record(method, args.steps, model, final["spent"], with_pass=True)
        if args.answer_split_too:
            rows.append(answer_split_pass(seed, args.sft_steps))
        seconds.append(time.perf_counter() - t_seed)
        print(f"seed {seed} done in {seconds[-1]:.0f} s", flush=True)

    total = time.perf_counter() - t_all
    tags = {"script": "scripts/grpo_uncovered.py",
            "task": f"a+b, operands <= {MAX_OPERAND}; demonstrations only for b < {UNCOVERED_FROM}",
            "seeds": ",".join(map(str, seeds)),
            "config": " ".join(f"{k}={v}" for k, v in vars(args).items() if k not in ("out", "seeds")),
            "equal_compute": f"same updates (one AdamW, lr {args.lr}, never restarted) and 128 sequences per "
                             "backward pass; GRPO also spends forward passes on sampling and the reference",
            "seconds_per_seed": ",".join(f"{s:.0f}" for s in seconds), "seconds_total": f"{total:.0f}",
            "threads": str(torch.get_num_threads())}
    bench.save_csv(rows, args.out, tags=tags)
    print(f"{len(seeds)} seeds in {total:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
