"""Checks for notebook 09 (InstructGPT: SFT, reward model, PPO with a KL penalty).

Each check runs the learner's function on the smallest hand-made cases first, then on random ones
against the reference in :mod:`course.rlhf` / :mod:`course.rl`, and rejects the usual mistakes
(loss on the prompt, only adjacent pairs of a ranking, the score on the wrong token, GAE without the
end-of-response cut, a surrogate without clipping).
"""

from __future__ import annotations

import math

import torch

from .. import rl, rlhf
from ..data import CharTokenizer, Example
from ..models.tinygpt import GPTConfig, TinyGPT
from .core import assert_close, assert_tensor, beside, check, grad_of, require

# float32 computations of at most a few hundred O(1) terms against the same float32 reference:
# rounding differences from a different summation order stay below 1e-5.
TOL = dict(atol=1e-5, rtol=1e-5)


def _scalar(value, name: str) -> torch.Tensor:
    assert_tensor(value, name)
    require(value.dim() == 0, f"{name}: expected a scalar tensor (a loss), got shape {tuple(value.shape)}")
    return value


# --- 9.1 SFT loss -----------------------------------------------------------------------------


@check
def sft_loss(fn):
    """``fn(model, ids, mask)``: mean next-token cross-entropy over response tokens only."""
    tok = CharTokenizer()
    torch.manual_seed(0)
    model = TinyGPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, d_model=16)).eval()
    batches = [[Example("rev:ab|", "ba")],
               [Example("copy:abc|", "abc"), Example("sort:cab|", "abc"), Example("rev:abcde|", "edcba")]]
    for examples in batches:
        ids, mask = rl.sft_batch(tok, examples, width=12)
        seen = grad_of(fn, (beside(model, fn), ids, mask), wrt=(), params=[(0, "embed.weight")])
        got = _scalar(seen["value"], "sft_loss")
        want = rl.sft_loss(model, ids, mask)
        unmasked = model(ids[:, :-1], ids[:, 1:])[1]
        hint = ("the loss should average over response targets only (mask == 1): "
                "sum(nll * mask) / sum(mask)")
        if abs(got.item() - unmasked.item()) < 1e-6 and abs(want.item() - unmasked.item()) > 1e-4:
            hint = "this is the loss over every token, prompt and padding included: multiply by the mask"
        assert_close(got, want, **TOL, name=f"sft_loss on {len(examples)} example(s)",
                     inputs={"ids": ids, "mask": mask}, hint=hint)
        grad = seen["params"][0]  # the loss must be differentiable with respect to the model
        require(seen["requires_grad"] and grad is not None and grad.abs().sum() > 0,
                "sft_loss: no gradient reached the model's parameters (did you detach or use .item()?)")
    return "2 batches, prompt and padding masked"


# --- 9.2 reward-model loss --------------------------------------------------------------------


@check
def rm_pairwise_loss(fn):
    """``fn(scores (P, K), rankings (P, K))``: mean over all K choose 2 pairs of -log sigmoid(r_w - r_l)."""
    # smallest case by hand: one pair, winner scores 1 and loser 0: -log sigmoid(1) = 0.31326
    got = _scalar(fn(torch.tensor([[1.0, 0.0]]), torch.tensor([[0, 1]])), "rm_pairwise_loss")
    assert_close(got, torch.tensor(math.log1p(math.exp(-1.0))), **TOL, name="one pair, winner first",
                 hint="the loss of one pair is -log sigmoid(r_winner - r_loser)")
    got = fn(torch.tensor([[1.0, 0.0]]), torch.tensor([[1, 0]]))
    assert_close(got, torch.tensor(math.log1p(math.exp(1.0))), **TOL, name="one pair, response 1 ranked first",
                 hint="rankings[p] lists response indices best first: gather the scores in that order")
    gen = torch.Generator().manual_seed(0)
    for p, k in [(1, 3), (2, 4), (5, 6)]:
        scores = torch.randn(p, k, generator=gen)
        rankings = torch.stack([torch.randperm(k, generator=gen) for _ in range(p)])
        want = rlhf.rm_pairwise_loss(scores, rankings)
        ranked = scores.gather(1, rankings)
        adjacent = -torch.nn.functional.logsigmoid(ranked[:, :-1] - ranked[:, 1:]).mean()
        got = fn(scores, rankings)
        hint = "average -log sigmoid(r_w - r_l) over every pair i < j of the ranking: K choose 2 per prompt"
        if abs(float(got) - adjacent.item()) < 1e-6:
            hint = "only neighbouring pairs of the ranking are used; InstructGPT uses all K choose 2 pairs"
        assert_close(got, want, **TOL, name=f"rm_pairwise_loss with P={p}, K={k}",
                     inputs={"scores": scores, "rankings": rankings}, hint=hint)
    scores = torch.randn(3, 4, generator=gen)
    grad = grad_of(fn, (scores, torch.arange(4).repeat(3, 1)))["grads"][0]
    require(grad is not None and grad[:, 0].lt(0).all() and grad[:, -1].gt(0).all(),
            "gradient descent should push the best response's score up and the worst one's down")
    return "hand cases, K = 3, 4, 6 against the reference, gradient direction"


# --- 9.3 KL-penalised per-token rewards -------------------------------------------------------


@check
def kl_penalized_rewards(fn):
    """``fn(scores (B,), logp, ref_logp, mask (B, T), beta)``: -beta (logp - ref_logp) per response token,
    plus the score on the last response token; 0 after the response."""
    # by hand: one response of 2 tokens (then padding); log-ratios 0.5 and -0.25; beta 0.1; score 2
    logp = torch.tensor([[-1.0, -2.0, -3.0]])
    ref = torch.tensor([[-1.5, -1.75, -0.5]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    want = torch.tensor([[-0.05, 0.025 + 2.0, 0.0]])
    got = fn(torch.tensor([2.0]), logp, ref, mask, 0.1)
    hint = "rewards[t] = -beta * (logp[t] - ref_logp[t]) * mask[t]; add the score at the last t with mask == 1"
    if isinstance(got, torch.Tensor) and got.shape == want.shape and abs(got[0, 2].item() - 2.0) < 1e-6:
        hint = "the score belongs on the last *response* token (the last mask == 1), not on position T-1"
    elif isinstance(got, torch.Tensor) and got.shape == want.shape and abs(got[0, 0].item() - 0.05) < 1e-6:
        hint = "the penalty is -beta * (log pi - log pi_ref): tokens the policy likes more than the SFT model cost reward"
    assert_close(got, want, **TOL, name="rewards for one 2-token response", inputs={"logp": logp, "ref_logp": ref,
                 "mask": mask}, hint=hint)
    gen = torch.Generator().manual_seed(1)
    for b, t, beta in [(3, 5, 0.0), (8, 7, 0.05)]:
        logp, ref = -torch.rand(b, t, generator=gen) * 3, -torch.rand(b, t, generator=gen) * 3
        lengths = torch.randint(1, t + 1, (b,), generator=gen)
        mask = (torch.arange(t)[None, :] < lengths[:, None]).float()
        scores = torch.randn(b, generator=gen)
        assert_close(fn(scores, logp, ref, mask, beta), rlhf.kl_penalized_rewards(scores, logp, ref, mask, beta),
                     **TOL, name=f"rewards (B={b}, T={t}, beta={beta})", inputs={"mask": mask}, hint=hint)
    return "hand case, beta = 0, ragged responses"


# --- 9.4 GAE ------------------------------------------------------------------------------------


@check
def gae(fn):
    """``fn(rewards, values, mask, gamma=, lam=) -> (advantages, returns)``, both (B, T)."""
    r = torch.tensor([[0.0, 0.0, 1.0]])
    v = torch.tensor([[0.5, 0.25, 0.5]])
    m = torch.ones(1, 3)
    # by hand, gamma = 0.9, lambda = 0.5:
    # delta = [0 + .9*.25 - .5, 0 + .9*.5 - .25, 1 - .5] = [-.275, .2, .5]
    # A_2 = .5, A_1 = .2 + .45*.5 = .425, A_0 = -.275 + .45*.425 = -.08375
    out = fn(r, v, m, gamma=0.9, lam=0.5)
    require(isinstance(out, tuple) and len(out) == 2, "gae must return a tuple (advantages, returns)")
    adv, ret = out
    assert_close(adv, torch.tensor([[-0.08375, 0.425, 0.5]]), **TOL, name="advantages, 3 steps by hand",
                 hint="go backwards: delta_t = r_t + gamma V_{t+1} - V_t, A_t = delta_t + gamma * lam * A_{t+1}")
    assert_close(ret, torch.tensor([[0.41625, 0.675, 1.0]]), **TOL, name="returns = advantages + values")
    gen = torch.Generator().manual_seed(2)
    b, t = 4, 6
    r, v = torch.randn(b, t, generator=gen), torch.randn(b, t, generator=gen)
    lengths = torch.tensor([6, 3, 1, 5])
    m = (torch.arange(t)[None, :] < lengths[:, None]).float()
    gamma = 0.95
    # lambda = 1: A_t = sum_k gamma^k r_{t+k} - V_t (Monte Carlo return minus the baseline)
    mc = torch.zeros(b, t)
    for i in range(b):
        for s in range(int(lengths[i])):
            mc[i, s] = sum(gamma ** k * r[i, s + k] for k in range(int(lengths[i]) - s)) - v[i, s]
    hint_end = "a response ends at its last mask == 1: V and r after it count as 0 (no bootstrapping past the end)"
    assert_close(fn(r, v, m, gamma=gamma, lam=1.0)[0], mc, **TOL, name="lambda = 1 (Monte Carlo returns - V)",
                 inputs={"mask": m}, hint=hint_end)
    # lambda = 0: the one-step TD error
    nxt = torch.cat([v[:, 1:] * m[:, 1:], torch.zeros(b, 1)], 1)
    td = (r + gamma * nxt - v) * m
    assert_close(fn(r, v, m, gamma=gamma, lam=0.0)[0], td, **TOL, name="lambda = 0 (TD error)",
                 inputs={"mask": m}, hint=hint_end)
    want_a, want_r = rlhf.gae(r, v, m, gamma=1.0, lam=0.95)
    got_a, got_r = fn(r, v, m, gamma=1.0, lam=0.95)
    assert_close(got_a, want_a, **TOL, name="advantages (gamma=1, lam=0.95)", hint=hint_end)
    assert_close(got_r, want_r, **TOL, name="returns (gamma=1, lam=0.95)", hint="returns = (A + V) * mask")
    return "hand case, lambda = 1 and lambda = 0 limits, ragged masks"


# --- 9.5 clipped surrogate and value loss ------------------------------------------------------


@check
def ppo_loss(fn):
    """``fn(logp, old_logp, advantages, values, returns, mask, clip_eps=) -> (policy_loss, value_loss)``."""
    def call(logp, old, adv, values=None, returns=None, mask=None, eps=0.2):
        values = torch.zeros_like(logp) if values is None else values
        returns = torch.zeros_like(logp) if returns is None else returns
        mask = torch.ones_like(logp) if mask is None else mask
        out = fn(logp, old, adv, values, returns, mask, clip_eps=eps)
        require(isinstance(out, tuple) and len(out) == 2, "ppo_loss must return (policy_loss, value_loss)")
        return _scalar(out[0], "policy_loss"), _scalar(out[1], "value_loss")

    zero = torch.zeros(1, 1)
    # ratio 1: the loss is -A
    pl, _ = call(zero, zero, torch.tensor([[2.0]]))
    assert_close(pl, torch.tensor(-2.0), **TOL, name="policy_loss at ratio 1, A = 2",
                 hint="policy_loss = -mean(min(ratio A, clip(ratio, 1-eps, 1+eps) A)) over mask == 1")
    clip_hint = ("the surrogate must be min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A): with A > 0 a ratio "
                 "above 1 + eps earns no more, with A < 0 a ratio below 1 - eps saves no more")
    # ratio 1.5 with A = 1: clipped to 1.2
    pl, _ = call(torch.log(torch.tensor([[1.5]])), zero, torch.ones(1, 1))
    assert_close(pl, torch.tensor(-1.2), **TOL, name="policy_loss at ratio 1.5, A = 1, eps = 0.2", hint=clip_hint)
    # ratio 0.5 with A = -1: clipped to 0.8 (min(-0.5, -0.8) = -0.8)
    pl, _ = call(torch.log(torch.tensor([[0.5]])), zero, -torch.ones(1, 1))
    assert_close(pl, torch.tensor(0.8), **TOL, name="policy_loss at ratio 0.5, A = -1", hint=clip_hint)
    # the pessimistic side is not clipped: ratio 0.5 with A = 1 gives 0.5, ratio 1.5 with A = -1 gives -1.5
    pl, _ = call(torch.log(torch.tensor([[0.5, 1.5]])), torch.zeros(1, 2), torch.tensor([[1.0, -1.0]]))
    assert_close(pl, torch.tensor(-(0.5 - 1.5) / 2), **TOL, name="policy_loss on the unclipped side",
                 hint="take the minimum of the clipped and unclipped terms; do not just clip the ratio")
    # gradients: zero where clipping is active, non-zero elsewhere
    logp = torch.log(torch.tensor([[1.5, 1.1]]))
    zeros, ones = torch.zeros(1, 2), torch.ones(1, 2)
    grad = grad_of(fn, (logp, zeros, ones, zeros, zeros, ones), kwargs={"clip_eps": 0.2}, output=0)["grads"][0]
    require(grad is not None and abs(grad[0, 0].item()) < 1e-7 and abs(grad[0, 1].item()) > 1e-3,
            f"gradient of policy_loss w.r.t. logp should be 0 for a clipped token (ratio 1.5, A > 0) and non-zero "
            f"for an unclipped one (ratio 1.1); got {None if grad is None else grad.tolist()}.\n  hint: "
            + clip_hint)
    # value loss and masking
    values, returns = torch.tensor([[1.0, 2.0, 5.0]]), torch.tensor([[0.0, 4.0, -5.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    _, vl = call(torch.zeros(1, 3), torch.zeros(1, 3), torch.zeros(1, 3), values, returns, mask)
    assert_close(vl, torch.tensor(0.5 * (1 + 4) / 2), **TOL, name="value_loss = 0.5 mean (V - R)^2 over the mask",
                 hint="value_loss = 0.5 * sum(mask * (values - returns)^2) / sum(mask)")
    gen = torch.Generator().manual_seed(3)
    b, t = 6, 5
    logp, old = -torch.rand(b, t, generator=gen) * 2, -torch.rand(b, t, generator=gen) * 2
    adv, values, returns = (torch.randn(b, t, generator=gen) for _ in range(3))
    mask = (torch.arange(t)[None, :] < torch.randint(1, t + 1, (b, 1), generator=gen)).float()
    want = rlhf.ppo_loss(logp, old, adv, values, returns, mask, clip_eps=0.1)
    got = call(logp, old, adv, values, returns, mask, eps=0.1)
    assert_close(got[0], want[0], **TOL, name="policy_loss, random batch, eps = 0.1",
                 hint="average over tokens with mask == 1 (sum over the batch / number of response tokens)")
    assert_close(got[1], want[1], **TOL, name="value_loss, random batch")
    return "hand cases on both sides of the clip, zero gradient when clipped, masked means"
