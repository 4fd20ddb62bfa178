"""Notebook 09's DPO and 'PPO as the field runs it', over several seeds. Three CSVs for the notebook.

    COURSE_HEADLESS=1 COURSE_THREADS=1 nice python scripts/dpo_vs_ppo.py        # seeds 0,1,2
    python scripts/dpo_vs_ppo.py --quick     # a smoke run (one seed, few steps), writes nothing

Seeds are independent (each reseeds everything), so they may run as separate processes and be combined:

    python scripts/dpo_vs_ppo.py --seeds 0 --out-dir /tmp/d0      # ... one per seed, then
    python scripts/dpo_vs_ppo.py --merge /tmp/d0,/tmp/d1,/tmp/d2   # the three CSVs, into course/results

wrote the committed CSVs as three processes, one per seed, run concurrently with sweep_ppo_kl.py's three and merged
(``--merge``): about 920 s of wall time each (about 128 s of CPU time each by /usr/bin/time: 2 CPU cores shared with
other jobs, load 7-11). Every model hides the prompts' left padding (``MASK``, issue 19 item 4). Running seed 1
alone and after seed 0 in one process gives the same rows (checked with ``--quick``).

For each seed, builds the notebook's world with course.rlhf.build_preference_world (SFT of
instructgpt-base on the demonstrations, K = 4 comparisons per prompt ranked by noisy Bradley-Terry
labelers, a reward model trained on all K choose 2 pairs), then trains from the same SFT model:

* ``PPO``: the notebook's PPO against the reward model (beta = 0.3 fixed, 80 iterations of 64 rollouts);
* ``PPO (field)``: the same with a clipped value loss (eps 0.2), the policy's and the value model's
  gradients clipped separately (norm 1 each), and Ziegler et al.'s adaptive KL coefficient (start 0.3,
  target KL_TARGET nats per response, horizon 640 episodes, i.e. K_beta = 0.1 per iteration of 64);
* ``PPO beta=0``: no KL penalty (reward hacking), whose responses are stored as text;
* ``DPO beta=b``: DPO on the *same* ranked comparisons the reward model learned from (all K choose 2
  pairs), reference = SFT, 150 AdamW steps of 32 prompts (192 pairs), lr 1e-4.

Every ``EVAL_EVERY`` iterations (PPO) or ``DPO_EVAL_EVERY`` steps (DPO) it measures on the 200 held-out
prompts (2 samples each): KL(pi || SFT) per response (exact over the vocabulary at each sampled prefix),
the proxy (reward-model) score, the hidden true reward (sampled and greedy) and the mean response length
-> course/results/instructgpt_dpo_seeds.csv. PPO's per-iteration diagnostics (beta, rollout KL, clip
fraction, approximate KL, value clip fraction, gradient norms before clipping) ->
course/results/instructgpt_ppo_diagnostics.csv. Sampled and greedy responses of SFT, PPO, PPO beta=0 and
DPO to the first 8 held-out prompts -> course/results/instructgpt_samples.csv.

The seed sets the SFT minibatches, the comparisons and their labels, the reward model's minibatches,
PPO's sampling and DPO's minibatches; the prompts are the notebook's for every seed. Results depend on
float summation order (processor, SIMD width, threads), so another machine gives other draws: the
notebook reads the spread over seeds.
"""
import argparse
import copy
import time
from pathlib import Path

import torch

import course
from course import bench, data, dpo, rl, rlhf
from course.models import load_pretrained
from course.seed_csv import merge_seed_csvs

RESULTS = Path(__file__).resolve().parents[1] / "course" / "results"
CSVS = ("instructgpt_dpo_seeds.csv", "instructgpt_ppo_diagnostics.csv", "instructgpt_samples.csv")
ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])  # a typo must not start the whole run
ap.add_argument("--quick", action="store_true", help="one seed, few steps; writes nothing unless --out-dir")
ap.add_argument("--seeds", default=None, help="comma-separated (default 0,1,2; --quick: 0)")
ap.add_argument("--out-dir", default=None, help="where to write the three CSVs (default course/results)")
ap.add_argument("--merge", default="", help="comma-separated --out-dir folders of per-seed runs to combine into "
                "course/results instead of training")
ARGS = ap.parse_args()
QUICK = ARGS.quick
OUT = Path(ARGS.out_dir) if ARGS.out_dir else (None if QUICK else RESULTS)
SEEDS = [int(x) for x in ARGS.seeds.split(",")] if ARGS.seeds else [0] if QUICK else [0, 1, 2]
MASK = True                       # hide the prompts' left padding from every model (course.rlhf, issue 19 item 4)
W, T = 12, 7                      # prompt width, new tokens per response (as in the notebook)
SFT_STEPS, RM_STEPS = 150, 250    # the notebook's small preset
PPO_STEPS = 4 if QUICK else 80
EVAL_EVERY = 2 if QUICK else 20
BETA = 0.3                        # the notebook's fixed KL coefficient
KL_TARGET, KL_HORIZON = 1.0, 640  # adaptive KL: nats per response; episodes (64 per iteration -> K_beta 0.1)
DPO_BETAS = [0.3, 1.0]
DPO_STEPS = 6 if QUICK else 150
DPO_EVAL_EVERY = 3 if QUICK else 50
DPO_LR = 1e-4
N_SAMPLES = 8                     # held-out prompts whose responses are stored as text

tok = data.CharTokenizer()
STOP_ID = tok.stoi[rl.STOP]
sft_prompts = rlhf.instruction_prompts(1000, seed=1)
rm_prompts = rlhf.instruction_prompts(2000, seed=11)
ppo_prompts = rlhf.instruction_prompts(2000, seed=3)
heldout = rlhf.instruction_prompts(200, seed=2)


def response_texts(model, examples, *, greedy, seed=7):
    """One response per example, cut at the first newline: sampled at temperature 1 or greedy."""
    prompts = [e.prompt for e in examples]
    ids, seen = rl.encode_prompts(tok, prompts, W), rl.padding_mask(prompts, W) if MASK else None
    if greedy:
        comps = rl.greedy_completions(model, ids, T, prompt_mask=seen)
    else:
        comps, _ = rl.sample_completions(model, ids, T, generator=torch.Generator().manual_seed(seed), prompt_mask=seen)
    texts = [t.split(rl.STOP, 1)[0] for t in rl.decode_completions(tok, comps)]
    return [t if len(t.splitlines()) <= 1 else ascii(t) for t in texts]  # one CSV line per response


def mean_length(model):
    """Mean number of characters of a sampled held-out response (2 per prompt), before its newline."""
    texts = response_texts(model, [e for e in heldout for _ in range(2)], greedy=False, seed=1234)
    return sum(map(len, texts)) / len(texts)


def main():
    if ARGS.merge:
        for name in CSVS:
            print("wrote", merge_seed_csvs([Path(d) / name for d in ARGS.merge.split(",")], RESULTS / name))
        return
    rows, diag_rows, sample_rows, seconds = [], [], [], []
    t_all = time.perf_counter()
    for seed in SEEDS:
        t_seed = time.perf_counter()
        course.seed_everything(seed)
        world = rlhf.build_preference_world(load_pretrained("instructgpt-base"), tok, sft_prompts=sft_prompts,
                                            rm_prompts=rm_prompts, heldout=heldout, width=W, max_new_tokens=T,
                                            seed=seed, sft_steps=SFT_STEPS, rm_steps=RM_STEPS, mask_padding=MASK)
        sft, comparisons, rm, proxy = world.sft, world.comparisons, world.rm, world.proxy
        rm_acc = world.rm_heldout_accuracy
        print(f"seed {seed}: SFT + RM in {time.perf_counter() - t_seed:.0f} s; RM held-out accuracy {rm_acc:.3f}",
              flush=True)

        def measure(method, beta, step, model):
            ev = rlhf.evaluate_policy(model, sft, tok, heldout, width=W, max_new_tokens=T, reward_fn=proxy, samples=2,
                                      mask_padding=MASK)
            rows.append({"seed": seed, "method": method, "beta": beta, "step": step, "kl": round(ev["kl"], 4),
                         "proxy_reward": round(ev["proxy"], 4), "true_reward": round(ev["true"], 4),
                         "true_reward_greedy": round(ev["true_greedy"], 4), "mean_length": round(mean_length(model), 4),
                         "rm_heldout_accuracy": round(rm_acc, 4)})
            print(rows[-1], flush=True)

        def store_samples(method, model):
            examples = heldout[:N_SAMPLES]
            for e, s, gr in zip(examples, response_texts(model, examples, greedy=False),
                                response_texts(model, examples, greedy=True), strict=True):
                sample_rows.append({"seed": seed, "method": method, "prompt": e.prompt, "ideal": e.answer,
                                    "sampled": s, "sampled_true": round(rlhf.true_reward(e, s), 4),
                                    "greedy": gr, "greedy_true": round(rlhf.true_reward(e, gr), 4)})

        measure("SFT", 0.0, 0, sft)
        store_samples("SFT", sft)
        ppo_runs = [("PPO", BETA, {}),
                    ("PPO (field)", BETA, {"value_clip_eps": 0.2, "value_max_grad_norm": 1.0, "kl_target": KL_TARGET,
                                           "kl_horizon": KL_HORIZON}),
                    ("PPO beta=0", 0.0, {})]
        for method, beta, extra in ppo_runs:
            policy = copy.deepcopy(sft)

            def evaluate(step, model, method=method, beta=beta):
                if step % EVAL_EVERY == 0:
                    measure(method, beta, step, model)

            hist = rlhf.train_ppo(policy, sft, proxy, ppo_prompts, tok=tok, width=W, max_new_tokens=T, steps=PPO_STEPS,
                                  value_model=rlhf.ScalarHeadGPT(copy.deepcopy(rm.body)), batch_size=64,
                                  minibatch_size=16, ppo_epochs=2, lr=1e-4, beta=beta, seed=1 + 100 * seed,
                                  progress=False, callback=evaluate, mask_padding=MASK, **extra)
            for i, step in enumerate(hist.step):
                diag_rows.append({"seed": seed, "method": method, "iteration": step, "beta": round(hist.beta[i], 5),
                                  "rollout_kl": round(hist.kl[i], 4), "clipfrac": round(hist.clipfrac[i], 4),
                                  "approx_kl": round(hist.approx_kl[i], 5),
                                  "value_clipfrac": round(hist.value_clipfrac[i], 4),
                                  "policy_grad_norm": round(hist.policy_grad_norm[i], 4),
                                  "value_grad_norm": round(hist.value_grad_norm[i], 4)})
            store_samples(method, policy)
        for beta in DPO_BETAS:
            policy = copy.deepcopy(sft)
            method = f"DPO beta={beta}"

            def evaluate(step, model, method=method, beta=beta):
                if step % DPO_EVAL_EVERY == 0:
                    measure(method, beta, step, model)

            dpo.train_dpo(policy, sft, comparisons, beta=beta, steps=DPO_STEPS, batch_prompts=32, lr=DPO_LR,
                          stop_id=STOP_ID, seed=seed, callback=evaluate, mask_padding=MASK)
            store_samples(method, policy)
        seconds.append(time.perf_counter() - t_seed)
        print(f"seed {seed} done in {seconds[-1]:.0f} s", flush=True)

    total = time.perf_counter() - t_all
    print(f"total {total:.0f} s")
    if OUT is None:
        return
    tags = {"script": "scripts/dpo_vs_ppo.py", "seeds": ",".join(map(str, SEEDS)),
            "config": f"sft_steps={SFT_STEPS} rm_steps={RM_STEPS} ppo_steps={PPO_STEPS} beta={BETA} batch=64 "
                      f"minibatch=16 epochs=2 lr=1e-4; field: value_clip=0.2 grad_clip=1.0+1.0 kl_target={KL_TARGET} "
                      f"kl_horizon={KL_HORIZON}; dpo_betas={DPO_BETAS} dpo_steps={DPO_STEPS} dpo_lr={DPO_LR} "
                      f"dpo_batch=32 prompts x 6 pairs; mask_padding={MASK}" + (" QUICK" if QUICK else ""),
            "seconds_per_seed": ",".join(f"{s:.0f}" for s in seconds), "seconds_total": f"{total:.0f}",
            "threads": str(torch.get_num_threads())}
    for table, name in zip((rows, diag_rows, sample_rows), CSVS, strict=True):
        print("wrote", bench.save_csv(table, OUT / name, tags=tags))


if __name__ == "__main__":
    main()
