"""Direct Preference Optimization on notebook 09's ranked comparisons (Rafailov et al., 2023).

DPO optimises the same KL-regularised objective as InstructGPT's PPO step,
max E[r(x, y)] - beta KL(pi || pi_ref), without a reward model or rollouts: the optimum of that objective
is pi*(y|x) proportional to pi_ref(y|x) exp(r(x, y) / beta), so r = beta log(pi*/pi_ref) + a term of x
alone, and a Bradley-Terry likelihood on that *implicit reward* trains the policy directly:

    loss = -log sigmoid(beta * ((log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))))

Here the data are the ranked comparisons of :func:`course.rlhf.collect_comparisons` (K responses per
prompt, sampled from the SFT model and ranked by the noisy labelers), used, like the reward model, as all
K choose 2 (winner, loser) pairs of each ranking. ``mask_padding`` (default) / ``attention_mask`` hide the
prompts' left padding from the models, as everywhere in :mod:`course.rlhf`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from .models.tinygpt import TinyGPT
from .rl import completion_mask, token_logprobs
from .rlhf import ComparisonData, response_attention


def dpo_loss(logp_w: torch.Tensor, logp_l: torch.Tensor, ref_logp_w: torch.Tensor, ref_logp_l: torch.Tensor, *,
             beta: float) -> torch.Tensor:
    """Mean over pairs of -log sigmoid(beta * ((logp_w - ref_logp_w) - (logp_l - ref_logp_l))).

    Each argument holds one sequence log-probability per pair (N,): of the preferred response (w) and
    the dispreferred one (l), under the policy and under the frozen reference.
    """
    shapes = {t.shape for t in (logp_w, logp_l, ref_logp_w, ref_logp_l)}
    if len(shapes) != 1 or logp_w.dim() != 1:
        raise ValueError(f"the four log-probabilities must be (N,) tensors of one shape, got {sorted(map(tuple, shapes))}")
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    margin = (logp_w - ref_logp_w) - (logp_l - ref_logp_l)
    return -F.logsigmoid(beta * margin).mean()


def sequence_logprobs(model: TinyGPT, ids: torch.Tensor, width: int, stop_id: int = 0, *,
                      attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """log pi(response | prompt) (N,) of sequences from :func:`course.rlhf.response_ids`: the sum of the
    response tokens' log-probabilities after the ``width`` prompt positions, up to and including the stop.
    ``attention_mask`` (N, L) bool (:func:`course.rlhf.response_attention`) hides the prompt's left
    padding; None attends to it."""
    if ids.dim() != 2 or not 0 < width < ids.shape[1]:
        raise ValueError(f"ids must be (N, L) with 0 < width < L, got shape {tuple(ids.shape)} and width {width}")
    if attention_mask is not None and attention_mask.shape != ids.shape:
        raise ValueError(f"attention_mask must have the shape of ids {tuple(ids.shape)}, "
                         f"got {tuple(attention_mask.shape)}")
    response = ids[:, width:]
    prompt_mask = None if attention_mask is None else attention_mask[:, :width]
    return (token_logprobs(model, ids[:, :width], response, prompt_mask=prompt_mask)
            * completion_mask(response, stop_id)).sum(1)


def ranked_pairs(rankings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(winner, loser) response indices (P, K choose 2) of every pair i < j of each ranking (best first)."""
    if rankings.dim() != 2 or rankings.shape[1] < 2:
        raise ValueError(f"rankings must be (P, K >= 2), got shape {tuple(rankings.shape)}")
    k = rankings.shape[1]
    first, second = torch.triu_indices(k, k, offset=1)
    return rankings[:, first], rankings[:, second]


@dataclass
class DPOHistory:
    """Per step: the loss, the fraction of pairs whose implicit reward orders them like the labels, the mean
    implicit-reward margin beta * (log-ratio_w - log-ratio_l), and wall time."""
    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    margin: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


def train_dpo(policy: TinyGPT, ref: TinyGPT, comparisons: ComparisonData, *, beta: float, steps: int,
              batch_prompts: int = 32, lr: float = 1e-4, stop_id: int = 0, seed: int = 0,
              loss_fn: Callable = dpo_loss, callback: Callable[[int, TinyGPT], None] | None = None,
              mask_padding: bool = True) -> DPOHistory:
    """AdamW on ``loss_fn(logp_w, logp_l, ref_logp_w, ref_logp_l, beta=)`` over all ranked pairs of random
    batches of prompts; ``policy`` is trained in place, ``ref`` stays frozen (its log-probs are computed once).

    All K responses of a prompt go through the policy in one batch, so one forward pass serves K choose 2
    pairs (as for the reward model). ``callback(step, policy)`` runs after each step (evaluate there; the
    policy is in eval mode during the call). ``mask_padding`` (default) hides the prompts' left padding
    from the policy and the reference; False attends to it.
    """
    for name, m in (("policy", policy), ("ref", ref)):
        if not isinstance(m, TinyGPT):
            raise TypeError(f"{name} must be a TinyGPT, got {type(m).__name__}")
    if steps < 0 or batch_prompts < 1 or not beta > 0:
        raise ValueError(f"need steps >= 0, batch_prompts >= 1 and beta > 0; got {steps}, {batch_prompts}, {beta}")
    p, k, length = comparisons.ids.shape
    flat = comparisons.ids.view(p * k, length)
    ref.eval()
    with torch.no_grad():
        ref_logp = torch.cat([sequence_logprobs(ref, flat[i:i + 512], comparisons.width, stop_id,
                                                attention_mask=response_attention(flat[i:i + 512], mask_padding))
                              for i in range(0, p * k, 512)]).view(p, k)
    win, lose = ranked_pairs(comparisons.rankings)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(policy.parameters(), lr=lr, weight_decay=0.0)
    hist, start = DPOHistory(), time.perf_counter()
    policy.train()
    for step in range(1, steps + 1):
        pick = torch.randint(p, (batch_prompts,), generator=g)
        batch = comparisons.ids[pick].view(-1, length)
        logp = sequence_logprobs(policy, batch, comparisons.width, stop_id,
                                 attention_mask=response_attention(batch, mask_padding)).view(batch_prompts, k)
        ref_b, w, lo = ref_logp[pick], win[pick], lose[pick]
        args = (logp.gather(1, w).flatten(), logp.gather(1, lo).flatten(), ref_b.gather(1, w).flatten(),
                ref_b.gather(1, lo).flatten())
        loss = loss_fn(*args, beta=beta)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            margin = beta * ((args[0] - args[2]) - (args[1] - args[3]))
        hist.loss.append(loss.item())
        hist.accuracy.append((margin > 0).float().mean().item())
        hist.margin.append(margin.mean().item())
        hist.seconds.append(time.perf_counter() - start)
        if callback is not None:
            policy.eval()
            callback(step, policy)
            policy.train()
    policy.eval()
    return hist
