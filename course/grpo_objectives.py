"""GRPO's objective as pure tensor functions (notebook 10; re-exported by :mod:`course.rl`).

* advantages: :func:`group_advantages` (outcome supervision, normalised within each group) and
  :func:`process_advantages` (DeepSeekMath's process supervision, per-step rewards summed forward);
* :func:`kl_k3`, the unbiased non-negative KL estimator GRPO adds to its loss;
* :func:`aggregate`, the three ways to reduce per-token terms to one loss (the GRPO paper's
  sequence-mean, DAPO's token-mean, Dr. GRPO's constant normaliser), and :func:`grpo_loss`.

Nothing here runs a model; :mod:`course.rl` holds the loops that call these.
"""

from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Outcome supervision: (r - mean) / (std + eps) within each group (row) of ``rewards`` (P, G).

    ``std`` is the population standard deviation of the group (divide by G); a group whose rewards
    are all equal gets advantage 0 everywhere (nothing to learn from it).
    """
    if not isinstance(rewards, torch.Tensor) or rewards.dim() != 2 or not rewards.is_floating_point():
        raise ValueError(f"rewards must be a float tensor (prompts, group), got {rewards!r:.80}")
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True, unbiased=False)
    return (rewards - mean) / (std + eps)


def process_advantages(step_rewards: torch.Tensor, step_ends: torch.Tensor, step_mask: torch.Tensor,
                       num_tokens: int, eps: float = 1e-6) -> torch.Tensor:
    """Process supervision (DeepSeekMath section 4.1.3): advantages (P, G, num_tokens).

    ``step_rewards[p, g, k]`` is the reward of step k of output g for prompt p, ``step_ends[p, g, k]``
    the index of that step's last token, ``step_mask`` marks the steps that exist. Rewards are
    normalised with the mean and (population) std of all existing steps of the group, and the
    advantage of token t is the sum of the normalised rewards of the steps that end at or after t.
    """
    if step_rewards.dim() != 3 or step_ends.shape != step_rewards.shape or step_mask.shape != step_rewards.shape:
        raise ValueError(f"step_rewards, step_ends, step_mask must share one (P, G, K) shape, got "
                         f"{tuple(step_rewards.shape)}, {tuple(step_ends.shape)}, {tuple(step_mask.shape)}")
    if isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or num_tokens < 1:
        raise ValueError(f"num_tokens must be a positive int, got {num_tokens!r}")
    m = step_mask.to(step_rewards.dtype)
    count = m.sum(dim=(1, 2), keepdim=True).clamp_min(1.0)
    mean = (step_rewards * m).sum(dim=(1, 2), keepdim=True) / count
    var = (((step_rewards - mean) * m) ** 2).sum(dim=(1, 2), keepdim=True) / count
    normed = (step_rewards - mean) / (var.sqrt() + eps) * m  # (P, G, K), 0 on missing steps
    t = torch.arange(num_tokens, device=step_rewards.device)
    covers = (step_ends.unsqueeze(-1) >= t).to(step_rewards.dtype)  # (P, G, K, T): step k ends at/after t
    return (normed.unsqueeze(-1) * covers).sum(dim=2)


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """The unbiased, non-negative estimator pi_ref/pi - log(pi_ref/pi) - 1 of KL(pi || pi_ref), per token.

    Its *value* estimates KL(pi || pi_ref) on tokens sampled from pi; its *gradient* in a loss is, in
    expectation, the gradient of the reverse divergence KL(pi_ref || pi) (notebook 10 derives it).
    """
    if logp.shape != ref_logp.shape:
        raise ValueError(f"logp and ref_logp must have one shape, got {tuple(logp.shape)} and {tuple(ref_logp.shape)}")
    log_ratio = ref_logp - logp
    return torch.exp(log_ratio) - log_ratio - 1.0


AGGREGATIONS = ("sequence-mean", "token-mean", "constant")


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, aggregation: str = "sequence-mean",
              max_len: int | None = None) -> torch.Tensor:
    """Reduce per-token terms (B, T) over the tokens where ``mask`` is 1 to one scalar.

    * ``"sequence-mean"`` (GRPO paper): each row's mean over its own tokens (1/|o_i|), then the mean
      over rows (1/G);
    * ``"token-mean"`` (DAPO): the sum over every token of the batch / the number of those tokens;
    * ``"constant"`` (Dr. GRPO): the sum over every token / (B * ``max_len``), ``max_len`` defaulting
      to T, the generation budget, so a token's weight does not depend on any length.
    """
    if per_token.dim() != 2 or mask.shape != per_token.shape:
        raise ValueError(f"per_token and mask must share one (B, T) shape, got {tuple(per_token.shape)} "
                         f"and {tuple(mask.shape)}")
    mask = mask.to(per_token.dtype)
    if aggregation == "sequence-mean":
        return ((per_token * mask).sum(1) / mask.sum(1).clamp_min(1.0)).mean()
    if aggregation == "token-mean":
        return (per_token * mask).sum() / mask.sum().clamp_min(1.0)
    if aggregation == "constant":
        max_len = per_token.shape[1] if max_len is None else max_len
        if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
            raise ValueError(f"max_len must be a positive int, got {max_len!r}")
        return (per_token * mask).sum() / (per_token.shape[0] * max_len)
    raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")


def grpo_loss(logp, old_logp, ref_logp, advantages, mask, *, clip_eps=0.2, beta=0.04, aggregation="sequence-mean"):
    """-J_GRPO: clipped surrogate per token minus beta * KL, reduced by :func:`aggregate` (by default
    the paper's: averaged over each completion, then over the batch).

    All arguments are (B, T); ``advantages`` holds outcome advantages broadcast over the tokens of a
    completion, or process advantages; ``mask`` is 1 on the tokens of each completion.
    """
    shape = logp.shape
    for name, value in (("old_logp", old_logp), ("ref_logp", ref_logp), ("advantages", advantages), ("mask", mask)):
        if value.shape != shape:
            raise ValueError(f"{name} must have the shape of logp {tuple(shape)}, got {tuple(value.shape)}")
    ratio = torch.exp(logp - old_logp)
    surrogate = torch.minimum(ratio * advantages, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * advantages)
    per_token = surrogate - beta * kl_k3(logp, ref_logp)
    return -aggregate(per_token, mask, aggregation)
