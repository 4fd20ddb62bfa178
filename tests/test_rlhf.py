"""course.rlhf: the preference world, the reward model, and PPO with a KL penalty (notebook 09)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import course  # noqa: F401  (first, as in every notebook)
from course import dpo, ppo, rl, rlhf
from course.data import CharTokenizer, Example
from course.models.tinygpt import GPTConfig, TinyGPT

TOK = CharTokenizer()
W, T = 12, 5


def tiny(seed=0, layers=1, d=32):
    torch.manual_seed(seed)
    return TinyGPT(GPTConfig(vocab_size=TOK.vocab_size, block_size=24, n_layer=layers, n_head=2, d_model=d)).eval()


# --- the world ---------------------------------------------------------------------------------


def test_instruction_prompts_are_deterministic_and_answered_correctly():
    a, b = rlhf.instruction_prompts(50, seed=7), rlhf.instruction_prompts(50, seed=7)
    assert a == b and a != rlhf.instruction_prompts(50, seed=8)
    for e in a:
        task, s = e.prompt[:-1].split(":")
        assert 3 <= len(s) <= 5 and set(s) <= set(rlhf.ALPHABET)
        assert e.answer == {"copy": s, "rev": s[::-1], "sort": "".join(sorted(s))}[task]


@pytest.mark.parametrize("kwargs", [{"n": 0}, {"n": 3, "tasks": ("add",)}, {"n": 3, "min_len": 4, "max_len": 2}])
def test_instruction_prompts_reject_bad_arguments(kwargs):
    n = kwargs.pop("n")
    with pytest.raises(ValueError):
        rlhf.instruction_prompts(n, seed=0, **kwargs)


def test_true_reward_gives_partial_credit_in_zero_one():
    e = Example("rev:cab|", "bac")
    assert rlhf.true_reward(e, "bac\nmore") == 1.0
    assert rlhf.true_reward(e, "bca") == pytest.approx(1 / 3)
    assert rlhf.true_reward(e, "bacc") == pytest.approx(3 / 4)
    assert rlhf.true_reward(e, "") == 0.0
    with pytest.raises(TypeError, match="Example"):
        rlhf.true_reward("rev:cab|", "bac")


def test_plackett_luce_pairs_follow_bradley_terry():
    # 20000 rankings: a proportion's standard error is at most 0.0036, so 0.015 is about 4 sigma.
    scores = torch.tensor([[0.3, 0.2, 0.0]]).repeat(20000, 1)
    g = torch.Generator().manual_seed(0)
    ranks = rlhf.plackett_luce_rankings(scores, temperature=0.1, generator=g)
    position = torch.argsort(ranks, dim=1)  # position[p, i] = rank of response i
    for i, j in [(0, 1), (0, 2), (1, 2)]:
        observed = (position[:, i] < position[:, j]).float().mean().item()
        expected = 1 / (1 + math.exp(-(scores[0, i] - scores[0, j]).item() / 0.1))
        assert abs(observed - expected) < 0.015, (i, j, observed, expected)
    with pytest.raises(ValueError, match="temperature"):
        rlhf.plackett_luce_rankings(scores[:2], temperature=0.0)


# --- reward model ------------------------------------------------------------------------------


def test_hidden_states_are_what_the_lm_head_reads():
    model = tiny()
    idx = torch.randint(0, TOK.vocab_size, (2, 9))
    # same float32 ops in the same order as TinyGPT.forward: equal to rounding
    assert torch.allclose(model.lm_head(rlhf.hidden_states(model, idx)), model(idx), atol=1e-5)
    with pytest.raises(TypeError):
        rlhf.hidden_states(torch.nn.Linear(2, 2), idx)


def test_reward_scores_sum_the_head_over_the_response_only():
    rm = rlhf.ScalarHeadGPT(tiny())
    ids = rlhf.response_ids(TOK, ["rev:ab|", "rev:ab|"], ["ba", "ba\nzz"], width=W, length=T)
    assert ids.shape == (2, W + T)
    assert torch.equal(ids[0], ids[1])  # text after the first newline never reaches the model
    per_position = rm(ids)
    assert torch.allclose(rlhf.reward_scores(rm, ids, W), per_position[:, W:W + 3].sum(1))  # 'b', 'a', newline
    with pytest.raises(ValueError, match="width"):
        rlhf.reward_scores(rm, ids, W + T)


def test_rm_pairwise_loss_of_one_pair_and_of_a_perfect_ranking():
    assert rlhf.rm_pairwise_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0, 1]])).item() == pytest.approx(
        math.log1p(math.exp(-1)))
    big = torch.tensor([[30.0, 20.0, 10.0]])
    assert rlhf.rm_pairwise_loss(big, torch.tensor([[0, 1, 2]])).item() < 1e-4
    with pytest.raises(ValueError):
        rlhf.rm_pairwise_loss(big, torch.tensor([[0, 1]]))


def test_reward_model_training_lowers_the_loss_and_learns_held_out_pairs():
    policy = tiny(layers=1, d=32)
    prompts = rlhf.instruction_prompts(64, seed=5)
    comps = rlhf.collect_comparisons(policy, TOK, prompts, k=3, width=W, max_new_tokens=T, seed=0)
    assert comps.ids.shape == (64, 3, W + T + 1) and comps.rankings.shape == (64, 3)
    rm = rlhf.ScalarHeadGPT(copy.deepcopy(policy))
    losses = rlhf.train_reward_model(rm, comps, steps=40, batch_prompts=16, lr=3e-3)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    assert 0.0 <= rlhf.pairwise_accuracy(rm, comps) <= 1.0
    with pytest.raises(ValueError, match="against"):
        rlhf.pairwise_accuracy(rm, comps, against="people")


# --- PPO pieces --------------------------------------------------------------------------------


def test_kl_penalized_rewards_sum_to_score_minus_beta_times_the_log_ratio():
    g = torch.Generator().manual_seed(0)
    logp, ref = -torch.rand(4, 6, generator=g), -torch.rand(4, 6, generator=g)
    mask = (torch.arange(6)[None] < torch.tensor([[1], [3], [6], [2]])).float()
    scores = torch.randn(4, generator=g)
    r = rlhf.kl_penalized_rewards(scores, logp, ref, mask, 0.2)
    assert torch.allclose(r.sum(1), scores - 0.2 * ((logp - ref) * mask).sum(1), atol=1e-6)
    assert (r * (1 - mask)).abs().sum() == 0
    with pytest.raises(ValueError):
        rlhf.kl_penalized_rewards(scores[:3], logp, ref, mask, 0.2)


def test_gae_limits_are_monte_carlo_and_td():
    g = torch.Generator().manual_seed(1)
    r, v, m = torch.randn(2, 4, generator=g), torch.randn(2, 4, generator=g), torch.ones(2, 4)
    adv1, ret1 = rlhf.gae(r, v, m, gamma=1.0, lam=1.0)
    assert torch.allclose(ret1, r.flip(1).cumsum(1).flip(1), atol=1e-6)  # undiscounted reward-to-go
    adv0, _ = rlhf.gae(r, v, m, gamma=0.9, lam=0.0)
    nxt = torch.cat([v[:, 1:], torch.zeros(2, 1)], 1)
    assert torch.allclose(adv0, r + 0.9 * nxt - v, atol=1e-6)


def test_sequence_kl_is_zero_for_equal_policies_and_positive_otherwise():
    a, b = tiny(0), tiny(1)
    ids = rl.encode_prompts(TOK, ["rev:ab|", "sort:cba|"], W)
    comps, _ = rl.sample_completions(a, ids, T, generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(comps, dtype=torch.float32)
    assert torch.allclose(rlhf.sequence_kl(a, copy.deepcopy(a), ids, comps, mask), torch.zeros(2), atol=1e-6)
    kl = rlhf.sequence_kl(a, b, ids, comps, mask)
    assert (kl > 0).all()


def test_whiten_gives_zero_mean_unit_variance_on_the_mask():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, -50.0]])
    m = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    w = rlhf.whiten(x, m)
    assert abs(rlhf.masked_mean(w, m).item()) < 1e-6
    assert abs(rlhf.masked_mean(w ** 2, m).item() - 1) < 1e-4
    assert (w * (1 - m)).abs().sum() == 0


# --- the trainer ---------------------------------------------------------------------------------


def fraction_of_a(examples, texts):
    return torch.tensor([t.split("\n")[0].count("a") / T for t in texts])


def test_train_ppo_raises_a_simple_reward_and_logs_every_iteration():
    policy, ref = tiny(3), tiny(3)
    prompts = rlhf.instruction_prompts(32, seed=0)
    before = fraction_of_a(None, [TOK.decode(r) for r in rl.sample_completions(
        policy, rl.encode_prompts(TOK, [p.prompt for p in prompts], W), T,
        generator=torch.Generator().manual_seed(0))[0]]).mean().item()
    calls = []
    hist = rlhf.train_ppo(policy, ref, fraction_of_a, prompts, tok=TOK, width=W, max_new_tokens=T, steps=12,
                          batch_size=32, minibatch_size=16, ppo_epochs=2, lr=3e-3, beta=0.0, progress=False,
                          callback=lambda step, model: calls.append(step))
    assert calls == list(range(1, 13)) and len(hist.kl) == 12 and all(k >= 0 for k in hist.kl)
    assert math.isnan(hist.true_reward[0]) and math.isnan(hist.ptx_loss[0])
    assert sum(hist.reward[-3:]) / 3 > before + 0.1  # from ~1/96 per token to clearly more 'a's


def test_train_ppo_with_ptx_logs_the_pretraining_loss():
    policy, ref = tiny(4), tiny(4)
    tokens = TOK.encode("the quick brown fox jumps over the lazy dog. " * 20)
    hist = rlhf.train_ppo(policy, ref, rlhf.per_example(lambda e, t: 0.0), rlhf.instruction_prompts(8, seed=0),
                          tok=TOK, width=W, max_new_tokens=T, steps=2, batch_size=8, minibatch_size=8,
                          ppo_epochs=1, ptx_coef=1.0, ptx_tokens=tokens, ptx_block=16, progress=False)
    assert all(x > 0 for x in hist.ptx_loss)


def test_train_ppo_validates_its_arguments():
    policy, ref = tiny(), tiny()
    prompts = rlhf.instruction_prompts(4, seed=0)
    kw = dict(tok=TOK, width=W, max_new_tokens=T, steps=1, batch_size=4, minibatch_size=4, progress=False)
    with pytest.raises(ValueError, match="minibatch_size"):
        rlhf.train_ppo(policy, ref, fraction_of_a, prompts, **{**kw, "minibatch_size": 8})
    with pytest.raises(ValueError, match="ptx_tokens"):
        rlhf.train_ppo(policy, ref, fraction_of_a, prompts, ptx_coef=1.0, **kw)
    with pytest.raises(TypeError, match="ref"):
        rlhf.train_ppo(policy, "sft", fraction_of_a, prompts, **kw)
    with pytest.raises(ValueError, match="trainable"):
        rlhf.train_ppo(copy.deepcopy(policy).requires_grad_(False), ref, fraction_of_a, prompts, **kw)


def test_win_rate_of_a_model_against_itself_is_one_half():
    m = tiny()
    assert rlhf.win_rate(m, copy.deepcopy(m), TOK, rlhf.instruction_prompts(16, seed=0), width=W,
                         max_new_tokens=T) == 0.5


# --- PPO as the field runs it: value clipping, adaptive KL, diagnostics, separate clipping ----------


def test_clipped_value_loss_is_the_plain_loss_inside_the_clip_and_never_below_it():
    g = torch.Generator().manual_seed(2)
    values, returns = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    mask = (torch.arange(5)[None] < torch.tensor([[5], [2], [1], [4]])).float()
    plain = 0.5 * rlhf.masked_mean((values - returns) ** 2, mask)
    near = values + 0.05 * torch.rand(4, 5, generator=g)  # old values within eps = 0.1 of the new ones
    assert torch.allclose(rlhf.clipped_value_loss(values, near, returns, mask, clip_eps=0.1), plain, atol=1e-6)
    far = values + 3 * torch.randn(4, 5, generator=g)
    assert rlhf.clipped_value_loss(values, far, returns, mask, clip_eps=0.1) >= plain - 1e-6
    with pytest.raises(ValueError, match="shape"):
        rlhf.clipped_value_loss(values, far[:, :3], returns, mask)


def test_adaptive_kl_beta_follows_ziegler_and_is_steady_at_the_target():
    assert rlhf.adaptive_kl_beta(0.2, 1.0, target=1.0, horizon=640, n_steps=64) == 0.2
    assert rlhf.adaptive_kl_beta(0.2, 1.1, target=1.0, horizon=640, n_steps=64) == pytest.approx(0.2 * 1.01)
    # far above or below the target the step is capped at 20 % of n_steps / horizon
    assert rlhf.adaptive_kl_beta(0.2, 50.0, target=1.0, horizon=640, n_steps=64) == pytest.approx(0.2 * 1.02)
    assert rlhf.adaptive_kl_beta(0.2, 0.0, target=1.0, horizon=640, n_steps=64) == pytest.approx(0.2 * 0.98)
    with pytest.raises(ValueError, match="target"):
        rlhf.adaptive_kl_beta(0.2, 1.0, target=0.0, horizon=640, n_steps=64)


def test_ppo_diagnostics_count_ratios_outside_the_clip_and_estimate_kl():
    old = torch.zeros(1, 4)
    logp = torch.log(torch.tensor([[1.0, 1.1, 1.5, 0.5]]))
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    frac, approx = rlhf.ppo_diagnostics(logp, old, mask, 0.2)
    assert frac == pytest.approx(1 / 3)  # only ratio 1.5 of the three response tokens
    expected = ((0.1 - math.log(1.1)) + (0.5 - math.log(1.5))) / 3  # k3: (rho - 1) - log rho
    assert approx == pytest.approx(expected, abs=1e-7)
    assert rlhf.ppo_diagnostics(old, old, mask, 0.2) == (0.0, 0.0)


def test_gradients_are_clipped_jointly_by_default_and_separately_on_request():
    def graded(scale_p, scale_v):
        p, v = torch.nn.Linear(3, 3), torch.nn.Linear(3, 1)
        for m, s in ((p, scale_p), (v, scale_v)):
            for w in m.parameters():
                w.grad = torch.full_like(w, s)
        return p, v
    p, v = graded(0.01, 100.0)
    ppo._clip_gradients(p, v, 1.0, None)  # one norm: the big value gradient shrinks the policy's too
    assert rlhf.grad_norm(p.parameters()) < 0.01 * math.sqrt(12) / 100  # scaled by about 1 / 200
    p, v = graded(0.01, 100.0)
    ppo._clip_gradients(p, v, 1.0, 1.0)  # separately: the policy's small gradient is untouched
    assert rlhf.grad_norm(p.parameters()) == pytest.approx(0.01 * math.sqrt(12), rel=1e-5)
    assert rlhf.grad_norm(v.parameters()) == pytest.approx(1.0, rel=1e-5)


def test_train_ppo_logs_clipfrac_and_approx_kl_per_update_and_adapts_beta():
    policy, ref = tiny(3), tiny(4)  # a different reference, so the measured KL is far above the target
    prompts = rlhf.instruction_prompts(16, seed=0)
    hist = rlhf.train_ppo(policy, ref, fraction_of_a, prompts, tok=TOK, width=W, max_new_tokens=T, steps=3,
                          batch_size=16, minibatch_size=8, ppo_epochs=2, lr=3e-3, beta=0.1, progress=False,
                          value_clip_eps=0.2, value_max_grad_norm=1.0, kl_target=0.01, kl_horizon=160)
    assert len(hist.update_clipfrac) == len(hist.update_approx_kl) == 3 * 2 * 2  # iterations x epochs x minibatches
    assert hist.update_clipfrac[0] == 0.0 and abs(hist.update_approx_kl[0]) < 1e-6  # first update: pi == pi_old
    assert all(0.0 <= x <= 1.0 for x in hist.clipfrac + hist.value_clipfrac)
    for i in range(2):  # each iteration's beta is the controller's update of the previous one
        assert hist.beta[i + 1] == pytest.approx(rlhf.adaptive_kl_beta(hist.beta[i], hist.kl[i], target=0.01,
                                                                       horizon=160, n_steps=16))
    assert hist.beta[0] == 0.1 and hist.beta[1] > 0.1
    fixed = rlhf.train_ppo(tiny(3), ref, fraction_of_a, prompts, tok=TOK, width=W, max_new_tokens=T, steps=2,
                           batch_size=16, minibatch_size=8, ppo_epochs=1, beta=0.1, progress=False)
    assert fixed.beta == [0.1, 0.1] and all(math.isnan(x) for x in fixed.value_clipfrac)
    with pytest.raises(ValueError, match="kl_target"):
        rlhf.train_ppo(tiny(3), ref, fraction_of_a, prompts, tok=TOK, width=W, max_new_tokens=T, steps=1,
                       batch_size=16, minibatch_size=8, kl_target=0.0, progress=False)


# --- DPO (course.dpo) ----------------------------------------------------------------------------


def test_dpo_loss_is_log_two_at_the_reference_and_falls_as_the_margin_grows():
    z = torch.zeros(3)
    assert dpo.dpo_loss(z, z, z, z, beta=0.1).item() == pytest.approx(math.log(2))
    up = dpo.dpo_loss(z + 1, z, z, z, beta=0.1).item()
    assert up == pytest.approx(math.log1p(math.exp(-0.1)), abs=1e-6) and up < math.log(2)
    with pytest.raises(ValueError, match="beta"):
        dpo.dpo_loss(z, z, z, z, beta=0.0)
    with pytest.raises(ValueError, match="shape"):
        dpo.dpo_loss(z, z[:2], z, z, beta=0.1)


def test_sequence_logprobs_sum_the_response_up_to_its_stop():
    model = tiny()
    ids = rlhf.response_ids(TOK, ["rev:ab|", "rev:ab|"], ["ba", "ba\nzz"], width=W, length=T)
    lp = dpo.sequence_logprobs(model, ids, W, TOK.stoi["\n"])
    per_token = rl.token_logprobs(model, ids[:, :W], ids[:, W:])
    assert torch.allclose(lp, per_token[:, :3].sum(1), atol=1e-5)  # 'b', 'a' and the newline
    assert torch.allclose(lp[0], lp[1])


def test_ranked_pairs_list_every_pair_best_first():
    win, lose = dpo.ranked_pairs(torch.tensor([[2, 0, 1]]))
    assert win.tolist() == [[2, 2, 0]] and lose.tolist() == [[0, 1, 1]]


def test_train_dpo_raises_the_preferred_responses_relative_to_the_reference():
    policy, ref = tiny(5), tiny(5)
    comps = rlhf.collect_comparisons(policy, TOK, rlhf.instruction_prompts(24, seed=5), k=3, width=W,
                                     max_new_tokens=T, seed=0)
    hist = dpo.train_dpo(policy, ref, comps, beta=0.5, steps=30, batch_prompts=8, lr=3e-3, stop_id=TOK.stoi["\n"])
    assert len(hist.loss) == 30 and hist.loss[0] == pytest.approx(math.log(2), abs=1e-5)  # policy == ref at step 1
    assert sum(hist.loss[-5:]) / 5 < math.log(2) - 0.05 and sum(hist.margin[-5:]) / 5 > 0
    with pytest.raises(TypeError, match="ref"):
        dpo.train_dpo(policy, "sft", comps, beta=0.5, steps=1)


# --- train_ppo(mask_padding=True): nothing depends on how far the prompts were padded -----------------


def test_masked_train_ppo_rollouts_values_and_log_probs_do_not_depend_on_the_padding_width():
    """<= 1e-5: masked keys add exact zeros to each softmax; only float32 summation order differs."""
    prompts = rlhf.instruction_prompts(16, seed=0)
    seen = {}
    for width in (W, W + 3):
        seen[width] = []

        def loss_fn(logp, old_logp, adv, values, returns, mask, *, clip_eps, record=seen[width]):
            record.append([t.detach().clone() for t in (logp, old_logp, adv, values, returns, mask)])
            return rlhf.ppo_loss(logp, old_logp, adv, values, returns, mask, clip_eps=clip_eps)

        policy, ref = tiny(0), tiny(0)
        hist = rlhf.train_ppo(policy, ref, rlhf.per_example(rlhf.true_reward), prompts, tok=TOK, width=width,
                              max_new_tokens=T, steps=2, batch_size=8, minibatch_size=8, ppo_epochs=1, beta=0.1,
                              seed=0, loss_fn=loss_fn, progress=False, mask_padding=True)
        seen[width].append([torch.tensor(hist.reward), torch.tensor(hist.kl)])
    for a, b in zip(seen[W], seen[W + 3], strict=True):
        for x, y in zip(a, b, strict=True):
            assert (x - y).abs().max().item() <= 1e-5


def test_build_preference_world_trains_sft_in_place_and_centres_the_proxy_on_sft_samples():
    base = tiny(0)
    before = copy.deepcopy(base)
    world = rlhf.build_preference_world(base, TOK, sft_prompts=rlhf.instruction_prompts(32, seed=1),
                                        rm_prompts=rlhf.instruction_prompts(8, seed=11),
                                        heldout=rlhf.instruction_prompts(4, seed=2), width=W, max_new_tokens=T,
                                        seed=0, sft_steps=2, rm_steps=2)
    assert world.sft is base and any(not torch.equal(a, b) for a, b in zip(base.parameters(), before.parameters()))
    assert world.comparisons.ids.shape[:2] == (8, 4) and world.held_comparisons.ids.shape[:2] == (4, 4)
    again = rlhf.pairwise_accuracy(world.rm, world.held_comparisons)  # nan when every held-out pair ties
    assert world.rm_heldout_accuracy == again or (math.isnan(again) and math.isnan(world.rm_heldout_accuracy))
    examples = [e for e in world.comparisons.examples for _ in range(4)]
    texts = [t for ts in world.comparisons.texts for t in ts]
    # InstructGPT's offset: the SFT samples the reward model learned from score 0 on average (float32 sums)
    assert abs(world.proxy(examples, texts).mean().item()) <= 1e-5


# --- notebook 09's chain with mask_padding=True: scores, log-probs and evaluations ignore the padding -----
# Masked keys add exact zeros to each softmax and positions count real tokens only, so the same prompt
# padded 3 characters further gives the same numbers up to float32 summation order: <= PAD_TOL. Unmasked,
# the extra spaces are tokens the model reads, and the numbers move by far more (> 100 * PAD_TOL).
PAD_TOL = 1e-5
WIDE = W + 3  # tiny()'s block of 24 holds WIDE + T + 1 = 21 tokens


def padded_twice(prompts, texts):
    """response_ids of the same (prompt, text) pairs at widths W and WIDE."""
    return [rlhf.response_ids(TOK, prompts, texts, width=w, length=T + 1) for w in (W, WIDE)]


PROMPTS, TEXTS = ["rev:abc|", "copy:fed|", "sort:cab|"], ["cba", "fe", "abcc\nx"]


def test_response_attention_hides_only_the_prompts_left_padding():
    ids = rlhf.response_ids(TOK, ["rev:ab|"], ["b a"], width=W, length=T)  # a space inside the response
    seen = rlhf.response_attention(ids, True)
    assert seen[0].tolist() == [False] * (W - 7) + [True] * (7 + T)
    assert rlhf.response_attention(ids, False) is None


def test_masked_reward_scores_do_not_depend_on_the_padding_width_and_unmasked_do():
    rm = rlhf.ScalarHeadGPT(tiny(3))
    narrow, wide = padded_twice(PROMPTS, TEXTS)
    masked = [rlhf.reward_scores(rm, ids, w, attention_mask=rlhf.response_attention(ids, True))
              for ids, w in ((narrow, W), (wide, WIDE))]
    assert (masked[0] - masked[1]).abs().max().item() <= PAD_TOL
    unmasked = rlhf.reward_scores(rm, wide, WIDE)
    assert (unmasked - masked[0]).abs().max().item() > 100 * PAD_TOL
    assert torch.equal(rlhf.reward_scores(rm, narrow, W, attention_mask=None), rlhf.reward_scores(rm, narrow, W))


def test_masked_dpo_sequence_logprobs_do_not_depend_on_the_padding_width_and_unmasked_do():
    model = tiny(4)
    narrow, wide = padded_twice(PROMPTS, TEXTS)
    masked = [dpo.sequence_logprobs(model, ids, w, attention_mask=rlhf.response_attention(ids, True))
              for ids, w in ((narrow, W), (wide, WIDE))]
    assert (masked[0] - masked[1]).abs().max().item() <= PAD_TOL
    assert (dpo.sequence_logprobs(model, wide, WIDE) - masked[0]).abs().max().item() > 100 * PAD_TOL
    with pytest.raises(ValueError, match="attention_mask"):
        dpo.sequence_logprobs(model, wide, WIDE, attention_mask=rlhf.response_attention(narrow, True))


def test_masked_evaluation_and_win_rate_do_not_depend_on_the_padding_width_and_unmasked_do():
    policy, ref, rm = tiny(5), tiny(5), rlhf.ScalarHeadGPT(tiny(7))
    for model, steps in ((policy, 60), (ref, 20)):  # a little SFT: responses that earn some true reward
        rl.train_sft(model, TOK, rlhf.instruction_prompts(256, seed=1), width=W, steps=steps, batch_size=32, seed=0)
    examples = rlhf.instruction_prompts(24, seed=9)

    def evaluate(width, masked):
        proxy = rlhf.rm_reward_fn(rm, TOK, width=width, length=T + 1, mask_padding=masked)
        ev = rlhf.evaluate_policy(policy, ref, TOK, examples, width=width, max_new_tokens=T, reward_fn=proxy,
                                  samples=2, mask_padding=masked)
        ev["win"] = rlhf.win_rate(policy, ref, TOK, examples, width=width, max_new_tokens=T, mask_padding=masked)
        ev["win_greedy"] = rlhf.win_rate(policy, ref, TOK, examples, width=width, max_new_tokens=T, greedy=True,
                                         mask_padding=masked)
        return ev

    narrow, wide = evaluate(W, True), evaluate(WIDE, True)
    default = rlhf.evaluate_policy(policy, ref, TOK, examples, width=W, max_new_tokens=T, samples=2)
    assert all(default[k] == narrow[k] for k in default)  # notebook 09's chain hides the padding by default
    assert narrow.keys() == wide.keys() == {"true", "kl", "proxy", "true_greedy", "win", "win_greedy"}
    assert all(abs(narrow[k] - wide[k]) <= PAD_TOL for k in narrow), (narrow, wide)
    unmasked = evaluate(WIDE, False)
    assert all(abs(unmasked[k] - narrow[k]) > 100 * PAD_TOL for k in ("true", "kl", "proxy")), (narrow, unmasked)


def test_unmasked_evaluation_keeps_model_generates_greedy_tokens():
    """evaluate_policy's greedy reward comes from rl.greedy_completions: unmasked it is model.generate's."""
    policy, examples = tiny(5), rlhf.instruction_prompts(24, seed=9)
    ids = rl.encode_prompts(TOK, [e.prompt for e in examples], W)
    texts = [TOK.decode(r) for r in policy.generate(ids, T, temperature=0.0)[:, W:]]
    want = rlhf.true_rewards(examples, texts).mean().item()
    ev = rlhf.evaluate_policy(policy, policy, TOK, examples, width=W, max_new_tokens=T, mask_padding=False)
    assert ev["true_greedy"] == want


def test_masked_preference_world_and_dpo_do_not_depend_on_the_padding_width():
    """The whole chain with mask_padding=True (SFT, comparisons, reward model, its accuracy and offset, the
    proxy, DPO) run at two padding widths: the same samples, and numbers within PAD_TOL after a few steps."""
    worlds, dpo_losses = {}, {}
    for width in (W, WIDE):
        world = rlhf.build_preference_world(tiny(0), TOK, sft_prompts=rlhf.instruction_prompts(32, seed=1),
                                            rm_prompts=rlhf.instruction_prompts(8, seed=11),
                                            heldout=rlhf.instruction_prompts(8, seed=2), width=width,
                                            max_new_tokens=T, seed=0, sft_steps=3, rm_steps=3, mask_padding=True)
        assert world.mask_padding
        worlds[width] = world
        dpo_losses[width] = dpo.train_dpo(copy.deepcopy(world.sft), world.sft, world.comparisons, beta=0.5, steps=3,
                                          batch_prompts=4, lr=3e-3, mask_padding=True).loss
    a, b = worlds[W], worlds[WIDE]
    assert a.comparisons.texts == b.comparisons.texts and torch.equal(a.comparisons.rankings, b.comparisons.rankings)
    assert a.rm_heldout_accuracy == b.rm_heldout_accuracy or (math.isnan(a.rm_heldout_accuracy)
                                                               and math.isnan(b.rm_heldout_accuracy))
    examples = [e for e in a.comparisons.examples for _ in range(4)]
    texts = [t for ts in a.comparisons.texts for t in ts]
    assert (a.proxy(examples, texts) - b.proxy(examples, texts)).abs().max().item() <= PAD_TOL
    assert max(abs(x - y) for x, y in zip(dpo_losses[W], dpo_losses[WIDE], strict=True)) <= PAD_TOL
