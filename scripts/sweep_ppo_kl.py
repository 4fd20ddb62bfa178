"""Notebook 09's measured results over several seeds: SFT vs PPO (true reward, win rates), the KL sweep
(over-optimisation) and PPO-ptx. Two CSVs for the notebook to plot.

    COURSE_HEADLESS=1 COURSE_THREADS=1 python scripts/sweep_ppo_kl.py            # seeds 0,1,2
    python scripts/sweep_ppo_kl.py --quick    # a smoke run (one seed, few PPO steps), writes nothing

Seeds are independent (each reseeds everything), so they may run as separate processes and be combined:

    python scripts/sweep_ppo_kl.py --seeds 0 --out-dir /tmp/s0     # ... one per seed, then
    python scripts/sweep_ppo_kl.py --merge /tmp/s0,/tmp/s1,/tmp/s2  # both CSVs, into course/results

wrote the committed course/results/instructgpt_ppo_kl_sweep.csv and instructgpt_win_rates.csv as three processes,
one per seed, run concurrently with dpo_vs_ppo.py's three and merged (``--merge``): about 970 s of wall time each
(about 156 s of CPU time each by /usr/bin/time: 2 CPU cores shared with other jobs, load 7-11; on an idle core
expect about 8 minutes for all three seeds). Every model hides the prompts' left padding (``MASK``, issue 19 item 4).
Running seed 1 alone and after seed 0 in one process gives the same rows (checked with ``--quick``).

For each seed, builds the notebook's world with course.rlhf.build_preference_world (SFT of instructgpt-base on the
demonstrations, comparisons ranked by noisy Bradley-Terry labelers, a reward model trained on all K choose 2
pairs for 250 steps, the notebook's small preset), then runs PPO against the reward model for several KL coefficients
beta (and, at one beta, with the pretraining loss mixed in: PPO-ptx). Every ``EVAL_EVERY`` iterations it
measures on held-out prompts: KL from the SFT policy (nats per response), the proxy (reward-model) score,
the hidden true reward and the corpus loss -> course/results/instructgpt_ppo_kl_sweep.csv.

At beta = 0.3 (the notebook's) after 40 iterations (the notebook's small preset) and 80 it also measures the true reward of SFT, PPO and a bigger SFT model (tinygpt-char, 8x the
parameters, fine-tuned on the same demonstrations) and PPO's win rates against both
-> course/results/instructgpt_win_rates.csv.

The seed sets the SFT minibatches, the comparisons and their labels, the reward model's minibatches and
PPO's sampling; the prompts (train and held-out) are the notebook's for every seed. Results depend on
float summation order (processor, SIMD width, threads), so another machine gives other draws: the
notebook reads the spread over seeds.

Size: 80 PPO iterations per run and betas 0.3, 0.1, 0 (an earlier single-seed version ran 120 iterations,
also at beta 0.03, with a 400-step reward model) so that 3 seeds fit the course's CPU budget.
"""
import argparse
import copy
import sys
import time
from pathlib import Path

import torch

import course
from course import bench, data, rl, rlhf
from course.models import load_pretrained
from course.seed_csv import merge_seed_csvs

RESULTS = Path(__file__).resolve().parents[1] / "course" / "results"
CSVS = ("instructgpt_ppo_kl_sweep.csv", "instructgpt_win_rates.csv")
ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])  # a typo must not start a 50-minute sweep
ap.add_argument("--quick", action="store_true", help="one seed, few PPO steps; writes nothing unless --out-dir")
ap.add_argument("--seeds", default=None, help="comma-separated (default 0,1,2; --quick: 0)")
ap.add_argument("--out-dir", default=None, help=f"where to write {' and '.join(CSVS)} (default course/results)")
ap.add_argument("--merge", default="", help="comma-separated --out-dir folders of per-seed runs to combine into "
                "course/results instead of training")
ARGS = ap.parse_args()
if ARGS.merge:
    for name in CSVS:
        print("wrote", merge_seed_csvs([Path(d) / name for d in ARGS.merge.split(",")], RESULTS / name))
    sys.exit(0)
QUICK = ARGS.quick
OUT = Path(ARGS.out_dir) if ARGS.out_dir else (None if QUICK else RESULTS)
SEEDS = [int(x) for x in ARGS.seeds.split(",")] if ARGS.seeds else [0] if QUICK else [0, 1, 2]
MASK = True                       # hide the prompts' left padding from every model (course.rlhf, issue 19 item 4)
W, T = 12, 7                      # prompt width, new tokens per response (same as the notebook)
SFT_STEPS, RM_STEPS = 150, 250    # the notebook's small preset (what CI runs)
PPO_STEPS = 6 if QUICK else 80
EVAL_EVERY = 3 if QUICK else 10
WIN_AT = (3, 6) if QUICK else (40, 80)  # PPO iterations at which SFT vs PPO vs bigger SFT is measured
BETAS = [0.3, 0.1, 0.0] if not QUICK else [0.3]
PTX = [(0.1, 1.0)] if not QUICK else []  # (beta, ptx_coef)
WIN_BETA = 0.3

tok = data.CharTokenizer()
sft_prompts = rlhf.instruction_prompts(1000, seed=1)
rm_prompts = rlhf.instruction_prompts(2000, seed=11)
ppo_prompts = rlhf.instruction_prompts(2000, seed=3)
heldout = rlhf.instruction_prompts(200, seed=2)
corpus_train, corpus_val = data.train_val_split(tok.encode(data.corpus()))

sweep_rows, win_rows, seconds = [], [], []
t_all = time.perf_counter()
for seed in SEEDS:
    t_seed = time.perf_counter()
    course.seed_everything(seed)
    world = rlhf.build_preference_world(load_pretrained("instructgpt-base"), tok, sft_prompts=sft_prompts,
                                        rm_prompts=rm_prompts, heldout=heldout, width=W, max_new_tokens=T,
                                        seed=seed, sft_steps=SFT_STEPS, rm_steps=RM_STEPS, mask_padding=MASK)
    sft, rm, proxy = world.sft, world.rm, world.proxy
    rm_acc = world.rm_heldout_accuracy
    big = load_pretrained("tinygpt-char")
    rl.train_sft(big, tok, sft_prompts, width=W, steps=SFT_STEPS, batch_size=32, lr=1e-3, seed=seed,
                 mask_padding=MASK)
    ev_sft = rlhf.evaluate_policy(sft, sft, tok, heldout, width=W, max_new_tokens=T, samples=2, mask_padding=MASK)
    ev_big = rlhf.evaluate_policy(big, big, tok, heldout, width=W, max_new_tokens=T, samples=2, mask_padding=MASK)
    print(f"seed {seed}: SFT + RM + bigger SFT in {time.perf_counter() - t_seed:.0f} s; RM held-out pairwise "
          f"accuracy {rm_acc:.3f}", flush=True)

    def run(beta, ptx_coef):
        policy = copy.deepcopy(sft)
        value = rlhf.ScalarHeadGPT(copy.deepcopy(rm.body))

        def evaluate(step, model):
            if step % EVAL_EVERY == 0 or step == 0:
                ev = rlhf.evaluate_policy(model, sft, tok, heldout, width=W, max_new_tokens=T, reward_fn=proxy,
                                          samples=2, mask_padding=MASK)
                sweep_rows.append({"seed": seed, "beta": beta, "ptx_coef": ptx_coef, "step": step,
                                   "kl": round(ev["kl"], 4), "proxy_reward": round(ev["proxy"], 4),
                                   "true_reward": round(ev["true"], 4),
                                   "true_reward_greedy": round(ev["true_greedy"], 4),
                                   "corpus_loss": round(rlhf.corpus_loss(model, corpus_val), 4),
                                   "rm_heldout_accuracy": round(rm_acc, 4)})
                print(sweep_rows[-1], flush=True)
            if beta == WIN_BETA and ptx_coef == 0 and step in WIN_AT:
                ev = rlhf.evaluate_policy(model, sft, tok, heldout, width=W, max_new_tokens=T, samples=2,
                                          mask_padding=MASK)
                win = dict(tok=tok, examples=heldout, width=W, max_new_tokens=T, mask_padding=MASK)
                win_rows.append({
                    "seed": seed, "beta": beta, "ppo_steps": step, "rm_heldout_accuracy": round(rm_acc, 4),
                    "sft_true": round(ev_sft["true"], 4), "sft_true_greedy": round(ev_sft["true_greedy"], 4),
                    "ppo_true": round(ev["true"], 4), "ppo_true_greedy": round(ev["true_greedy"], 4),
                    "ppo_kl": round(ev["kl"], 4),
                    "big_true": round(ev_big["true"], 4), "big_true_greedy": round(ev_big["true_greedy"], 4),
                    "win_vs_sft": round(rlhf.win_rate(model, sft, **win), 4),
                    "win_vs_sft_greedy": round(rlhf.win_rate(model, sft, greedy=True, **win), 4),
                    "win_vs_big": round(rlhf.win_rate(model, big, **win), 4),
                    "win_vs_big_greedy": round(rlhf.win_rate(model, big, greedy=True, **win), 4)})
                print(win_rows[-1], flush=True)

        evaluate(0, policy)
        rlhf.train_ppo(policy, sft, proxy, ppo_prompts, tok=tok, width=W, max_new_tokens=T, steps=PPO_STEPS,
                       value_model=value, batch_size=64, minibatch_size=16, ppo_epochs=2, lr=1e-4, beta=beta,
                       ptx_coef=ptx_coef, ptx_tokens=corpus_train if ptx_coef else None, seed=1 + 100 * seed,
                       progress=False, callback=evaluate, mask_padding=MASK)

    for beta in BETAS:
        run(beta, 0.0)
    for beta, ptx_coef in PTX:
        run(beta, ptx_coef)
    seconds.append(time.perf_counter() - t_seed)
    print(f"seed {seed} done in {seconds[-1]:.0f} s", flush=True)

total = time.perf_counter() - t_all
print(f"total {total:.0f} s")
if OUT is not None:
    tags = {"script": "scripts/sweep_ppo_kl.py", "seeds": ",".join(map(str, SEEDS)),
            "config": f"sft_steps={SFT_STEPS} rm_steps={RM_STEPS} ppo_steps={PPO_STEPS} eval_every={EVAL_EVERY} "
                      f"betas={BETAS} ptx={PTX} batch=64 minibatch=16 epochs=2 lr=1e-4 win_beta={WIN_BETA} "
                      f"mask_padding={MASK}" + (" QUICK" if QUICK else ""),
            "seconds_per_seed": ",".join(f"{s:.0f}" for s in seconds), "seconds_total": f"{total:.0f}",
            "threads": str(torch.get_num_threads())}
    for rows, name in zip((sweep_rows, win_rows), CSVS, strict=True):
        print("wrote", bench.save_csv(rows, OUT / name, tags=tags))
