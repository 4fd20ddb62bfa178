"""Checks for notebook 09 (InstructGPT: SFT, reward model, PPO with a KL penalty).

Each check runs the learner's function on the smallest hand-made cases first, then on random ones
against the reference in :mod:`course.rlhf` / :mod:`course.rl`, and rejects the usual mistakes
(loss on the prompt, only adjacent pairs of a ranking, the score on the wrong token, GAE without the
end-of-response cut, a surrogate without clipping, a value loss with min instead of max, an unclipped KL
error, DPO without its reference).
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
    """``fn(model, ids, mask, attention_mask=)``: mean next-token cross-entropy over response tokens only,
    with the prompts' left padding hidden from the model (``attention_mask``, (B, L) bool)."""
    tok = CharTokenizer()
    torch.manual_seed(0)
    model = TinyGPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, d_model=16)).eval()
    batches = [[Example("rev:ab|", "ba")],
               [Example("copy:abc|", "abc"), Example("sort:cab|", "abc"), Example("rev:abcde|", "edcba")]]
    for examples in batches:
        ids, mask = rl.sft_batch(tok, examples, width=12)
        seen_mask = rl.left_padding_mask(ids, tok.stoi[rl.PAD])
        seen = grad_of(fn, (beside(model, fn), ids, mask), wrt=(), kwargs={"attention_mask": seen_mask},
                       params=[(0, "embed.weight")])
        got = _scalar(seen["value"], "sft_loss")
        want = rl.sft_loss(model, ids, mask, attention_mask=seen_mask)
        unmasked = model(ids[:, :-1], ids[:, 1:])[1]
        attended = rl.sft_loss(model, ids, mask)  # the same loss with the padding visible to the model
        hint = ("the loss should average over response targets only (mask == 1): "
                "sum(nll * mask) / sum(mask), with logits from model(ids[:, :-1], attention_mask=attention_mask[:, :-1])")
        if abs(got.item() - unmasked.item()) < 1e-6 and abs(want.item() - unmasked.item()) > 1e-4:
            hint = "this is the loss over every token, prompt and padding included: multiply by the mask"
        elif abs(got.item() - attended.item()) < 1e-6 and abs(want.item() - attended.item()) > 1e-4:
            hint = ("the model attended to the left padding: pass attention_mask[:, :-1] (the positions of the "
                    "inputs ids[:, :-1]) to the model as attention_mask=")
        assert_close(got, want, **TOL, name=f"sft_loss on {len(examples)} example(s)",
                     inputs={"ids": ids, "mask": mask, "attention_mask": seen_mask}, hint=hint)
        grad = seen["params"][0]  # the loss must be differentiable with respect to the model
        require(seen["requires_grad"] and grad is not None and grad.abs().sum() > 0,
                "sft_loss: no gradient reached the model's parameters (did you detach or use .item()?)")
    return "2 batches, prompt and padding masked, padding hidden from the model"


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


# --- 9.6 clipped value loss ---------------------------------------------------------------------


@check
def clipped_value_loss(fn):
    """``fn(values, old_values, returns, mask, *, clip_eps) -> scalar``:
    0.5 * masked mean of max((V - R)^2, (clip(V, V_old - eps, V_old + eps) - R)^2)."""
    def call(v, old, ret, mask=None, eps=0.2):
        v, old, ret = (torch.tensor([x]) for x in (v, old, ret))
        mask = torch.ones_like(v) if mask is None else mask
        return _scalar(fn(v, old, ret, mask, clip_eps=eps), "clipped_value_loss")

    clip_hint = ("clip the new value to old_values +- eps (old + clamp(V - old, -eps, eps)), square both errors "
                 "against the returns and keep the larger one: max, not min")
    # inside the clip range both terms agree: 0.5 * (0.1 - 1)^2 = 0.405
    assert_close(call([0.1], [0.0], [1.0]), torch.tensor(0.405), **TOL, name="V=0.1, V_old=0, R=1, eps=0.2",
                 hint="inside [V_old - eps, V_old + eps] the loss is 0.5 * (V - R)^2")
    # V moved past the clip, away from R: unclipped error (0.5 - 0)^2 = 0.25, clipped (0.2 - 0)^2 = 0.04
    got = call([0.5], [0.0], [0.0])
    if abs(got.item() - 0.02) < 1e-6:
        clip_hint = ("you kept the smaller of the two errors (min): PPO keeps the larger one (max), so moving V "
                     "beyond the clip range never lowers the loss")
    assert_close(got, torch.tensor(0.125), **TOL, name="V=0.5, V_old=0, R=0 (moved past the clip, away from R)",
                 hint=clip_hint)
    # V moved past the clip toward R: unclipped (0.5 - 1)^2 = 0.25, clipped (0.2 - 1)^2 = 0.64 -> 0.32
    got = call([0.5], [0.0], [1.0])
    if abs(got.item() - 0.125) < 1e-6:
        clip_hint = ("this is the unclipped loss 0.5 * (V - R)^2 (or the min of the two): when V moved more than "
                     "eps toward R the clipped error is larger, and PPO keeps it")
    assert_close(got, torch.tensor(0.32), **TOL, name="V=0.5, V_old=0, R=1 (moved past the clip, toward R)",
                 hint=clip_hint)
    got = call([1.2], [1.0], [0.0], eps=0.1)  # clip around V_old (1.1), not around 0 or R: max(1.44, 1.21)
    assert_close(got, torch.tensor(0.72), **TOL, name="V=1.2, V_old=1, R=0, eps=0.1", hint=clip_hint)
    # gradient: none through a value whose clipped error is the larger (the step is undone, as in the surrogate)
    args = (torch.tensor([[0.5, 0.1]]), torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2))
    grad = grad_of(fn, args, kwargs={"clip_eps": 0.2})["grads"][0]
    require(grad is not None and abs(grad[0, 0].item()) < 1e-7 and abs(grad[0, 1].item() + 0.45) < 1e-5,
            f"gradient w.r.t. values should be 0 where the clipped error wins (V=0.5, V_old=0, R=1) and "
            f"(V - R) / n = -0.45 inside the clip range (V=0.1); got {None if grad is None else grad.tolist()}")
    gen = torch.Generator().manual_seed(6)
    b, t = 5, 6
    values, old, returns = (torch.randn(b, t, generator=gen) for _ in range(3))
    mask = (torch.arange(t)[None, :] < torch.randint(1, t + 1, (b, 1), generator=gen)).float()
    assert_close(fn(values, old, returns, mask, clip_eps=0.3),
                 rlhf.clipped_value_loss(values, old, returns, mask, clip_eps=0.3), **TOL,
                 name="random batch, ragged mask, eps = 0.3", inputs={"mask": mask},
                 hint="a masked mean: sum(mask * max(...)) / sum(mask), times 0.5")
    return "inside and past the clip on both sides of R, zero gradient when clipped, masked mean"


# --- 9.7 adaptive KL coefficient -----------------------------------------------------------------


@check
def adaptive_kl_beta(fn):
    """``fn(beta, kl, *, target, horizon, n_steps) -> next beta``:
    beta * (1 + clip(kl / target - 1, -0.2, 0.2) * n_steps / horizon)."""
    def call(beta, kl, target, horizon, n_steps):
        out = fn(beta, kl, target=target, horizon=horizon, n_steps=n_steps)
        require(isinstance(out, (int, float)) or (isinstance(out, torch.Tensor) and out.numel() == 1),
                f"adaptive_kl_beta must return a number (the next beta), got {type(out).__name__}")
        return torch.tensor(float(out), dtype=torch.float64)

    hint = ("error = clip(kl / target - 1, -0.2, 0.2); beta * (1 + error * n_steps / horizon): proportional to "
            "the relative error, clipped, scaled by how many episodes the measurement used")
    cases = [  # (beta, kl, target, horizon, n_steps) -> by hand
        ((0.1, 1.05, 1.0, 100, 10), 0.1 * (1 + 0.05 * 0.1)),   # inside the clip: 0.1005
        ((0.1, 0.9, 1.0, 100, 10), 0.1 * (1 - 0.1 * 0.1)),     # KL below target: beta shrinks, 0.099
        ((0.1, 2.2, 2.0, 100, 10), 0.1 * (1 + 0.1 * 0.1)),     # relative, not absolute, error: 0.101
        ((0.1, 1.5, 1.0, 100, 10), 0.1 * (1 + 0.2 * 0.1)),     # clipped at +0.2: 0.102
        ((0.3, 0.0, 1.0, 640, 64), 0.3 * (1 - 0.2 * 0.1)),     # clipped at -0.2: 0.294
        ((0.5, 6.6, 6.0, 10000, 256), 0.5 * (1 + 0.1 * 0.0256)),
    ]
    for (beta, kl, target, horizon, n), want in cases:
        got = call(beta, kl, target, horizon, n)
        h = hint
        if abs(got.item() - beta) > 1e-12 and (got.item() - beta) * (kl - target) < 0:
            h = "beta must grow when the KL is above target (a stronger penalty) and shrink below it"
        elif kl / target - 1 > 0.2 and abs(got.item() - beta * (1 + (kl / target - 1) * n / horizon)) < 1e-9:
            h = "the relative error is clipped to [-0.2, 0.2] before it scales beta (at most 20 % per horizon)"
        elif abs(got.item() - beta * (1 + max(min(kl - target, 0.2), -0.2) * n / horizon)) < 1e-9 and target != 1:
            h = "the error is relative to the target: kl / target - 1, not kl - target"
        assert_close(got, torch.tensor(want, dtype=torch.float64), atol=1e-9, rtol=1e-9,
                     name=f"beta={beta}, kl={kl}, target={target}, horizon={horizon}, n_steps={n}", hint=h)
    return "inside and at both ends of the clip, relative error, several horizons"


# --- 9.8 DPO loss --------------------------------------------------------------------------------


@check
def dpo_loss(fn):
    """``fn(logp_w, logp_l, ref_logp_w, ref_logp_l, *, beta) -> scalar``: the mean over pairs of
    -log sigmoid(beta * ((logp_w - ref_logp_w) - (logp_l - ref_logp_l)))."""
    from .. import dpo

    def call(w, lo, rw, rl_, beta):
        t = [torch.tensor(x, dtype=torch.float32) for x in (w, lo, rw, rl_)]
        return _scalar(fn(*t, beta=beta), "dpo_loss")

    hint = ("loss = -mean(logsigmoid(beta * ((logp_w - ref_logp_w) - (logp_l - ref_logp_l)))): the policy's "
            "log-ratio to the reference on the preferred response minus that on the dispreferred one")
    # by hand: log-ratios +0.5 (w) and -0.5 (l), beta 0.5: margin 0.5, loss log(1 + e^-0.5) = 0.474077
    got = call([-1.0], [-2.0], [-1.5], [-1.5], 0.5)
    want = torch.tensor(math.log1p(math.exp(-0.5)))
    if abs(got.item() - math.log1p(math.exp(0.5))) < 1e-5:  # the usual slips, diagnosed on this one pair
        hint = "the sign is flipped: the preferred response's log-ratio comes first (w minus l)"
    elif abs(got.item() - math.log1p(math.exp(-1.0))) < 1e-5:
        hint = "beta multiplies the margin inside the sigmoid"
    elif abs(got.item() - 0.5 * math.log1p(math.exp(-1.0))) < 1e-5:
        hint = "beta goes inside the sigmoid, -log sigmoid(beta * margin), not outside as a factor"
    assert_close(got, want, **TOL, name="one pair: log-ratios +0.5 and -0.5, beta = 0.5", hint=hint)
    # the reference matters: equal policy log-probs, but the reference prefers y_l
    got = call([-2.0], [-2.0], [-3.0], [-1.0], 1.0)
    assert_close(got, torch.tensor(math.log1p(math.exp(-2.0))), **TOL, name="equal policy log-probs, the reference prefers y_l",
                 hint="subtract the reference's log-probability from the policy's for each response before comparing"
                 if abs(got.item() - math.log(2)) < 1e-5 else hint)
    # a large margin must not overflow: -log sigmoid(-200) = 200 (naive log(sigmoid(x)) gives inf)
    got = call([-300.0], [-100.0], [-100.0], [-100.0], 1.0)
    assert_close(got, torch.tensor(200.0), atol=1e-3, rtol=1e-5, name="margin -200 (stability)",
                 hint="use F.logsigmoid(x), not torch.log(torch.sigmoid(x)), which is -inf below about -104 in float32")
    gen = torch.Generator().manual_seed(7)
    n = 12
    args = [-torch.rand(n, generator=gen) * 10 for _ in range(4)]
    assert_close(fn(*args, beta=0.3), dpo.dpo_loss(*args, beta=0.3), **TOL, name="12 random pairs, beta = 0.3",
                 hint="average over pairs (mean, not sum)")
    grads = grad_of(fn, tuple(args), wrt=(0, 1), kwargs={"beta": 0.3})["grads"]
    margin = 0.3 * ((args[0] - args[2]) - (args[1] - args[3]))
    want_w = -0.3 * torch.sigmoid(-margin) / n
    require(grads[0] is not None and grads[1] is not None, "no gradient reached logp_w or logp_l (detached?)")
    assert_close(grads[0], want_w, **TOL, name="d loss / d logp_w", hint="d loss / d logp_w = -beta sigmoid(-margin) / N")
    assert_close(grads[1], -want_w, **TOL, name="d loss / d logp_l", hint="d loss / d logp_l = +beta sigmoid(-margin) / N")
    return "hand cases, the reference's role, a large margin, random pairs and their gradients"
