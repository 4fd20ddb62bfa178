"""Notebook 10's length-bias experiment: how the loss aggregation moves response length, over seeds.

    COURSE_HEADLESS=1 COURSE_THREADS=1 python scripts/grpo_length_bias.py   # seeds 0-4, 300 updates each

wrote the committed course/results/grpo_length_bias.csv (one row per aggregation, seed and logged update)
in 42 s of wall time on 2 shared CPU cores (the CSV records it).

The policy is tabular, so the experiment costs seconds and its only moving part is the aggregation.
A response is an answer token (right with a fixed probability P_RIGHT: a question the policy cannot
yet solve, so groups keep both signs of advantage), then filler tokens, each followed by a stop
decision, up to MAX_LEN tokens. The learned parameters are the stop logits per (answer right or
wrong, position): the policy may make its right and its wrong answers different lengths. The reward
is 1 for a right answer and does not depend on length, so an unbiased policy gradient leaves the
expected length where it is; whatever drift appears comes from the aggregation. Every update is
GRPO's (course.rl.group_advantages, course.rl.grpo_loss with beta 0 and one step per batch), with
``aggregation`` one of sequence-mean (the paper), token-mean (DAPO) and constant (Dr. GRPO).

The logged lengths are exact expectations under the current stop probabilities (no sampling noise);
the seeds differ in the sampled batches. Sampling is float-order sensitive only through torch's
Bernoulli draws against probabilities computed in float32.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import course
from course import bench, rl

P_RIGHT = 0.3  # chance that the (frozen) answer is right
MAX_LEN = 16  # tokens: the answer, then at most 15 filler/stop tokens
INIT_STOP = 0.15  # initial stop probability per position: expected length about 6 tokens


def expected_length(stop_logits: torch.Tensor) -> torch.Tensor:
    """Exact E[length] per answer kind (row) under per-position stop probabilities (MAX_LEN - 1 positions)."""
    stop = torch.sigmoid(stop_logits.detach().double())
    alive = torch.cumprod(torch.cat([torch.ones(stop.shape[0], 1, dtype=stop.dtype), 1 - stop[:, :-1]], 1), 1)
    return 1 + alive.sum(1)  # the answer token, plus token j (1..MAX_LEN-1) whenever no stop came before it


def sample_batch(stop_logits: torch.Tensor, n: int, g: torch.Generator):
    """Responses: (right (n,) bool, per-token log-probs (n, MAX_LEN) with gradients, mask (n, MAX_LEN))."""
    right = torch.rand(n, generator=g) < P_RIGHT
    kind = (~right).long()  # row 0 of stop_logits: right answers, row 1: wrong
    logits = stop_logits[kind]  # (n, MAX_LEN - 1): stop decision at token positions 1..MAX_LEN-1
    stops = torch.rand(n, MAX_LEN - 1, generator=g) < torch.sigmoid(logits.detach())
    first = torch.where(stops.any(1), stops.float().argmax(1), torch.full((n,), MAX_LEN - 1)).long()
    pos = torch.arange(MAX_LEN - 1)
    decided = pos <= first.unsqueeze(1)  # decisions taken: continue before the stop, stop at it
    logp_decision = torch.where(pos == first.unsqueeze(1), torch.nn.functional.logsigmoid(logits),
                                torch.nn.functional.logsigmoid(-logits))
    answer_logp = torch.full((n, 1), 0.0)  # the answer head is frozen: it carries no gradient
    logp = torch.cat([answer_logp, logp_decision * decided], 1)
    mask = torch.cat([torch.ones(n, 1), decided.float()], 1)
    # a response that never stopped (first == MAX_LEN - 1 without a stop) still has MAX_LEN tokens
    return right, logp, mask


def run(aggregation: str, seed: int, *, steps: int, prompts: int, group: int, lr: float, log_every: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    init = torch.log(torch.tensor(INIT_STOP / (1 - INIT_STOP)))
    stop_logits = torch.full((2, MAX_LEN - 1), float(init), requires_grad=True)
    opt = torch.optim.Adam([stop_logits], lr=lr)
    rows = []
    for step in range(steps + 1):
        if step % log_every == 0:
            right_len, wrong_len = expected_length(stop_logits).tolist()
            rows.append({"aggregation": aggregation, "seed": seed, "step": step,
                         "length_right": round(right_len, 4), "length_wrong": round(wrong_len, 4),
                         "length_mean": round(P_RIGHT * right_len + (1 - P_RIGHT) * wrong_len, 4)})
        if step == steps:
            break
        right, logp, mask = sample_batch(stop_logits, prompts * group, g)
        adv = rl.group_advantages(right.float().view(prompts, group)).reshape(-1, 1).expand_as(logp)
        loss = rl.grpo_loss(logp, logp.detach(), logp.detach(), adv, mask, beta=0.0, aggregation=aggregation)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--out", default=str(Path(course.__file__).parent / "results" / "grpo_length_bias.csv"))
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    start = time.perf_counter()
    rows = [row for aggregation in rl.AGGREGATIONS for seed in seeds
            for row in run(aggregation, seed, steps=args.steps, prompts=args.prompts, group=args.group, lr=args.lr,
                           log_every=args.log_every)]
    config = (f"tabular stop-logit policy, P_RIGHT={P_RIGHT}, MAX_LEN={MAX_LEN}, INIT_STOP={INIT_STOP}, "
              f"steps={args.steps}, prompts={args.prompts}, group={args.group}, Adam lr={args.lr}, beta=0")
    path = bench.save_csv(rows, args.out, tags={"seeds": args.seeds, "config": config,
                                                "seconds": f"{time.perf_counter() - start:.1f}"})
    print(f"wrote {path} ({len(rows)} rows) in {time.perf_counter() - start:.1f} s")
    for aggregation in rl.AGGREGATIONS:
        last = [r for r in rows if r["aggregation"] == aggregation and r["step"] == args.steps]
        print(aggregation, "final E[length] right:", [r["length_right"] for r in last],
              "wrong:", [r["length_wrong"] for r in last])


if __name__ == "__main__":
    main()
