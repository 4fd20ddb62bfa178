"""course.checks.instructgpt: every check passes the reference, fails the stub, and rejects the
plausible wrong implementations its hints name (a check that cannot fail is a defect)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import course  # noqa: F401  (first, as in every notebook)
from course import dpo, rl, rlhf
from course.checks import core
from course.checks import instructgpt as checks


def passed(check, fn) -> bool:
    check(fn)
    return core.RESULTS[-1].passed


def stub(*args, **kwargs):
    raise NotImplementedError("Exercise 9.k")


REFERENCES = [(checks.sft_loss, rl.sft_loss), (checks.rm_pairwise_loss, rlhf.rm_pairwise_loss),
              (checks.kl_penalized_rewards, rlhf.kl_penalized_rewards), (checks.gae, rlhf.gae),
              (checks.ppo_loss, rlhf.ppo_loss), (checks.clipped_value_loss, rlhf.clipped_value_loss),
              (checks.adaptive_kl_beta, rlhf.adaptive_kl_beta), (checks.dpo_loss, dpo.dpo_loss)]


def test_every_check_passes_the_reference_and_fails_the_stub():
    for check, reference in REFERENCES:
        assert passed(check, reference), check.__name__
        assert not passed(check, stub), check.__name__
        assert "not implemented" in core.RESULTS[-1].message


# --- 9.1 --------------------------------------------------------------------------------------


def test_sft_check_rejects_a_loss_over_every_token():
    def unmasked(model, ids, mask, attention_mask=None):
        return model(ids[:, :-1], ids[:, 1:])[1]
    assert not passed(checks.sft_loss, unmasked)
    assert "every token" in core.RESULTS[-1].message


def test_sft_check_rejects_a_loss_that_lets_the_model_attend_to_the_padding():
    def attends(model, ids, mask, attention_mask=None):
        return rl.sft_loss(model, ids, mask)  # the response-only loss, but attention_mask ignored
    assert not passed(checks.sft_loss, attends)
    assert "attended to the left padding" in core.RESULTS[-1].message


def test_sft_check_rejects_a_detached_loss():
    assert not passed(checks.sft_loss, lambda m, i, k, attention_mask=None: rl.sft_loss(
        m, i, k, attention_mask=attention_mask).detach())


# --- 9.2 --------------------------------------------------------------------------------------


def test_rm_check_rejects_adjacent_pairs_only():
    def adjacent(scores, rankings):
        ranked = scores.gather(1, rankings)
        return -F.logsigmoid(ranked[:, :-1] - ranked[:, 1:]).mean()
    assert not passed(checks.rm_pairwise_loss, adjacent)
    assert "neighbouring" in core.RESULTS[-1].message


def test_rm_check_rejects_ignoring_the_ranking_and_a_flipped_sign():
    def unranked(scores, rankings):
        k = scores.shape[1]
        win, lose = torch.triu_indices(k, k, offset=1)
        return -F.logsigmoid(scores[:, win] - scores[:, lose]).mean()
    assert not passed(checks.rm_pairwise_loss, unranked)
    assert not passed(checks.rm_pairwise_loss, lambda s, r: rlhf.rm_pairwise_loss(-s, r))


# --- 9.3 --------------------------------------------------------------------------------------


def test_kl_reward_check_rejects_the_score_on_the_last_position():
    def at_end(scores, logp, ref_logp, mask, beta):
        rewards = -beta * (logp - ref_logp) * mask
        rewards[:, -1] += scores
        return rewards
    assert not passed(checks.kl_penalized_rewards, at_end)
    assert "last *response* token" in core.RESULTS[-1].message


def test_kl_reward_check_rejects_a_wrong_sign_and_a_missing_mask():
    assert not passed(checks.kl_penalized_rewards,
                      lambda s, lp, rp, m, b: rlhf.kl_penalized_rewards(s, rp, lp, m, b))
    assert not passed(checks.kl_penalized_rewards,
                      lambda s, lp, rp, m, b: rlhf.kl_penalized_rewards(s, lp, rp, m, b) - b * (lp - rp) * (1 - m))


# --- 9.4 --------------------------------------------------------------------------------------


def test_gae_check_rejects_bootstrapping_past_the_end():
    def no_mask(rewards, values, mask, *, gamma=1.0, lam=0.95):
        return rlhf.gae(rewards, values, torch.ones_like(mask), gamma=gamma, lam=lam)
    assert not passed(checks.gae, no_mask)


def test_gae_check_rejects_returns_without_values_and_an_ignored_lambda():
    def returns_are_advantages(rewards, values, mask, *, gamma=1.0, lam=0.95):
        adv, _ = rlhf.gae(rewards, values, mask, gamma=gamma, lam=lam)
        return adv, adv
    assert not passed(checks.gae, returns_are_advantages)
    assert not passed(checks.gae, lambda r, v, m, *, gamma=1.0, lam=0.95: rlhf.gae(r, v, m, gamma=gamma, lam=1.0))


# --- 9.5 --------------------------------------------------------------------------------------


def test_ppo_check_rejects_a_loss_with_the_clipping_removed():
    def unclipped(logp, old_logp, adv, values, returns, mask, *, clip_eps=0.2):
        ratio = torch.exp(logp - old_logp)
        return -rlhf.masked_mean(ratio * adv, mask), 0.5 * rlhf.masked_mean((values - returns) ** 2, mask)
    assert not passed(checks.ppo_loss, unclipped)
    assert "clip" in core.RESULTS[-1].message


def test_ppo_check_rejects_clipping_without_the_minimum():
    def clip_only(logp, old_logp, adv, values, returns, mask, *, clip_eps=0.2):
        ratio = torch.clamp(torch.exp(logp - old_logp), 1 - clip_eps, 1 + clip_eps)
        return -rlhf.masked_mean(ratio * adv, mask), 0.5 * rlhf.masked_mean((values - returns) ** 2, mask)
    assert not passed(checks.ppo_loss, clip_only)


def test_ppo_check_rejects_an_unmasked_mean_and_a_value_loss_without_one_half():
    def unmasked(logp, old_logp, adv, values, returns, mask, *, clip_eps=0.2):
        return rlhf.ppo_loss(logp, old_logp, adv, values, returns, torch.ones_like(mask), clip_eps=clip_eps)
    def no_half(logp, old_logp, adv, values, returns, mask, *, clip_eps=0.2):
        p, v = rlhf.ppo_loss(logp, old_logp, adv, values, returns, mask, clip_eps=clip_eps)
        return p, 2 * v
    assert not passed(checks.ppo_loss, unmasked)
    assert not passed(checks.ppo_loss, no_half)


# --- 9.6 --------------------------------------------------------------------------------------


def test_value_clip_check_rejects_the_unclipped_loss():
    def unclipped(values, old_values, returns, mask, *, clip_eps=0.2):
        return 0.5 * rlhf.masked_mean((values - returns) ** 2, mask)
    assert not passed(checks.clipped_value_loss, unclipped)
    assert "unclipped" in core.RESULTS[-1].message


def test_value_clip_check_rejects_min_instead_of_max():
    def smaller_error(values, old_values, returns, mask, *, clip_eps=0.2):
        clipped = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
        return 0.5 * rlhf.masked_mean(torch.minimum((values - returns) ** 2, (clipped - returns) ** 2), mask)
    assert not passed(checks.clipped_value_loss, smaller_error)
    assert "min" in core.RESULTS[-1].message


def test_value_clip_check_rejects_clipping_around_zero_and_clipping_only():
    def around_zero(values, old_values, returns, mask, *, clip_eps=0.2):
        clipped = torch.clamp(values, -clip_eps, clip_eps)
        return 0.5 * rlhf.masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)
    def clipped_only(values, old_values, returns, mask, *, clip_eps=0.2):
        clipped = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
        return 0.5 * rlhf.masked_mean((clipped - returns) ** 2, mask)
    assert not passed(checks.clipped_value_loss, around_zero)
    assert not passed(checks.clipped_value_loss, clipped_only)


# --- 9.7 --------------------------------------------------------------------------------------


def test_adaptive_kl_check_rejects_an_unclipped_error():
    def unclipped(beta, kl, *, target, horizon, n_steps):
        return beta * (1 + (kl / target - 1) * n_steps / horizon)
    assert not passed(checks.adaptive_kl_beta, unclipped)
    assert "clipped to [-0.2, 0.2]" in core.RESULTS[-1].message


def test_adaptive_kl_check_rejects_the_wrong_direction_and_an_absolute_error():
    def backwards(beta, kl, *, target, horizon, n_steps):
        return beta * (1 - min(max(kl / target - 1, -0.2), 0.2) * n_steps / horizon)
    def absolute(beta, kl, *, target, horizon, n_steps):
        return beta * (1 + min(max(kl - target, -0.2), 0.2) * n_steps / horizon)
    assert not passed(checks.adaptive_kl_beta, backwards)
    assert "grow" in core.RESULTS[-1].message
    assert not passed(checks.adaptive_kl_beta, absolute)
    assert "relative" in core.RESULTS[-1].message


# --- 9.8 --------------------------------------------------------------------------------------


def test_dpo_check_rejects_a_loss_without_the_reference():
    def no_reference(logp_w, logp_l, ref_logp_w, ref_logp_l, *, beta):
        return -F.logsigmoid(beta * (logp_w - logp_l)).mean()
    assert not passed(checks.dpo_loss, no_reference)
    assert "reference" in core.RESULTS[-1].message


def test_dpo_check_rejects_a_flipped_sign_beta_outside_and_an_unstable_log():
    def flipped(w, lo, rw, rl_, *, beta):
        return dpo.dpo_loss(lo, w, rl_, rw, beta=beta)
    def beta_outside(w, lo, rw, rl_, *, beta):
        return -beta * F.logsigmoid((w - rw) - (lo - rl_)).mean()
    def unstable(w, lo, rw, rl_, *, beta):
        return -torch.log(torch.sigmoid(beta * ((w - rw) - (lo - rl_)))).mean()
    def summed(w, lo, rw, rl_, *, beta):
        return -F.logsigmoid(beta * ((w - rw) - (lo - rl_))).sum()
    assert not passed(checks.dpo_loss, flipped)
    assert "sign" in core.RESULTS[-1].message
    assert not passed(checks.dpo_loss, beta_outside)
    assert "inside the sigmoid" in core.RESULTS[-1].message
    assert not passed(checks.dpo_loss, unstable)
    assert "logsigmoid" in core.RESULTS[-1].message
    assert not passed(checks.dpo_loss, summed)
