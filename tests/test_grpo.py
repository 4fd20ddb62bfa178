"""course.checks.grpo (notebook 10): every check passes on a correct implementation and fails on
plausible wrong ones (a check that cannot fail is a defect), plus the properties the issue asks for:
GRPO advantages have zero mean per group; the k3 KL estimator is >= 0 and 0 for equal policies; a
loss with the clipping removed fails the clipping check.
"""

from __future__ import annotations

import math

import pytest
import torch

import course  # noqa: F401
from course import rl
from course.checks import core
from course.checks import grpo as checks
from course.data import Example, is_correct


def passed(check, *args) -> bool:
    check(*args)
    return core.RESULTS[-1].passed


def stub(*args, **kwargs):
    raise NotImplementedError("Exercise 10.x")


@pytest.mark.parametrize("name", ["group_advantages", "kl_k3", "grpo_loss", "process_advantages",
                                  "pass_at_k", "rft_examples", "response_mask", "response_logprobs",
                                  "accumulate_gradients"])
def test_every_check_passes_the_reference_and_fails_the_stub(name):
    assert passed(getattr(checks, name), getattr(rl, name))
    assert not passed(getattr(checks, name), stub)


# --- 10.1 ---------------------------------------------------------------------------------------


def test_reference_group_advantages_have_zero_mean_per_group_and_unit_std():
    r = (torch.rand(7, 8, generator=torch.Generator().manual_seed(0)) < 0.4).float()
    r[0] = 1.0  # a constant group
    a = rl.group_advantages(r)
    assert a.mean(dim=1).abs().max() < 1e-6  # float32 rounding of 8 O(1) terms
    assert torch.equal(a[0], torch.zeros(8))
    varied = r.std(dim=1) > 0
    assert torch.allclose(a[varied].std(dim=1, unbiased=False), torch.ones(int(varied.sum())), atol=1e-4)  # eps/std


def test_group_advantages_check_accepts_the_sample_std_convention():
    assert passed(checks.group_advantages,
                  lambda r, eps=1e-6: (r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + eps))


@pytest.mark.parametrize("wrong", [
    lambda r, eps=1e-6: (r - r.mean()) / (r.std() + eps),  # whole-batch normalisation
    lambda r, eps=1e-6: r / (r.std(1, keepdim=True) + eps),  # no baseline
    lambda r, eps=1e-6: (r - r.mean(1, keepdim=True)) / r.std(1, keepdim=True),  # nan on a constant group
    lambda r, eps=1e-6: r - r.mean(1, keepdim=True),  # not scaled
], ids=["batch-norm", "no-mean", "no-eps", "no-std"])
def test_group_advantages_check_rejects(wrong):
    assert not passed(checks.group_advantages, wrong)


# --- 10.2 ---------------------------------------------------------------------------------------


def test_reference_k3_is_non_negative_and_zero_for_equal_policies():
    g = torch.Generator().manual_seed(1)
    a, b = torch.log(torch.rand(100, generator=g)), torch.log(torch.rand(100, generator=g))
    assert (rl.kl_k3(a, b) >= 0).all()
    assert torch.equal(rl.kl_k3(a, a), torch.zeros(100))


@pytest.mark.parametrize("wrong", [
    lambda logp, ref: logp - ref,  # k1: unbiased but can be negative
    lambda logp, ref: torch.exp(logp - ref) - (logp - ref) - 1,  # ratio upside down
    lambda logp, ref: 0.5 * (logp - ref) ** 2,  # k2: biased
], ids=["k1", "reversed", "k2"])
def test_kl_check_rejects(wrong):
    assert not passed(checks.kl_k3, wrong)


def test_kl_check_measures_the_gradient_not_only_the_value():
    detached = lambda logp, ref: rl.kl_k3(logp.detach(), ref)  # right values, no gradient
    assert not passed(checks.kl_k3, detached)
    # right values, but the gradient of the forward KL's k2 term (a straight-through swap)
    k2_grad = lambda logp, ref: rl.kl_k3(logp, ref).detach() + 0.5 * (ref - logp) ** 2 - (0.5 * (ref - logp) ** 2).detach()
    assert not passed(checks.kl_k3, k2_grad)
    assert passed(checks.kl_k3, rl.kl_k3)


def test_k3_gradient_is_the_reverse_kl_gradient_exactly():
    torch.manual_seed(0)
    theta = torch.randn(6, dtype=torch.float64, requires_grad=True)
    ref = torch.log_softmax(torch.randn(6, dtype=torch.float64), 0)

    def grad(value):
        (g,) = torch.autograd.grad(value, theta)
        return g

    logp = lambda: torch.log_softmax(theta, 0)
    on_policy = lambda term: (logp().exp().detach() * term(logp())).sum()  # tokens from pi, no grad through sampling
    k3 = grad(on_policy(lambda lp: rl.kl_k3(lp, ref)))
    reverse = grad((ref.exp() * (ref - logp())).sum())
    forward = grad((logp().exp() * (logp() - ref)).sum())
    assert (k3 - reverse).abs().max() < 1e-12
    assert (k3 - forward).abs().max() > 0.05


# --- 10.3 ---------------------------------------------------------------------------------------


def no_clip_loss(logp, old_logp, ref_logp, advantages, mask, *, clip_eps=0.2, beta=0.04):
    per_token = torch.exp(logp - old_logp) * advantages - beta * rl.kl_k3(logp, ref_logp)
    return -((per_token * mask).sum(1) / mask.sum(1)).mean()


def test_a_loss_without_clipping_fails_the_clipping_check():
    assert not passed(checks.grpo_loss, no_clip_loss)
    assert "clip" in core.RESULTS[-1].message


def _variant(kind):
    def loss(logp, old_logp, ref_logp, advantages, mask, *, clip_eps=0.2, beta=0.04):
        ratio = torch.exp(logp - old_logp)
        clipped = torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * advantages
        surrogate = clipped if kind == "clip-only" else torch.minimum(ratio * advantages, clipped)
        kl = rl.kl_k3(logp, ref_logp)
        per_token = surrogate + beta * kl if kind == "kl-sign" else surrogate - beta * kl
        if kind == "token-mean":
            return -(per_token * mask).sum() / mask.sum()
        if kind == "no-mask":
            return -per_token.mean()
        value = -((per_token * mask).sum(1) / mask.sum(1)).mean()
        if kind == "objective":
            return -value
        if kind == "fixed-eps":
            return loss(logp, old_logp, ref_logp, advantages, mask, clip_eps=0.2, beta=beta) if clip_eps != 0.2 else value
        return value
    return loss


@pytest.mark.parametrize("kind", ["clip-only", "kl-sign", "token-mean", "no-mask", "objective", "fixed-eps"])
def test_grpo_loss_check_rejects(kind):
    assert not passed(checks.grpo_loss, _variant(kind))


def _aggregated(aggregation):
    return lambda *args, **kwargs: rl.grpo_loss(*args, **kwargs, aggregation=aggregation)


@pytest.mark.parametrize("aggregation", rl.AGGREGATIONS)
def test_grpo_loss_check_accepts_each_aggregation_when_asked_for_it(aggregation):
    assert passed(checks.grpo_loss, _aggregated(aggregation), aggregation)


@pytest.mark.parametrize("asked,given", [(a, b) for a in rl.AGGREGATIONS for b in rl.AGGREGATIONS if a != b])
def test_grpo_loss_check_rejects_a_mismatched_aggregation_and_names_it(asked, given):
    assert not passed(checks.grpo_loss, _aggregated(given), asked)
    assert f"your result is the {given} aggregation" in core.RESULTS[-1].message


def test_grpo_loss_check_rejects_an_unknown_aggregation_name():
    assert not passed(checks.grpo_loss, rl.grpo_loss, "mean")


# --- loss aggregation ---------------------------------------------------------------------------------


def test_loss_aggregation_check_passes_the_reference_and_fails_the_stub():
    assert passed(checks.loss_aggregation, rl.aggregate)
    assert not passed(checks.loss_aggregation, stub)


def _one_scheme(scheme):
    return lambda x, m, aggregation: rl.aggregate(x, m, scheme if aggregation in rl.AGGREGATIONS else "bad")


@pytest.mark.parametrize("wrong", [
    _one_scheme("sequence-mean"), _one_scheme("token-mean"), _one_scheme("constant"),
    lambda x, m, a: (x * m).sum() / m.sum(1).clamp_min(1).sum() if a != "constant" else rl.aggregate(x, m, a),
    lambda x, m, a: rl.aggregate(x, torch.ones_like(m), a),  # padding counted
    lambda x, m, a: rl.aggregate(x.detach(), m, a),  # right values, no gradient
    lambda x, m, a: rl.aggregate(x, m, a if a in rl.AGGREGATIONS else "constant"),  # unknown names accepted
], ids=["always-sequence", "always-token", "always-constant", "token-for-sequence", "unmasked", "detached",
        "no-validation"])
def test_loss_aggregation_check_rejects(wrong):
    assert not passed(checks.loss_aggregation, wrong)


def test_aggregation_weights_short_and_long_responses_as_the_papers_say():
    # one group: a 2-token and an 8-token response (T = 8), same advantage; d loss / d logp at ratio 1
    mask = torch.tensor([[1.0] * 2 + [0.0] * 6, [1.0] * 8])
    weights = {}
    for scheme in rl.AGGREGATIONS:
        logp = torch.zeros(2, 8, dtype=torch.float64, requires_grad=True)  # float64: the weights compare exactly
        rl.grpo_loss(logp, logp.detach(), logp.detach(), torch.ones(2, 8, dtype=torch.float64), mask.double(),
                     beta=0.0, aggregation=scheme).backward()
        weights[scheme] = (-logp.grad[0, 0].item(), -logp.grad[1, 0].item())
    assert weights["sequence-mean"] == (1 / (2 * 2), 1 / (2 * 8))  # 1/(G |o_i|): the short one 4x per token
    assert weights["token-mean"] == (1 / 10, 1 / 10)  # one weight per token in the batch
    assert weights["constant"] == (1 / 16, 1 / 16)  # 1/(G T)
    with pytest.raises(ValueError):
        rl.aggregate(torch.zeros(2, 8), mask, "mean")


# --- the plumbing -------------------------------------------------------------------------------------


def test_response_mask_check_rejects_common_mistakes():
    stop = checks.STOP_ID
    prompt_counted = lambda seq, w, s: rl.completion_mask(seq, s) * (seq != checks.TOK.stoi[" "]).float()
    stop_left_out = lambda seq, w, s: rl.response_mask(seq, w, s) * (seq != s).float()
    from_the_start = lambda seq, w, s: torch.cat([torch.zeros(seq.shape[0], w),
                                                  rl.completion_mask(seq, s)[:, w:]], 1)  # stops in the prompt count
    for wrong in (prompt_counted, stop_left_out, from_the_start):
        assert not passed(checks.response_mask, wrong)
    assert stop == checks.TOK.stoi["\n"]


def _shifted(model, seq, mask):  # the classic bug: logits at t scored against token t
    logits = model(seq).float().log_softmax(-1)
    return logits.gather(2, seq.unsqueeze(-1)).squeeze(-1) * mask


def _unmasked(model, seq, mask):
    return rl.response_logprobs(model, seq, torch.ones_like(mask))


def _detached(model, seq, mask):
    return rl.response_logprobs(model, seq, mask).detach()


@pytest.mark.parametrize("wrong,words", [(_shifted, "off by one"), (_unmasked, "must be 0"), (_detached, "gradient")],
                         ids=["off-by-one", "unmasked", "detached"])
def test_response_logprobs_check_catches_the_off_by_one_and_an_unmasked_sum(wrong, words):
    assert not passed(checks.response_logprobs, wrong)
    assert words in core.RESULTS[-1].message


def _accumulate_with(share):
    def fn(model, seq, mask, old_logp, advantages, microbatch_size, *, aggregation="sequence-mean"):
        total = 0.0
        for rows in torch.arange(seq.shape[0]).split(microbatch_size):
            logp = rl.response_logprobs(model, seq[rows], mask[rows])
            loss = rl.grpo_loss(logp, old_logp[rows], old_logp[rows], advantages[rows], mask[rows], beta=0.0,
                                aggregation=aggregation)
            (loss * share(rows, seq, mask)).backward()
            total += float(loss.detach() * share(rows, seq, mask))
        return total
    return fn


@pytest.mark.parametrize("share", [
    lambda rows, seq, mask: 1.0,  # unscaled: the sum of the microbatch means
    lambda rows, seq, mask: 1.0 / math.ceil(seq.shape[0] / len(rows)) if len(rows) else 0.0,  # 1/n_micro
    lambda rows, seq, mask: len(rows) / seq.shape[0],  # rows, also for token-mean
], ids=["unscaled", "one-over-n-micro", "rows-for-token-mean"])
def test_accumulate_gradients_check_rejects_wrong_scaling(share):
    assert not passed(checks.accumulate_gradients, _accumulate_with(share))


def test_accumulate_gradients_check_rejects_zeroing_between_microbatches():
    def zeroing(model, seq, mask, old_logp, advantages, microbatch_size, *, aggregation="sequence-mean"):
        value = 0.0
        for rows in torch.arange(seq.shape[0]).split(microbatch_size):
            model.zero_grad()
            value = rl.accumulate_gradients(model, seq[rows], mask[rows], old_logp[rows], advantages[rows],
                                            microbatch_size, aggregation=aggregation)
        return value
    assert not passed(checks.accumulate_gradients, zeroing)


def test_grpo_loss_check_rejects_a_detached_loss():
    def detached(*args, **kwargs):
        return torch.tensor(rl.grpo_loss(*args, **kwargs).item())
    assert not passed(checks.grpo_loss, detached)


def test_reference_loss_gradient_is_minus_advantage_over_length_at_ratio_one():
    logp = torch.zeros(2, 3, requires_grad=True)
    adv = torch.tensor([[2.0] * 3, [-1.0] * 3])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    rl.grpo_loss(logp, logp.detach(), logp.detach(), adv, mask, beta=0.3).backward()
    want = -adv * mask / mask.sum(1, keepdim=True) / 2  # KL gradient is 0 at pi = pi_ref
    assert torch.allclose(logp.grad, want, atol=1e-6)


# --- 10.4 ---------------------------------------------------------------------------------------


def test_reference_process_advantages_on_a_worked_example():
    # two outputs; output 0 has steps ending at tokens 0 and 2 with rewards 1, 0; output 1 one step
    # ending at 1 with reward 1. Group rewards [1, 0, 1]: mean 2/3, std sqrt(2)/3.
    r = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]], dtype=torch.float64)
    ends = torch.tensor([[[0, 2], [1, 0]]])
    mask = torch.tensor([[[True, True], [True, False]]])
    a = rl.process_advantages(r, ends, mask, 4, eps=0.0)
    hi, lo = (1 - 2 / 3) / (math.sqrt(2) / 3), (0 - 2 / 3) / (math.sqrt(2) / 3)
    want = torch.tensor([[[hi + lo, lo, lo, 0.0], [hi, hi, 0.0, 0.0]]], dtype=torch.float64)
    assert torch.allclose(a, want, atol=1e-12)


def _forward_sum(step_rewards, step_ends, step_mask, num_tokens, eps=1e-6):
    full = rl.process_advantages(step_rewards, step_ends, step_mask, num_tokens, eps)
    normed = full - torch.nn.functional.pad(full[..., 1:], (0, 1))  # step reward landing on each token
    return torch.cumsum(normed, dim=-1)


def _batch_norm(step_rewards, step_ends, step_mask, num_tokens, eps=1e-6):
    flat = step_rewards.reshape(1, 1, -1)
    return rl.process_advantages(flat, step_ends.reshape(1, 1, -1), step_mask.reshape(1, 1, -1), num_tokens,
                                 eps).expand(*step_rewards.shape[:2], num_tokens)


def _ignore_mask(step_rewards, step_ends, step_mask, num_tokens, eps=1e-6):
    return rl.process_advantages(step_rewards, step_ends, torch.ones_like(step_mask), num_tokens, eps)


def _per_output(step_rewards, step_ends, step_mask, num_tokens, eps=1e-6):
    p, g, k = step_rewards.shape
    return rl.process_advantages(step_rewards.reshape(p * g, 1, k), step_ends.reshape(p * g, 1, k),
                                 step_mask.reshape(p * g, 1, k), num_tokens, eps).reshape(p, g, num_tokens)


@pytest.mark.parametrize("wrong", [_forward_sum, _batch_norm, _ignore_mask, _per_output])
def test_process_advantages_check_rejects(wrong):
    assert not passed(checks.process_advantages, wrong)


def test_process_steps_normalised_rewards_have_zero_mean_per_group():
    g = torch.Generator().manual_seed(5)
    r = torch.rand(2, 4, 3, generator=g)
    ends = torch.tensor([0, 1, 2]).expand(2, 4, 3)
    mask = torch.ones(2, 4, 3, dtype=torch.bool)
    a = rl.process_advantages(r, ends, mask, 3)
    per_step = a - torch.nn.functional.pad(a[..., 1:], (0, 1))  # step k ends at token k here
    assert per_step.sum(dim=(1, 2)).abs().max() < 1e-5


# --- 10.5 / 10.6 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("wrong", [
    lambda n, c, k: 1 - (1 - c / n) ** k,
    lambda n, c, k: c / n,
    lambda n, c, k: 1.0 - math.comb(n - c, k) / math.comb(n, k),  # right values, no argument checks
], ids=["biased", "pass@1", "no-validation"])
def test_pass_at_k_check_rejects(wrong):
    assert not passed(checks.pass_at_k, wrong)


@pytest.mark.parametrize("wrong", [
    lambda exs, samples: [Example(e.prompt, s.split("\n")[0].strip()) for e, ss in zip(exs, samples, strict=True) for s in ss],
    lambda exs, samples: list(dict.fromkeys(rl.rft_examples(exs, samples))),  # deduplicated
    lambda exs, samples: [Example(e.prompt, s) for e, ss in zip(exs, samples, strict=True) for s in ss if is_correct(e, s)],
], ids=["keeps-wrong", "dedup", "raw-text"])
def test_rft_check_rejects(wrong):
    assert not passed(checks.rft_examples, wrong)


# --- the full-run script ------------------------------------------------------------------------------


@pytest.mark.slow
def test_train_grpo_script_writes_both_csvs(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from course import bench

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "grpo.csv"
    subprocess.run([sys.executable, str(root / "scripts" / "train_grpo.py"), "--seeds", "0,1", "--sft-steps", "5",
                    "--steps", "2", "--eval-every", "1", "--out", str(out)], check=True, cwd=root, timeout=120,
                   env={**os.environ, "COURSE_HEADLESS": "1", "COURSE_THREADS": "1"})
    curve, tags = bench.load_csv(out)
    passk, _ = bench.load_csv(tmp_path / "grpo_passk.csv")
    assert [(r["seed"], r["step"]) for r in curve] == [(s, t) for s in (0, 1) for t in (0, 1, 2)]
    assert "sft_steps=5" in tags["config"] and tags["seeds"] == "0,1" and "cpu_model" in tags
    assert {(r["seed"], r["model"], r["k"]) for r in passk} == {
        (s, m, k) for s in (0, 1) for m in ("sft", "grpo") for k in (1, 2, 4, 8, 16)}


@pytest.mark.slow
def test_length_bias_script_writes_its_csv_and_sequence_mean_lengthens_wrong_answers(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from course import bench

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "lb.csv"
    subprocess.run([sys.executable, str(root / "scripts" / "grpo_length_bias.py"), "--seeds", "0,1", "--steps", "60",
                    "--log-every", "30", "--out", str(out)], check=True, cwd=root, timeout=120,
                   env={**os.environ, "COURSE_HEADLESS": "1", "COURSE_THREADS": "1"})
    rows, tags = bench.load_csv(out)
    assert {(r["aggregation"], r["seed"], r["step"]) for r in rows} == {
        (a, s, t) for a in rl.AGGREGATIONS for s in (0, 1) for t in (0, 30, 60)}
    assert tags["seeds"] == "0,1" and "steps=60" in tags["config"] and "cpu_model" in tags
    start = rows[0]["length_mean"]
    assert all(r["length_right"] == r["length_wrong"] == start for r in rows if r["step"] == 0)
    # 60 updates already separate them under sequence-mean (the committed 300-update CSV: 14.5 vs 2.1 tokens)
    end = [r for r in rows if r["aggregation"] == "sequence-mean" and r["step"] == 60]
    assert all(r["length_wrong"] > start > r["length_right"] for r in end)
