"""InstructGPT on a TinyGPT (notebook 09): a preference world, a reward model, PPO with a KL penalty.

* **The world.** Instructions on short letter strings (``copy:cab|``, ``rev:cab|``, ``sort:cab|``)
  with a hidden *true* reward that gives partial credit (:func:`true_reward`). "Labelers" rank K
  completions of a prompt by Plackett-Luce sampling from that reward (:func:`plackett_luce_rankings`),
  whose pairwise marginals are exactly Bradley-Terry: P(i above j) = sigmoid((r_i - r_j) / temperature).
* **The reward model** (:class:`ScalarHeadGPT`): a TinyGPT body with a scalar head whose outputs are
  summed over the response tokens (:func:`reward_scores`; InstructGPT reads one scalar at the last token,
  which a 2-layer model learns less easily), trained on every one of the K choose 2 pairs of each
  ranking (:func:`rm_pairwise_loss`).
* **PPO** (:func:`train_ppo`): rollouts from the policy, a per-token KL penalty to the SFT model folded
  into the reward (:func:`kl_penalized_rewards`), a value model (initialised from the reward model, as
  in the paper), GAE (:func:`gae`), the clipped surrogate plus a value loss (:func:`ppo_loss`), several
  epochs over minibatches, and optionally PPO-ptx (the pretraining loss mixed back in). Opt-in, as the
  field runs PPO: a clipped value loss (:func:`clipped_value_loss`), separate gradient clipping for the
  policy and the value model, and an adaptive KL coefficient (:func:`adaptive_kl_beta`, Ziegler et al.
  2019); clip fraction and approximate KL (:func:`ppo_diagnostics`) are logged on every run.

The reference versions here are what the notebook's checks compare learners' code against; the
trainer takes the learner's functions as arguments. Everything is seeded and CPU-sized.
"""

from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import data, runtime
from .data import CharTokenizer, Example
from .models.tinygpt import TinyGPT
from .rl import STOP, completion_mask, encode_prompts, sample_completions, token_logprobs

TASKS = ("copy", "rev", "sort")
ALPHABET = "abcdef"


# --- the preference world ---------------------------------------------------------------------


def instruction_prompts(n: int, *, seed: int, tasks: Sequence[str] = TASKS, min_len: int = 3,
                        max_len: int = 5, alphabet: str = ALPHABET) -> list[Example]:
    """``n`` instructions like ``'rev:cab|'`` with their ideal answer (``'bac'``); deterministic given ``seed``.

    ``copy`` repeats the string, ``rev`` reverses it, ``sort`` sorts its letters.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    unknown = set(tasks) - set(TASKS)
    if not tasks or unknown:
        raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {tasks!r}")
    if not 1 <= min_len <= max_len:
        raise ValueError(f"need 1 <= min_len <= max_len, got {min_len}, {max_len}")
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        task = rng.choice(list(tasks))
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(min_len, max_len)))
        answer = s if task == "copy" else s[::-1] if task == "rev" else "".join(sorted(s))
        out.append(Example(f"{task}:{s}|", answer))
    return out


def true_reward(example: Example, completion: str) -> float:
    """The hidden reward in [0, 1]: letters in the right place, over the longer of answer and response.

    ``completion`` is cut at its first newline and stripped. An exact answer scores 1; a response
    with the right letters in the wrong order, or one letter too many, gets partial credit.
    """
    if not isinstance(example, Example):
        raise TypeError(f"example must be a course.data.Example, got {type(example).__name__}")
    text = completion.split(STOP, 1)[0].strip()
    want = example.answer
    longest = max(len(text), len(want))
    if longest == 0:
        return 1.0
    return sum(a == b for a, b in zip(text, want, strict=False)) / longest


def true_rewards(examples: Sequence[Example], texts: Sequence[str]) -> torch.Tensor:
    """:func:`true_reward` for each (example, text) pair, as a float tensor (B,)."""
    if len(examples) != len(texts):
        raise ValueError(f"examples ({len(examples)}) and texts ({len(texts)}) must have the same length")
    return torch.tensor([true_reward(e, t) for e, t in zip(examples, texts, strict=True)], dtype=torch.float32)


def plackett_luce_rankings(scores: torch.Tensor, *, temperature: float,
                           generator: torch.Generator | None = None) -> torch.Tensor:
    """Noisy labeler rankings (P, K) of K responses per prompt, best first.

    Sorting ``scores / temperature + Gumbel noise`` samples a Plackett-Luce ranking; any two of its
    responses come out in the Bradley-Terry order with P(i above j) = sigmoid((s_i - s_j) / temperature).
    """
    if scores.dim() != 2 or scores.shape[1] < 2:
        raise ValueError(f"scores must be (prompts, K >= 2), got shape {tuple(scores.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    u = torch.rand(scores.shape, generator=generator).clamp(1e-9, 1 - 1e-9)
    gumbel = -torch.log(-torch.log(u))
    return torch.argsort(scores / temperature + gumbel, dim=1, descending=True)


# --- the reward model: a TinyGPT body with a scalar head --------------------------------------


def hidden_states(model: TinyGPT, idx: torch.Tensor) -> torch.Tensor:
    """The final (B, T, d_model) features of a TinyGPT, before its language-model head."""
    if not isinstance(model, TinyGPT):
        raise TypeError(f"model must be a TinyGPT, got {type(model).__name__}")
    return model.features(idx)


class ScalarHeadGPT(nn.Module):
    """A TinyGPT body with a linear head to one number per position (reward model, value model)."""

    def __init__(self, body: TinyGPT) -> None:
        super().__init__()
        if not isinstance(body, TinyGPT):
            raise TypeError(f"body must be a TinyGPT, got {type(body).__name__}")
        self.body = body
        self.head = nn.Linear(body.config.d_model, 1)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, T) scalars: the head applied to the features at every position."""
        return self.head(hidden_states(self.body, idx)).squeeze(-1)


def response_ids(tok: CharTokenizer, prompts: Sequence[str], texts: Sequence[str], *, width: int,
                 length: int) -> torch.Tensor:
    """(B, width + length) ids of the left-padded prompt then the response cut at its first newline,
    right-padded with newlines: one canonical token sequence per (prompt, response) text."""
    if len(prompts) != len(texts):
        raise ValueError(f"prompts ({len(prompts)}) and texts ({len(texts)}) must have the same length")
    rows = []
    for t in texts:
        body = t.split(STOP, 1)[0][:length - 1] + STOP
        rows.append(tok.encode(body.ljust(length, STOP)))
    return torch.cat([encode_prompts(tok, prompts, width), torch.stack(rows)], dim=1)


def reward_scores(rm: ScalarHeadGPT, ids: torch.Tensor, width: int, stop_id: int = 0) -> torch.Tensor:
    """The reward model's score (B,) of each sequence from :func:`response_ids`: the scalar head summed
    over the response tokens (after the ``width`` prompt positions, up to and including the first stop).

    (InstructGPT reads one scalar at the last token. A 2-layer model learns the partial-credit reward
    much more easily as a sum of per-token judgements; it is still one number per response.)
    """
    if not isinstance(rm, ScalarHeadGPT):
        raise TypeError(f"rm must be a ScalarHeadGPT, got {type(rm).__name__}")
    if not 0 < width < ids.shape[1]:
        raise ValueError(f"width must be in (0, {ids.shape[1]}) for ids of shape {tuple(ids.shape)}, got {width}")
    mask = completion_mask(ids[:, width:], stop_id)
    return (rm(ids)[:, width:] * mask).sum(1)


def rm_pairwise_loss(scores: torch.Tensor, rankings: torch.Tensor) -> torch.Tensor:
    """InstructGPT's reward-model loss: mean over all K choose 2 pairs of -log sigmoid(r_w - r_l).

    ``scores`` (P, K) are the reward model's scores of K responses per prompt, ``rankings`` (P, K)
    the labelers' order of response indices, best first.
    """
    if scores.dim() != 2 or rankings.shape != scores.shape:
        raise ValueError(f"scores and rankings must both be (P, K); got {tuple(scores.shape)} and "
                         f"{tuple(rankings.shape)}")
    k = scores.shape[1]
    ranked = scores.gather(1, rankings)  # best first
    win, lose = torch.triu_indices(k, k, offset=1)
    return -F.logsigmoid(ranked[:, win] - ranked[:, lose]).mean()


@dataclass
class ComparisonData:
    """K responses per prompt, as ids (P, K, L), their true rewards (P, K) and labeler rankings (P, K)."""
    examples: list[Example]
    texts: list[list[str]]
    ids: torch.Tensor
    true: torch.Tensor
    rankings: torch.Tensor
    width: int


@torch.no_grad()
def collect_comparisons(policy: TinyGPT, tok: CharTokenizer, examples: Sequence[Example], *, k: int,
                        width: int, max_new_tokens: int, temperature: float = 1.0,
                        label_temperature: float = 0.1, seed: int = 0) -> ComparisonData:
    """Sample ``k`` responses per prompt from ``policy`` and have noisy labelers rank them."""
    if k < 2:
        raise ValueError(f"k must be >= 2 to make comparisons, got {k}")
    g = torch.Generator().manual_seed(seed)
    ids = encode_prompts(tok, [e.prompt for e in examples], width).repeat_interleave(k, 0)
    comps, _ = sample_completions(policy, ids, max_new_tokens, temperature=temperature, generator=g)
    texts = [tok.decode(row) for row in comps]
    prompts = [e.prompt for e in examples for _ in range(k)]
    seqs = response_ids(tok, prompts, texts, width=width, length=max_new_tokens + 1)
    rep = [e for e in examples for _ in range(k)]
    true = true_rewards(rep, texts).view(len(examples), k)
    rankings = plackett_luce_rankings(true, temperature=label_temperature, generator=g)
    return ComparisonData(list(examples), [texts[i * k:(i + 1) * k] for i in range(len(examples))],
                          seqs.view(len(examples), k, -1), true, rankings, width)


@torch.no_grad()
def pairwise_accuracy(rm: ScalarHeadGPT, comparisons: ComparisonData, *, against: str = "true") -> float:
    """Fraction of pairs the reward model orders like the true reward (``against='true'``; pairs the
    true reward ties are skipped) or like the noisy labels (``against='labels'``; every pair)."""
    if against not in ("true", "labels"):
        raise ValueError(f"against must be 'true' or 'labels', got {against!r}")
    p, k, length = comparisons.ids.shape
    rm.eval()
    s = reward_scores(rm, comparisons.ids.view(p * k, length), comparisons.width).view(p, k)
    win, lose = torch.triu_indices(k, k, offset=1)
    if against == "labels":  # equal scores (often identical responses) count one half
        ranked = s.gather(1, comparisons.rankings)
        d = ranked[:, win] - ranked[:, lose]
        return ((d > 0).float() + 0.5 * (d == 0).float()).mean().item()
    dt = comparisons.true[:, win] - comparisons.true[:, lose]
    ds = s[:, win] - s[:, lose]
    keep = dt != 0
    return ((dt[keep] > 0) == (ds[keep] > 0)).float().mean().item()


def train_reward_model(rm: ScalarHeadGPT, comparisons: ComparisonData, *, steps: int, batch_prompts: int = 32,
                       lr: float = 1e-3, seed: int = 0, loss: Callable = rm_pairwise_loss) -> list[float]:
    """AdamW on ``loss(scores (P, K), rankings (P, K))`` over random batches of prompts; loss per step.

    All K responses of a prompt go in one batch, so each forward pass serves K choose 2 comparisons
    (the paper's reason for ranking K at once rather than labelling pairs).
    """
    if steps < 0 or batch_prompts < 1:
        raise ValueError(f"steps must be >= 0 and batch_prompts >= 1, got {steps}, {batch_prompts}")
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(rm.parameters(), lr=lr, weight_decay=0.0)
    p, k, length = comparisons.ids.shape
    rm.train()
    losses = []
    for _ in range(steps):
        pick = torch.randint(p, (batch_prompts,), generator=g)
        scores = reward_scores(rm, comparisons.ids[pick].view(-1, length), comparisons.width).view(batch_prompts, k)
        value = loss(scores, comparisons.rankings[pick])
        opt.zero_grad()
        value.backward()
        opt.step()
        losses.append(value.item())
    rm.eval()
    return losses


def rm_reward_fn(rm: ScalarHeadGPT, tok: CharTokenizer, *, width: int, length: int, offset: float = 0.0) -> Callable:
    """A batched reward function ``(examples, texts) -> tensor (B,)`` that asks the reward model.

    ``offset`` is subtracted from every score: InstructGPT normalises its reward model so that the
    reference responses score 0 on average (pass the mean score of SFT samples).
    """

    @torch.no_grad()
    def reward(examples: Sequence[Example], texts: Sequence[str]) -> torch.Tensor:
        rm.eval()
        ids = response_ids(tok, [e.prompt for e in examples], texts, width=width, length=length)
        return reward_scores(rm, ids, width, tok.stoi[STOP]) - offset

    return reward


def per_example(fn: Callable[[Example, str], float]) -> Callable:
    """Lift a per-example reward ``fn(example, text) -> float`` to the batched form train_ppo takes."""
    return lambda examples, texts: torch.tensor([float(fn(e, t)) for e, t in zip(examples, texts, strict=True)])


# --- PPO reference pieces ---------------------------------------------------------------------


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over the positions where ``mask`` is 1."""
    return (x * mask).sum() / mask.sum().clamp_min(1.0)


def kl_penalized_rewards(scores: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor,
                         beta: float) -> torch.Tensor:
    """Per-token rewards (B, T): -beta * (log pi - log pi_ref) on every response token, plus the
    reward model's score on the last response token; 0 after the response ends."""
    if logp.shape != ref_logp.shape or logp.shape != mask.shape or scores.shape != logp.shape[:1]:
        raise ValueError(f"need scores (B,), logp/ref_logp/mask (B, T); got {tuple(scores.shape)}, "
                         f"{tuple(logp.shape)}, {tuple(ref_logp.shape)}, {tuple(mask.shape)}")
    rewards = -beta * (logp - ref_logp) * mask
    last = mask.sum(1).long().clamp_min(1) - 1
    rewards = rewards.clone()
    rewards[torch.arange(len(scores)), last] += scores
    return rewards


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, *, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation: ``(advantages, returns)``, both (B, T), 0 after the end.

    delta_t = r_t + gamma V_{t+1} - V_t (V = 0 after the last response token),
    A_t = delta_t + gamma lambda A_{t+1}, returns = A + V.
    """
    if rewards.shape != values.shape or rewards.shape != mask.shape:
        raise ValueError(f"rewards, values and mask must share one (B, T) shape; got {tuple(rewards.shape)}, "
                         f"{tuple(values.shape)}, {tuple(mask.shape)}")
    r, v = rewards * mask, values * mask
    adv = torch.zeros_like(r)
    running = torch.zeros_like(r[:, 0])
    for t in reversed(range(r.shape[1])):
        next_v = v[:, t + 1] if t + 1 < r.shape[1] else torch.zeros_like(running)
        delta = r[:, t] + gamma * next_v - v[:, t]
        running = delta + gamma * lam * running
        adv[:, t] = running
    adv = adv * mask
    return adv, (adv + v) * mask


def ppo_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, values: torch.Tensor,
             returns: torch.Tensor, mask: torch.Tensor, *, clip_eps: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """``(policy_loss, value_loss)``: the negated clipped surrogate and 0.5 (V - R)^2, token means."""
    ratio = torch.exp(logp - old_logp)
    surrogate = torch.minimum(ratio * advantages, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * advantages)
    return -masked_mean(surrogate, mask), 0.5 * masked_mean((values - returns) ** 2, mask)


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, *,
                       clip_eps: float = 0.2) -> torch.Tensor:
    """PPO's clipped value loss: 0.5 * masked mean of max((V - R)^2, (clip(V, V_old - eps, V_old + eps) - R)^2).

    The value model may move at most ``clip_eps`` from the prediction it made when the rollouts were
    collected, as the policy's ratio may move at most eps from 1; the max keeps the larger error, so a
    step that the clip would hide still costs (the pessimistic side, as in the clipped surrogate).
    """
    if not values.shape == old_values.shape == returns.shape == mask.shape:
        raise ValueError(f"values, old_values, returns and mask must share one (B, T) shape; got "
                         f"{tuple(values.shape)}, {tuple(old_values.shape)}, {tuple(returns.shape)}, {tuple(mask.shape)}")
    if not clip_eps > 0:
        raise ValueError(f"clip_eps must be > 0, got {clip_eps}")
    clipped = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)


def adaptive_kl_beta(beta: float, kl: float, *, target: float, horizon: float, n_steps: int) -> float:
    """Ziegler et al. (2019)'s adaptive KL coefficient: the next beta after measuring ``kl``.

    e = clip(kl / target - 1, -0.2, 0.2) and beta <- beta * (1 + e * n_steps / horizon): beta grows when the
    policy is further from the reference than ``target`` (nats per response) and shrinks when it is
    closer, by at most 20 % per ``horizon`` episodes (``n_steps`` episodes were just used; the paper's
    K_beta = 0.1 is ``n_steps / horizon``).
    """
    if not (target > 0 and horizon > 0 and n_steps >= 1 and beta >= 0):
        raise ValueError(f"need target > 0, horizon > 0, n_steps >= 1 and beta >= 0; got {target}, {horizon}, "
                         f"{n_steps}, {beta}")
    error = min(max(float(kl) / target - 1.0, -0.2), 0.2)
    return float(beta) * (1.0 + error * n_steps / horizon)


@torch.no_grad()
def ppo_diagnostics(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor, clip_eps: float) -> tuple[float, float]:
    """``(clipfrac, approx_kl)`` of one PPO update: the fraction of response tokens whose ratio lies outside
    [1 - eps, 1 + eps], and the k3 estimate of KL(pi_old || pi) per token, mean((rho - 1) - log rho)."""
    log_ratio = logp - old_logp
    clipped = ((log_ratio.exp() - 1).abs() > clip_eps).float()
    return masked_mean(clipped, mask).item(), masked_mean(torch.expm1(log_ratio) - log_ratio, mask).item()


def grad_norm(parameters) -> float:
    """The L2 norm of all gradients of ``parameters`` together (0 when none has one)."""
    grads = [p.grad.detach().flatten() for p in parameters if p.grad is not None]
    return torch.cat(grads).norm().item() if grads else 0.0


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked positions (the usual advantage normalisation in PPO)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + eps) * mask


def value_predictions(value_model: ScalarHeadGPT, prompt_ids: torch.Tensor, completions: torch.Tensor) -> torch.Tensor:
    """V(prompt + completion[:t]) for every completion position t: (B, T), aligned with token_logprobs."""
    p = prompt_ids.shape[1]
    seq = torch.cat([prompt_ids, completions], dim=1)
    return value_model(seq[:, :-1])[:, p - 1:]


@torch.no_grad()
def sequence_kl(policy: TinyGPT, ref: TinyGPT, prompt_ids: torch.Tensor, completions: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence KL(pi || pi_ref) in nats (B,), exact over the vocabulary at each sampled prefix.

    sum_t sum_v pi(v|s_t) (log pi(v|s_t) - log pi_ref(v|s_t)): non-negative, 0 when the models agree.
    """
    p = prompt_ids.shape[1]
    seq = torch.cat([prompt_ids, completions], dim=1)[:, :-1]
    lp = torch.log_softmax(policy(seq)[:, p - 1:].float(), -1)
    lq = torch.log_softmax(ref(seq)[:, p - 1:].float(), -1)
    per_token = (lp.exp() * (lp - lq)).sum(-1).clamp_min(0.0)
    return (per_token * mask).sum(1)


@dataclass
class PPOHistory:
    """What :func:`train_ppo` logs once per iteration (means over that iteration's rollouts)."""
    step: list[int] = field(default_factory=list)
    reward: list[float] = field(default_factory=list)       # the reward_fn being optimised (the proxy)
    true_reward: list[float] = field(default_factory=list)  # true_fn on the same rollouts (nan if none)
    kl: list[float] = field(default_factory=list)           # KL(pi || pi_ref) per sequence, nats
    policy_loss: list[float] = field(default_factory=list)
    value_loss: list[float] = field(default_factory=list)
    ptx_loss: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    beta: list[float] = field(default_factory=list)             # the KL coefficient this iteration's rewards used
    clipfrac: list[float] = field(default_factory=list)         # means over the iteration's minibatch updates
    approx_kl: list[float] = field(default_factory=list)        # k3 estimate of KL(pi_old || pi) per token
    value_clipfrac: list[float] = field(default_factory=list)   # tokens whose value moved more than eps (nan: no clip)
    policy_grad_norm: list[float] = field(default_factory=list)  # before clipping
    value_grad_norm: list[float] = field(default_factory=list)
    update_clipfrac: list[float] = field(default_factory=list)   # one entry per minibatch update
    update_approx_kl: list[float] = field(default_factory=list)


def train_ppo(policy: TinyGPT, ref: TinyGPT, reward_fn: Callable, prompts: Sequence[Example], *,
              tok: CharTokenizer, width: int, max_new_tokens: int, steps: int,
              value_model: ScalarHeadGPT | None = None, batch_size: int = 64, ppo_epochs: int = 4,
              minibatch_size: int = 16, lr: float = 1e-3, value_lr: float | None = None, beta: float = 0.05,
              clip_eps: float = 0.2, gamma: float = 1.0, lam: float = 0.95, vf_coef: float = 0.5,
              ptx_coef: float = 0.0, ptx_tokens: torch.Tensor | None = None, ptx_block: int = 32,
              true_fn: Callable | None = None, seed: int = 0, rewards_fn: Callable = kl_penalized_rewards,
              advantages_fn: Callable = gae, loss_fn: Callable = ppo_loss, progress: bool = True,
              callback: Callable[[int, TinyGPT], None] | None = None, value_clip_eps: float | None = None,
              value_loss_fn: Callable = clipped_value_loss, max_grad_norm: float = 1.0,
              value_max_grad_norm: float | None = None, kl_target: float | None = None, kl_horizon: float = 10_000,
              kl_update_fn: Callable = adaptive_kl_beta) -> PPOHistory:
    """PPO with a per-token KL penalty to ``ref`` folded into the reward (InstructGPT's RL step).

    Each of ``steps`` iterations samples one completion for ``batch_size`` random prompts from
    ``prompts`` (``Example`` objects), scores them with ``reward_fn(examples, texts) -> (B,)`` (batched;
    wrap a per-example ``f(example, text) -> float`` with :func:`per_example`), builds per-token rewards
    ``rewards_fn(scores, logp, ref_logp, mask, beta)``, advantages ``advantages_fn(rewards, values, mask,
    gamma=, lam=)`` (whitened), and takes ``ppo_epochs`` passes of minibatch AdamW steps on
    ``policy_loss + vf_coef * value_loss`` from ``loss_fn``. With ``ptx_coef > 0`` each step also adds
    ``ptx_coef`` times the next-token loss on a random window of ``ptx_tokens`` (PPO-ptx).

    The field's additions, all off by default (so the committed sweeps stay what they measured):
    ``value_clip_eps`` replaces ``loss_fn``'s value loss by ``value_loss_fn(values, old_values, returns,
    mask, clip_eps=)`` (:func:`clipped_value_loss`); ``value_max_grad_norm`` clips the value model's
    gradient on its own (the policy's at ``max_grad_norm``) instead of one norm over both, so a large
    value gradient cannot shrink the policy's step; ``kl_target`` makes beta adaptive, updated after each
    iteration by ``kl_update_fn(beta, measured_kl, target=, horizon=kl_horizon, n_steps=batch_size)``.
    Clip fraction and approximate KL (:func:`ppo_diagnostics`) are logged per update and per iteration.

    ``value_model`` defaults to a :class:`ScalarHeadGPT` on a copy of ``ref``. ``policy`` is trained in
    place; ``ref`` stays frozen. Returns a :class:`PPOHistory`; ``true_fn`` (batched, like
    ``reward_fn``) is only logged, never optimised; ``callback(step, policy)`` runs after each iteration
    (evaluate checkpoints there).
    """
    for name, m in (("policy", policy), ("ref", ref)):
        if not isinstance(m, TinyGPT):
            raise TypeError(f"{name} must be a TinyGPT, got {type(m).__name__}")
    if steps < 0 or batch_size < 1 or ppo_epochs < 1 or not 1 <= minibatch_size <= batch_size:
        raise ValueError(f"need steps >= 0, batch_size >= 1, ppo_epochs >= 1 and 1 <= minibatch_size <= "
                         f"batch_size; got {steps}, {batch_size}, {ppo_epochs}, {minibatch_size}")
    if beta < 0 or ptx_coef < 0:
        raise ValueError(f"beta and ptx_coef must be >= 0, got {beta}, {ptx_coef}")
    if (value_clip_eps is not None and not value_clip_eps > 0) or (kl_target is not None and not kl_target > 0):
        raise ValueError(f"value_clip_eps and kl_target must be > 0 (or None), got {value_clip_eps}, {kl_target}")
    if not max_grad_norm > 0 or (value_max_grad_norm is not None and not value_max_grad_norm > 0):
        raise ValueError(f"grad norms must be > 0, got {max_grad_norm}, {value_max_grad_norm}")
    if ptx_coef > 0 and ptx_tokens is None:
        raise ValueError("ptx_coef > 0 needs ptx_tokens (the pretraining corpus as token ids)")
    if not prompts:
        raise ValueError("prompts must be a non-empty sequence of Examples")
    g = torch.Generator().manual_seed(seed)
    value_model = value_model or ScalarHeadGPT(copy.deepcopy(ref))
    if not any(p.requires_grad for p in policy.parameters()):
        raise ValueError("policy has no trainable parameters (requires_grad is False everywhere)")
    ref.eval()
    opt = torch.optim.AdamW([{"params": policy.parameters(), "lr": lr},
                             {"params": value_model.parameters(), "lr": value_lr or lr}], weight_decay=0.0)
    stop_id = tok.stoi[STOP]
    hist = PPOHistory()
    start = time.perf_counter()
    bar = runtime.progress(range(1, steps + 1), desc="PPO", disable=not progress or runtime.headless())
    for step in bar:
        batch = [prompts[i] for i in torch.randint(len(prompts), (batch_size,), generator=g).tolist()]
        ids = encode_prompts(tok, [e.prompt for e in batch], width)
        comps, _ = sample_completions(policy, ids, max_new_tokens, generator=g)
        texts = [tok.decode(row) for row in comps]
        scores = torch.as_tensor(reward_fn(batch, texts), dtype=torch.float32).reshape(-1)
        mask = completion_mask(comps, stop_id)
        with torch.no_grad():
            old_logp = token_logprobs(policy, ids, comps)  # recomputed, not the sampler's: same model
            ref_logp = token_logprobs(ref, ids, comps)
            old_values = value_predictions(value_model, ids, comps)
            rewards = rewards_fn(scores, old_logp, ref_logp, mask, beta)
            adv, returns = advantages_fn(rewards, old_values, mask, gamma=gamma, lam=lam)
            adv = whiten(adv, mask)
            kl = sequence_kl(policy, ref, ids, comps, mask).mean().item()
        policy.train()
        value_model.train()
        logs = {k: [] for k in ("pl", "vl", "px", "clipfrac", "approx_kl", "vclip", "pgn", "vgn")}
        for _ in range(ppo_epochs):
            order = torch.randperm(batch_size, generator=g)
            for lo in range(0, batch_size, minibatch_size):
                mb = order[lo:lo + minibatch_size]
                logp = token_logprobs(policy, ids[mb], comps[mb])
                values = value_predictions(value_model, ids[mb], comps[mb])
                p_loss, v_loss = loss_fn(logp, old_logp[mb], adv[mb], values, returns[mb], mask[mb],
                                         clip_eps=clip_eps)
                if value_clip_eps is not None:
                    v_loss = value_loss_fn(values, old_values[mb], returns[mb], mask[mb], clip_eps=value_clip_eps)
                    with torch.no_grad():
                        moved = ((values - old_values[mb]).abs() > value_clip_eps).float()
                        logs["vclip"].append(masked_mean(moved, mask[mb]).item())
                total = p_loss + vf_coef * v_loss
                if ptx_coef > 0:
                    x, y = data.lm_batch(ptx_tokens, ptx_block, minibatch_size, g)
                    ptx = policy(x, y)[1]
                    total = total + ptx_coef * ptx
                    logs["px"].append(ptx.item())
                opt.zero_grad()
                total.backward()
                logs["pgn"].append(grad_norm(policy.parameters()))
                logs["vgn"].append(grad_norm(value_model.parameters()))
                _clip_gradients(policy, value_model, max_grad_norm, value_max_grad_norm)
                opt.step()
                frac, approx = ppo_diagnostics(logp, old_logp[mb], mask[mb], clip_eps)
                for key, value in (("pl", p_loss.item()), ("vl", v_loss.item()), ("clipfrac", frac),
                                   ("approx_kl", approx)):
                    logs[key].append(value)
        policy.eval()
        value_model.eval()
        mean = lambda xs: sum(xs) / len(xs) if xs else math.nan  # noqa: E731
        hist.step.append(step)
        hist.reward.append(scores.mean().item())
        hist.true_reward.append(float(torch.as_tensor(true_fn(batch, texts)).float().mean()) if true_fn else math.nan)
        hist.kl.append(kl)
        hist.policy_loss.append(mean(logs["pl"]))
        hist.value_loss.append(mean(logs["vl"]))
        hist.ptx_loss.append(mean(logs["px"]))
        hist.seconds.append(time.perf_counter() - start)
        hist.beta.append(beta)
        hist.clipfrac.append(mean(logs["clipfrac"]))
        hist.approx_kl.append(mean(logs["approx_kl"]))
        hist.value_clipfrac.append(mean(logs["vclip"]))
        hist.policy_grad_norm.append(mean(logs["pgn"]))
        hist.value_grad_norm.append(mean(logs["vgn"]))
        hist.update_clipfrac.extend(logs["clipfrac"])
        hist.update_approx_kl.extend(logs["approx_kl"])
        if kl_target is not None:  # the next iteration's rewards use the updated coefficient
            beta = float(kl_update_fn(beta, kl, target=kl_target, horizon=kl_horizon, n_steps=batch_size))
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(reward=f"{hist.reward[-1]:.3f}", kl=f"{kl:.3f}", beta=f"{hist.beta[-1]:.3g}")
        if callback is not None:
            callback(step, policy)
    return hist


def _clip_gradients(policy: nn.Module, value_model: nn.Module, max_norm: float, value_max_norm: float | None) -> None:
    """One norm over both models (``value_max_norm`` None: the course's earlier behaviour), or each its own."""
    if value_max_norm is None:
        torch.nn.utils.clip_grad_norm_(list(policy.parameters()) + list(value_model.parameters()), max_norm)
    else:
        torch.nn.utils.clip_grad_norm_(policy.parameters(), max_norm)
        torch.nn.utils.clip_grad_norm_(value_model.parameters(), value_max_norm)


# --- evaluation -------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_policy(policy: TinyGPT, ref: TinyGPT, tok: CharTokenizer, examples: Sequence[Example], *,
                    width: int, max_new_tokens: int, reward_fn: Callable | None = None, samples: int = 1,
                    seed: int = 1234) -> dict:
    """Mean true reward, proxy reward (if ``reward_fn``) and KL(pi || ref) per sequence on ``examples``,
    from ``samples`` sampled completions per prompt (temperature 1, the distribution RL optimises),
    plus the true reward of the greedy completion."""
    g = torch.Generator().manual_seed(seed)
    rep = [e for e in examples for _ in range(samples)]
    ids = encode_prompts(tok, [e.prompt for e in rep], width)
    comps, _ = sample_completions(policy, ids, max_new_tokens, generator=g)
    texts = [tok.decode(row) for row in comps]
    mask = completion_mask(comps, tok.stoi[STOP])
    out = {"true": true_rewards(rep, texts).mean().item(),
           "kl": sequence_kl(policy, ref, ids, comps, mask).mean().item()}
    if reward_fn is not None:
        out["proxy"] = torch.as_tensor(reward_fn(rep, texts)).float().mean().item()
    gids = encode_prompts(tok, [e.prompt for e in examples], width)
    greedy = policy.generate(gids, max_new_tokens, temperature=0.0)[:, width:]
    out["true_greedy"] = true_rewards(list(examples), [tok.decode(r) for r in greedy]).mean().item()
    return out


@torch.no_grad()
def corpus_loss(model: TinyGPT, tokens: torch.Tensor, *, block: int = 32, batches: int = 8, batch_size: int = 32,
                seed: int = 0) -> float:
    """Mean next-token cross-entropy (nats) on fixed random windows of ``tokens``; exp() is perplexity."""
    was = model.training
    model.eval()
    g = torch.Generator().manual_seed(seed)
    losses = [model(*data.lm_batch(tokens, block, batch_size, g))[1].item() for _ in range(batches)]
    model.train(was)
    return sum(losses) / len(losses)


@torch.no_grad()
def win_rate(model_a: TinyGPT, model_b: TinyGPT, tok: CharTokenizer, examples: Sequence[Example], *,
             width: int, max_new_tokens: int, greedy: bool = False, seed: int = 99) -> float:
    """How often A's response beats B's by the true reward (ties count one half); sampled at
    temperature 1, or greedy with ``greedy=True``."""
    out = []
    for m in (model_a, model_b):
        g = torch.Generator().manual_seed(seed)
        ids = encode_prompts(tok, [e.prompt for e in examples], width)
        if greedy:
            comps = m.generate(ids, max_new_tokens, temperature=0.0)[:, width:]
        else:
            comps, _ = sample_completions(m, ids, max_new_tokens, generator=g)
        out.append(true_rewards(list(examples), [tok.decode(r) for r in comps]))
    a, b = out
    return ((a > b).float() + 0.5 * (a == b).float()).mean().item()
