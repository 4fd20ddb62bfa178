"""Checks for notebook 10: GRPO (Shao et al., DeepSeekMath, 2024, arXiv 2402.03300, section 4).

Every check builds its own small, seeded inputs, smallest first, and compares against the
reference in :mod:`course.rl`. Tolerances, where a result is not exact:

* float32 elementwise formulas (normalisation, exp/log, one mean over <= 64 terms) agree with
  a float64 reference to a few ulps of O(1) values: ``atol=1e-5, rtol=1e-5`` leaves room for
  that only, while every wrong variant the tests try (a missing clip, a batch-wide mean, a
  reversed KL ratio, an unbiased vs. population std mix-up on G=2) is off by > 1e-2;
* ``eps`` in the denominators moves a normalised advantage by about ``eps / std`` <= 1e-5 on
  the groups used here (std >= 0.1), inside the same ``1e-5`` budget plus ``atol=1e-4``;
* the Monte Carlo test of the KL estimator uses 200,000 samples: its tolerance is 5 standard
  errors of the sample mean (computed from the samples, not guessed).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .. import rl
from ..data import CharTokenizer, Example
from ..models.tinygpt import GPTConfig, TinyGPT
from .core import (CheckFailed, assert_close, assert_tensor, beside, check, grad_of, grading_seed, observation,
                   require)

ATOL, RTOL = 1e-5, 1e-5  # float32 elementwise arithmetic vs float64 reference (module docstring)
ADV_ATOL = 1e-4  # normalised advantages: eps / std on top of ATOL (module docstring)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- 10.1 outcome advantages ------------------------------------------------------------------


def _group_ref(rewards: torch.Tensor, unbiased: bool) -> torch.Tensor:
    r = rewards.double()
    std = r.std(dim=1, keepdim=True, unbiased=unbiased)
    return (r - r.mean(dim=1, keepdim=True)) / (std + 1e-6)


@check
def group_advantages(fn):
    """fn(rewards (P, G)) -> (P, G): (r - mean) / (std + eps) within each group (row)."""
    cases = [
        ("one group of two", torch.tensor([[1.0, 0.0]])),
        ("all-equal group", torch.tensor([[1.0, 1.0, 1.0, 1.0]])),
        ("two groups, different means", torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]])),
        ("three groups of five, real-valued", torch.rand(3, 5, generator=_gen(0)) * 4 - 1),
        ("eight groups of sixteen, 0/1", (torch.rand(8, 16, generator=_gen(1)) < 0.3).float()),
    ]
    for label, rewards in cases:
        original = rewards.clone()
        got = fn(rewards)
        assert_tensor(got, f"group_advantages [{label}]", shape=rewards.shape, inputs={"rewards": rewards})
        require(torch.equal(rewards, original), f"[{label}] group_advantages changed its input in place")
        require(bool(torch.isfinite(got).all()),
                f"[{label}] advantages contain nan/inf: {got.tolist()}\n  hint: a group whose rewards are all "
                "equal has std 0; add eps to the denominator (its advantages are then 0)")
        means = got.double().mean(dim=1)
        require(bool((means.abs() < 1e-4).all()),  # zero mean per group, up to float32 rounding
                f"[{label}] advantages must have zero mean within every group (row); row means are "
                f"{[round(m, 4) for m in means.tolist()]}\n  hint: subtract each group's own mean, not the "
                "mean over the whole batch")
        # population (divide by G) and sample (G - 1) std are both in use (the paper says "std"):
        # accept either, nothing else.
        if not any(torch.allclose(got.double(), _group_ref(rewards, u), atol=ADV_ATOL, rtol=RTOL) for u in (False, True)):
            assert_close(got, _group_ref(rewards, False).float(), atol=ADV_ATOL, rtol=RTOL,
                         name=f"group_advantages [{label}]", inputs={"rewards": rewards},
                         hint="normalise within each row: (r - row mean) / (row std + eps); the mean and "
                              "std of the whole batch mix groups that share nothing")
    return "zero mean per group; constant groups give 0; 5 cases"


# --- 10.2 KL estimator -------------------------------------------------------------------------


def _k3_ref(logp, ref_logp):
    d = ref_logp.double() - logp.double()
    return d.exp() - d - 1


@check
def kl_k3(fn):
    """fn(logp, ref_logp) -> per-token pi_ref/pi - log(pi_ref/pi) - 1."""
    g = _gen(2)
    equal = torch.log(torch.rand(2, 5, generator=g))
    got = fn(equal, equal.clone())
    assert_tensor(got, "kl_k3(logp, logp)", shape=equal.shape)
    assert_close(got, torch.zeros_like(equal), atol=1e-7, rtol=0.0, name="kl_k3(logp, logp)",
                 hint="the estimate must be exactly 0 when the two policies agree")  # exp(0) - 0 - 1 = 0 exactly
    cases = [
        (torch.tensor([-1.0]), torch.tensor([-2.0])),
        (torch.tensor([-2.0]), torch.tensor([-1.0])),
        (torch.log(torch.rand(4, 7, generator=g)), torch.log(torch.rand(4, 7, generator=g))),
    ]
    for logp, ref_logp in cases:
        got = fn(logp, ref_logp)
        inputs = {"logp": logp, "ref_logp": ref_logp}
        assert_tensor(got, "kl_k3", shape=logp.shape, inputs=inputs)
        require(bool((got >= -1e-6).all()),  # x - log x - 1 >= 0 for x > 0; -1e-6 allows float32 rounding
                f"kl_k3 returned negative values {got.flatten().tolist()[:6]}; the k3 estimator is never "
                "negative\n  hint: log(pi_ref/pi) alone (the k1 estimator) can be negative; add the ratio term")
        assert_close(got, _k3_ref(logp, ref_logp).float(), atol=ATOL, rtol=RTOL, name="kl_k3", inputs=inputs,
                     hint="the ratio is pi_ref / pi = exp(ref_logp - logp), not pi / pi_ref")
    # unbiased: with tokens x ~ pi, the mean of the estimate is KL(pi || pi_ref) = sum pi log(pi/pi_ref)
    pi = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
    pi_ref = torch.tensor([0.25, 0.25, 0.25, 0.25], dtype=torch.float64)
    x = torch.multinomial(pi.float(), 200_000, replacement=True, generator=g)
    est = fn(pi.log()[x].float(), pi_ref.log()[x].float()).double()
    exact = float((pi * (pi / pi_ref).log()).sum())
    tol = 5 * float(est.std()) / math.sqrt(len(x))  # 5 standard errors of the sample mean
    require(abs(float(est.mean()) - exact) <= tol,
            f"with 200,000 tokens sampled from pi the mean estimate is {float(est.mean()):.4f}, but KL(pi||pi_ref) "
            f"= {exact:.4f} (allowed error {tol:.4f})\n  hint: the estimator is unbiased for KL(pi || pi_ref) "
            "only with the ratio pi_ref/pi")
    _check_k3_gradient(fn, pi, pi_ref)
    return f"0 when equal, >= 0, unbiased (mean {float(est.mean()):.4f} vs KL {exact:.4f})"


def _check_k3_gradient(fn, pi, pi_ref) -> None:
    """In a loss, k3's gradient is that of KL(pi_ref || pi): measured, not only the value.

    Per token, d k3 / d logp = 1 - pi_ref/pi. With log pi = log_softmax(theta) and tokens drawn from
    pi, the expected gradient wrt the logits is sum_o pi_o (1 - pi_ref_o/pi_o)(e_o - pi) = pi - pi_ref,
    the gradient of KL(pi_ref || pi); the forward KL's would be pi * (log(pi/pi_ref) - KL).
    Tolerance 1e-6: float32 rounding of values below 4 (2e-7 relative), far below the 0.1 between the two.
    """
    seen = grad_of(fn, (pi.log().float(), pi_ref.log().float()))
    per_token = seen["grads"][0]
    require(per_token is not None, "no gradient reaches logp through kl_k3: the estimator is a loss term, so it "
                                   "must stay differentiable\n  hint: do not detach logp")
    d = per_token.double()
    expected = pi * d - pi * (pi * d).sum()  # E_{o ~ pi}[d_o * grad_theta log pi_o]
    assert_close(expected, pi - pi_ref, atol=1e-6, rtol=0.0, name="expected gradient of kl_k3 wrt the logits",
                 hint="d k3 / d logp must be 1 - pi_ref/pi per token: k3 = exp(ref_logp - logp) - "
                      "(ref_logp - logp) - 1, differentiated through logp")


# --- 10.3 clipped GRPO loss ---------------------------------------------------------------------


def _loss_ref(logp, old_logp, ref_logp, adv, mask, clip_eps, beta, aggregation="sequence-mean"):
    return rl.grpo_loss(logp.double(), old_logp.double(), ref_logp.double(), adv.double(), mask.double(),
                        clip_eps=clip_eps, beta=beta, aggregation=aggregation)


_SCHEME_HINTS = {
    "sequence-mean": "average over the masked tokens of each completion (1/|o_i|), then over the completions (1/G)",
    "token-mean": "sum over every masked token of the batch, divided by the number of those tokens (DAPO)",
    "constant": "sum over every masked token of the batch, divided by B * T (Dr. GRPO's constant normaliser, "
                "T = mask.shape[1])",
}


def _which_scheme(value: float, reference: Callable[[str], float]) -> str | None:
    """The aggregation whose reference value ``value`` matches, if any (for a hint)."""
    for scheme in rl.AGGREGATIONS:
        if abs(value - reference(scheme)) <= ATOL + RTOL * abs(value):
            return scheme
    return None


def _aggregation_hint(value: float, reference: Callable[[str], float], asked: str) -> str:
    seen = _which_scheme(value, reference)
    if seen is not None and seen != asked:
        return (f"your result is the {seen} aggregation, but this check was asked for {asked}: "
                f"{_SCHEME_HINTS[asked]} (call the check with aggregation={seen!r} if {seen} is what you mean)")
    return _SCHEME_HINTS[asked] + "; padding after the stop token must not count"


def _loss_and_grad(fn, logp, *rest, **kw):
    seen = grad_of(fn, (logp, *rest), kwargs=kw)  # in the learner's process when the grader judges
    value, grad = seen["value"], seen["grads"][0]
    assert_tensor(value, "grpo_loss", shape=())
    require(seen["requires_grad"], "grpo_loss returned a tensor without a gradient: do not detach logp "
            "(.item(), torch.tensor(...) or no_grad break the graph)")
    return value, torch.zeros_like(logp) if grad is None else grad


@check
def grpo_loss(fn, aggregation: str = "sequence-mean"):
    """fn(logp, old_logp, ref_logp, advantages, mask, *, clip_eps, beta) -> scalar loss (-J_GRPO).

    ``aggregation`` names how ``fn`` is meant to reduce the per-token terms (:func:`course.rl.aggregate`):
    the paper's ``"sequence-mean"`` (default), DAPO's ``"token-mean"`` or Dr. GRPO's ``"constant"``.
    """
    if aggregation not in rl.AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {rl.AGGREGATIONS}, got {aggregation!r}")
    one = torch.zeros(1, 1)
    # 1) one token, ratio 1, advantage 1, no KL: J = 1, so the loss is -1
    value, _ = _loss_and_grad(fn, one, one, one, torch.ones(1, 1), torch.ones(1, 1), clip_eps=0.2, beta=0.0)
    require(abs(float(value) + 1.0) < 1e-6,
            f"one token with ratio 1, advantage 1, beta 0: expected loss -1.0 (minus the objective), got "
            f"{float(value):.6g}\n  hint: return the loss to minimise, -J_GRPO")
    # 2) clipping: four tokens of one completion, ratios 1.5, 0.5, 1.5, 0.5 with advantages +1, -1, -1, +1
    old = torch.zeros(1, 4)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.5, 0.5]]))
    adv = torch.tensor([[1.0, -1.0, -1.0, 1.0]])
    mask = torch.ones(1, 4)
    _, grad = _loss_and_grad(fn, logp, old, old, adv, mask, clip_eps=0.2, beta=0.0)
    _, want = _loss_and_grad(_loss_ref, logp, old, old, adv, mask, clip_eps=0.2, beta=0.0)
    assert_close(grad, want.float(), atol=ATOL, rtol=RTOL, name="d loss / d logp (clipping case)",
                 inputs={"ratio": logp.exp(), "advantages": adv},
                 hint="tokens whose ratio is already outside [1-eps, 1+eps] in the direction the advantage "
                      "pushes (ratio 1.5 with A>0, ratio 0.5 with A<0) must get zero gradient: use "
                      "min(ratio*A, clip(ratio, 1-eps, 1+eps)*A); the other two keep the unclipped gradient")
    # 3) the KL term is added to the loss with weight beta (and pulls logp towards ref_logp)
    logp = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-1.5, -1.0]])
    zeros = torch.zeros(1, 2)
    ones = torch.ones(1, 2)  # both tokens count: every aggregation gives the mean here
    value, _ = _loss_and_grad(fn, logp, logp.clone(), ref, zeros, ones, clip_eps=0.2, beta=0.5)
    want, _ = _loss_and_grad(_loss_ref, logp, logp.clone(), ref, zeros, ones, clip_eps=0.2, beta=0.5)
    assert_close(value, want.float(), atol=ATOL, rtol=RTOL, name="loss with zero advantages, beta=0.5",
                 hint="with A = 0 the loss is + beta * mean KL (k3 estimator): penalise, do not reward, the KL")
    # 4) aggregation over completions of 1 and 4 tokens (of T = 5): the three schemes give three values
    logp = torch.tensor([[0.1, 0.0, 0.0, 0.0, 0.0], [0.05, -0.1, 0.02, 0.1, 0.0]])
    old = torch.zeros(2, 5)
    adv = torch.tensor([[1.0] * 5, [-0.5] * 5])
    mask = torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0, 0.0]])
    value, grad = _loss_and_grad(fn, logp, old, old, adv, mask, clip_eps=0.2, beta=0.0)
    want, want_grad = _loss_and_grad(_loss_ref, logp, old, old, adv, mask, clip_eps=0.2, beta=0.0,
                                     aggregation=aggregation)
    inputs = {"logp": logp, "mask": mask, "advantages": adv}
    ref_value = lambda scheme: float(_loss_ref(logp, old, old, adv, mask, 0.2, 0.0, scheme))
    assert_close(value, want.float(), atol=ATOL, rtol=RTOL, name=f"{aggregation} loss on completions of 1 and 4 tokens",
                 inputs=inputs, hint=_aggregation_hint(float(value), ref_value, aggregation))
    assert_close(grad, want_grad.float(), atol=ATOL, rtol=RTOL, name="d loss / d logp (lengths 1 and 4)",
                 inputs=inputs, hint="masked tokens get no gradient")
    # 5) random batch with everything switched on
    g = _gen(3)
    b, t = 6, 5
    old = -torch.rand(b, t, generator=g) * 3
    logp = old + (torch.rand(b, t, generator=g) - 0.5) * 0.8
    ref = old + (torch.rand(b, t, generator=g) - 0.5) * 0.8
    adv = torch.randn(b, 1, generator=g).expand(b, t).contiguous()
    mask = (torch.arange(t) < torch.randint(1, t + 1, (b, 1), generator=g)).float()
    for clip_eps, beta in ((0.2, 0.04), (0.1, 0.3)):
        value, grad = _loss_and_grad(fn, logp, old, ref, adv, mask, clip_eps=clip_eps, beta=beta)
        want, want_grad = _loss_and_grad(_loss_ref, logp, old, ref, adv, mask, clip_eps=clip_eps, beta=beta,
                                         aggregation=aggregation)
        assert_close(value, want.float(), atol=ATOL, rtol=RTOL, name=f"loss (clip_eps={clip_eps}, beta={beta})")
        assert_close(grad, want_grad.float(), atol=ATOL, rtol=RTOL,
                     name=f"d loss / d logp (clip_eps={clip_eps}, beta={beta})",
                     hint="use the clip_eps and beta arguments, not constants")
    return f"value, clipping gradient, KL penalty and {aggregation} aggregation"


# --- loss aggregation -------------------------------------------------------------------------------


@check
def loss_aggregation(fn):
    """fn(per_token (B, T), mask (B, T), aggregation) -> scalar: sequence-mean, token-mean or constant."""
    g = _gen(grading_seed(6))
    per_token = torch.tensor([[2.0, 9.0, 9.0, 9.0, 9.0], [1.0, 1.0, 1.0, 1.0, 9.0]])  # 9s sit under the mask
    mask = torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0, 0.0]])
    by_hand = {"sequence-mean": (2.0 + 1.0) / 2, "token-mean": (2.0 + 4.0) / 5, "constant": (2.0 + 4.0) / (2 * 5)}
    b, t = 6, 7
    rand_terms = torch.randn(b, t, generator=g)
    rand_mask = (torch.arange(t) < torch.randint(1, t + 1, (b, 1), generator=g)).float()
    for aggregation in rl.AGGREGATIONS:
        for label, x, m, want in [("lengths 1 and 4 of T = 5", per_token, mask, torch.tensor(by_hand[aggregation])),
                                  ("random batch, 6 rows of T = 7", rand_terms, rand_mask,
                                   rl.aggregate(rand_terms.double(), rand_mask.double(), aggregation).float())]:
            got = fn(x, m, aggregation)
            assert_tensor(got, f"{aggregation} [{label}]", shape=())
            ref_value = lambda scheme, x=x, m=m: float(rl.aggregate(x.double(), m.double(), scheme))
            assert_close(got, want, atol=ATOL, rtol=RTOL, name=f"{aggregation} [{label}]",
                         inputs={"per_token": x, "mask": m}, hint=_aggregation_hint(float(got), ref_value, aggregation))
        # the terms are what the learner differentiates: the weight of every token must be the scheme's
        seen = grad_of(fn, (rand_terms, rand_mask, aggregation))  # in the learner's process when judged
        leaf = rand_terms.clone().requires_grad_(True)
        want_grad = torch.autograd.grad(rl.aggregate(leaf, rand_mask, aggregation), leaf)[0]
        require(seen["grads"][0] is not None, f"{aggregation}: no gradient reaches per_token (do not detach it)")
        assert_close(seen["grads"][0], want_grad, atol=ATOL, rtol=RTOL, name=f"per-token weights of {aggregation}",
                     hint="masked tokens must get weight 0")
    try:
        fn(per_token, mask, "mean")
    except ValueError:
        return "sequence-mean, token-mean and constant on hand-made and random batches; unknown names rejected"
    raise CheckFailed("fn(per_token, mask, 'mean') should raise ValueError: the aggregation must be one of "
                      f"{rl.AGGREGATIONS}")


# --- 10.4 process supervision ---------------------------------------------------------------


@check
def process_advantages(fn):
    """fn(step_rewards, step_ends, step_mask, num_tokens) -> (P, G, num_tokens) token advantages."""
    def run(label, rewards, ends, mask, n, hint):
        got = fn(rewards, ends, mask, n)
        want = rl.process_advantages(rewards.double(), ends, mask, n)
        inputs = {"step_rewards": rewards, "step_ends": ends, "step_mask": mask}
        assert_tensor(got, f"process_advantages [{label}]", shape=tuple(want.shape), inputs=inputs)
        assert_close(got, want.float(), atol=ADV_ATOL, rtol=RTOL, name=f"process_advantages [{label}]",
                     inputs=inputs, hint=hint)

    # one step per output: the advantage of the step's tokens is its normalised reward, later tokens get 0
    run("two outputs, one step each", torch.tensor([[[1.0], [0.0]]]), torch.tensor([[[0], [1]]]),
        torch.ones(1, 2, 1, dtype=torch.bool), 3,
        "normalise the step rewards of the group ([1, 0] -> [1, -1]); a token's advantage sums the "
        "normalised rewards of the steps ending at or after it, so tokens after the last step get 0")
    # two steps per output: early tokens collect the rewards of every later step
    run("two outputs, two steps each", torch.tensor([[[1.0, 0.0], [1.0, 1.0]]]), torch.tensor([[[0, 2], [1, 3]]]),
        torch.ones(1, 2, 2, dtype=torch.bool), 4,
        "sum over the steps that end at or AFTER token t (a reverse cumulative sum), not before it")
    # missing steps carry garbage rewards that must be ignored
    rewards = torch.tensor([[[1.0, 0.0, 9.0], [0.0, 9.0, 9.0], [1.0, 1.0, 1.0]]])
    ends = torch.tensor([[[1, 3, 4], [2, 4, 4], [0, 1, 4]]])
    mask = torch.tensor([[[True, True, False], [True, False, False], [True, True, True]]])
    run("padded steps", rewards, ends, mask, 5,
        "steps with step_mask False do not exist: leave them out of the mean and std and give them no advantage")
    # several groups: each is normalised on its own
    g = _gen(4)
    p, gs, k, n = 3, 4, 3, 6
    rewards = torch.rand(p, gs, k, generator=g) + torch.arange(p).view(p, 1, 1) * 3.0
    ends = torch.sort(torch.randint(0, n, (p, gs, k), generator=g), dim=-1).values
    mask = torch.rand(p, gs, k, generator=g) < 0.8
    mask[..., 0] = True
    run("three groups", rewards, ends, mask, n,
        "normalise with the mean and std of all steps of the SAME group (all G outputs of one prompt), not of "
        "one output and not of the whole batch")
    return "normalisation per group, reverse sum over steps, padding ignored"


# --- 10.5 pass@k --------------------------------------------------------------------------------


@check
def pass_at_k(fn):
    """fn(n, c, k) -> unbiased pass@k = 1 - C(n-c, k) / C(n, k)."""
    cases = [(1, 0, 1), (1, 1, 1), (2, 1, 1), (2, 1, 2), (5, 2, 3), (10, 1, 5), (16, 4, 8), (16, 0, 16),
             (200, 37, 50), (2000, 3, 1000)]
    for n, c, k in cases:
        got = fn(n, c, k)
        want = 1.0 - math.comb(n - c, k) / math.comb(n, k)
        require(isinstance(got, (int, float)) and not isinstance(got, bool),
                f"pass_at_k({n}, {c}, {k}): expected a float, got {type(got).__name__}")
        # exact rational value, float rounding only: a relative 1e-9 is ~1e7 ulps and still far below
        # the biased estimator's error (> 1e-2 on these cases)
        require(abs(got - want) <= 1e-9 * max(1.0, abs(want)),
                f"pass_at_k(n={n}, c={c}, k={k}) = {got!r}, expected {want:.10g}\n  hint: the unbiased "
                "estimator is 1 - C(n-c, k)/C(n, k) (the chance that k of the n samples, drawn without "
                "replacement, are all wrong); 1 - (1 - c/n)^k is biased")
    for bad in [(5, 6, 1), (5, 2, 6), (5, 2, 0)]:
        try:
            fn(*bad)
        except ValueError:
            continue
        raise CheckFailed(f"pass_at_k{bad} should raise ValueError (need 0 <= c <= n and 1 <= k <= n)")
    return f"{len(cases)} cases up to n=2000, bad arguments rejected"


# --- 10.6 rejection-sampling fine-tuning data ------------------------------------------------------


@check
def rft_examples(fn):
    """fn(examples, samples) -> one Example(prompt, answer line) per correct sample, in order."""
    examples = [Example("1+1=", "2"), Example("2+3=", "5"), Example("9+9=", "18")]
    cases = [
        ("one correct sample", examples[:1], [["2\n"]], [Example("1+1=", "2")]),
        ("one wrong sample", examples[:1], [["3\n"]], []),
        ("repeats and spaces", examples, [["2\n", "3\n", "2\n7"], ["4\n", " 5\n"], ["81\n", "1\n"]],
         [Example("1+1=", "2"), Example("1+1=", "2"), Example("2+3=", "5")]),
    ]
    for label, exs, samples, want in cases:
        got = fn(exs, samples)
        require(isinstance(got, list) and all(isinstance(e, Example) for e in got),
                f"[{label}] expected a list of course.data.Example, got {type(got).__name__} {got!r:.200}")
        if got != want:
            raise CheckFailed(
                f"[{label}] rft_examples returned {got}, expected {want}\n  hint: keep ONE example per correct "
                "sample (a prompt solved twice appears twice: its gradient coefficient is the count of correct "
                "samples), in the order given; the answer is the sample's first line, stripped (course.data."
                "is_correct decides what is correct)")
    return "correct samples kept, repeats counted, wrong ones dropped"


# --- the plumbing: response mask, per-token log-probs, gradient accumulation ---------------------

TOK = CharTokenizer()
STOP_ID = TOK.stoi[rl.STOP]


def _sequences(texts: list[tuple[str, str]], width: int) -> torch.Tensor:
    """Rows ``prompt left-padded to width + completion``, all completions of one length."""
    return torch.stack([torch.cat([rl.encode_prompts(TOK, [p], width)[0], TOK.encode(c)]) for p, c in texts])


@check
def response_mask(fn):
    """fn(seq (B, L), prompt_width, stop_id) -> (B, L): 1 on the completion through its first stop, else 0."""
    cases = [
        ("one row, answer then stop", [("1+2=", "3\n\n")], 4, [[0, 0, 0, 0, 1, 1, 0]]),
        ("left padding and a completion that never stops", [("1+2=", "34\n"), ("12+13=", "255")], 6,
         [[0, 0, 0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 0, 1, 1, 1]]),
        ("stop first, tokens after it", [("9+9=", "\n18")], 4, [[0, 0, 0, 0, 1, 0, 0]]),
        ("a stop token inside the prompt", [("a\nb=", "7\n1")], 4, [[0, 0, 0, 0, 1, 1, 0]]),
    ]
    for label, texts, width, want in cases:
        seq = _sequences(texts, width)
        original = seq.clone()
        got = fn(seq, width, STOP_ID)
        assert_tensor(got, f"response_mask [{label}]", shape=seq.shape, inputs={"seq": seq})
        require(torch.equal(seq, original), f"[{label}] response_mask changed seq in place")
        want = torch.tensor(want, dtype=torch.float32)
        hint = ("0 on the prompt and its left padding (the first prompt_width tokens), 1 on the completion up to "
                "and including its first stop token, 0 after it")
        if label.startswith("a stop"):
            hint = "only stop tokens of the completion count: look for the first stop after the prompt"
        require(torch.equal(got.float(), want),
                f"response_mask [{label}] for {[p + '|' + c for p, c in texts]!r}: expected {want.int().tolist()}, "
                f"got {got.tolist()}\n  hint: {hint}")
    return f"{len(cases)} cases: padding, no stop, stop first, a stop inside the prompt"


def _small_model(seed: int) -> TinyGPT:
    torch.manual_seed(seed)
    return TinyGPT(GPTConfig(vocab_size=TOK.vocab_size, block_size=12, n_layer=1, n_head=2, d_model=16)).eval()


def _batch(seed: int, rows: int, width: int = 6, length: int = 4):
    """Random prompts and completions with random stops: (seq, mask) as the exercises use them."""
    g = _gen(seed)
    digits = "0123456789"
    pick = lambda n: "".join(digits[i] for i in torch.randint(10, (n,), generator=g).tolist())
    texts = []
    for _ in range(rows):
        a, b = pick(1 + int(torch.randint(2, (1,), generator=g))), pick(1 + int(torch.randint(2, (1,), generator=g)))
        stop_at = int(torch.randint(length + 1, (1,), generator=g))  # == length: no stop
        comp = pick(length)
        if stop_at < length:
            comp = comp[:stop_at] + "\n" + comp[stop_at + 1:]
        texts.append((f"{a}+{b}=", comp))
    seq = _sequences(texts, width)
    return seq, rl.response_mask(seq, width, STOP_ID)


# logits of a float32 model on up to 12 positions, log_softmax over 96 classes: a different but
# equivalent computation (whole sequence vs seq[:, :-1], gather vs cross_entropy) differs by < 1e-6,
# while an off-by-one or a missing mask is off by > 0.1 on these inputs.
LOGP_ATOL = 1e-5


@check
def response_logprobs(fn):
    """fn(model, seq (B, L), mask (B, L)) -> (B, L): log pi(seq[t] | seq[:t]) where mask is 1, 0 elsewhere."""
    model = _small_model(grading_seed(7))
    for rows in (1, 5):
        seq, mask = _batch(grading_seed(8 + rows), rows)
        seen = grad_of(fn, (beside(model, fn), seq, mask), wrt=(), params=[(0, "embed.weight")])
        got = seen["value"]
        assert_tensor(got, f"response_logprobs ({rows} rows)", shape=seq.shape, inputs={"seq": seq, "mask": mask})
        want = rl.response_logprobs(model, seq, mask).detach()
        with torch.no_grad():  # the independent route: prompt and completion apart (rl.token_logprobs)
            per_response = (rl.token_logprobs(model, seq[:, :6], seq[:, 6:]) * mask[:, 6:]).sum(1)
        logits = model(seq).detach().float().log_softmax(-1)
        same_position = logits.gather(2, seq.unsqueeze(-1)).squeeze(-1) * mask
        hint = "token t is scored by the logits at position t - 1: log_softmax(model(seq[:, :-1]))[t - 1, seq[t]]"
        if torch.allclose(got.float(), same_position, atol=LOGP_ATOL):
            hint = ("off by one: the logits at position t predict token t + 1, so score seq[:, 1:] with the logits "
                    "of seq[:, :-1] and put the result at positions 1..L-1")
        elif bool((got.float()[mask == 0].abs() > LOGP_ATOL).any()):
            hint = ("entries where mask is 0 (prompt, padding, tokens after the stop) must be 0: multiply by the mask, "
                    f"or a row's sum is not log pi(response); here row sums are {got.float().sum(1).tolist()} "
                    f"vs {per_response.tolist()}")
        assert_close(got, want.float(), atol=LOGP_ATOL, rtol=0.0, name=f"response_logprobs ({rows} rows)",
                     inputs={"seq": seq, "mask": mask}, hint=hint)
        assert_close(got.float().sum(1), per_response, atol=LOGP_ATOL * seq.shape[1], rtol=0.0,
                     name="row sums vs log pi(response | prompt)", hint=hint)
        grad = seen["params"][0]
        require(seen["requires_grad"] and grad is not None and grad.abs().sum() > 0,
                "response_logprobs: no gradient reaches the model's parameters (a loss is built on these "
                "log-probs: do not detach, no torch.no_grad)")
    return "alignment, masking and row sums against log pi(response | prompt); gradients flow"


@observation
def accumulated_grads(fn, model, args, kwargs) -> dict:
    """Next to the learner's code: zero ``model``'s grads, call ``fn(model, *args, **kwargs)`` and return
    what it returned and the parameters' ``.grad`` (what the check compares)."""
    model.zero_grad(set_to_none=True)
    value = fn(model, *args, **kwargs)
    return {"value": value, "grads": {n: None if p.grad is None else p.grad.clone()
                                      for n, p in model.named_parameters()}}


# float32: the microbatched and full forward passes compute each row alike up to a few ulps, and
# a gradient entry sums at most ~100 terms; 1e-6 absolute plus 1e-4 relative leaves room for that
# only, while a loss left unscaled is off by a factor of 2 or more (a relative error >= 0.5).
GRAD_ATOL, GRAD_RTOL = 1e-6, 1e-4


@check
def accumulate_gradients(fn):
    """fn(model, seq, mask, old_logp, advantages, microbatch_size, *, aggregation) -> float loss; grads in .grad."""
    model = _small_model(grading_seed(11))
    seq, mask = _batch(grading_seed(12), 6)
    g = _gen(grading_seed(13))
    with torch.no_grad():
        old = rl.response_logprobs(model, seq, mask) + 0.1 * torch.randn(seq.shape, generator=g) * mask
    adv = torch.randn(6, 1, generator=g).expand(seq.shape).contiguous() * mask
    for aggregation in rl.AGGREGATIONS:
        model.zero_grad(set_to_none=True)
        want_loss = rl.grpo_loss(rl.response_logprobs(model, seq, mask), old, old, adv, mask, beta=0.0,
                                 aggregation=aggregation)
        want_loss.backward()
        want = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad(set_to_none=True)
        for micro in (6, 2, 4):  # one microbatch, equal ones, and an uneven last one (4 + 2 rows)
            seen = accumulated_grads(fn, model, (seq, mask, old, adv, micro), {"aggregation": aggregation})
            label = f"{aggregation}, microbatches of {micro} of 6 rows"
            value = seen["value"]
            require(isinstance(value, (float, int, torch.Tensor)) and not isinstance(value, bool),
                    f"[{label}] expected the full batch's loss as a float, got {type(value).__name__}")
            for name, w in want.items():
                got = seen["grads"][name]
                require(got is not None, f"[{label}] no gradient reached {name}: call backward on each microbatch's loss")
                ratio = float(got.flatten() @ w.flatten() / (w.flatten() @ w.flatten()))
                hint = ("weight each microbatch's loss by its share of the batch: rows/B for sequence-mean and constant, "
                        "its masked tokens / all masked tokens for token-mean; then the sum of the scaled losses is "
                        "the full batch's loss")
                if abs(ratio - 1.0) > 0.2 and micro < 6:
                    hint = (f"the accumulated gradient is {ratio:.2f}x the full batch's: a microbatch's loss is already a "
                            f"mean, so scale it by its share of the batch before backward. " + hint)
                assert_close(got, w, atol=GRAD_ATOL, rtol=GRAD_RTOL, name=f"[{label}] grad of {name}", hint=hint)
            assert_close(torch.as_tensor(float(value)), want_loss.detach(), atol=ATOL, rtol=RTOL,
                         name=f"[{label}] returned loss", hint="return the full batch's loss: the sum of the scaled "
                                                              "microbatch losses")
    model.zero_grad(set_to_none=True)
    return "gradients equal the full batch's for 1, 2 and 3 microbatches (one uneven), all three aggregations"
