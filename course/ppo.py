"""PPO with a KL penalty, InstructGPT's RL step (notebook 09; notebook 10 runs it on its arithmetic task).

:func:`train_ppo`: rollouts from the policy, a per-token KL penalty to the SFT model folded into the
reward (:func:`kl_penalized_rewards`), a value model (:class:`course.rlhf.ScalarHeadGPT`, initialised
from the reward model in the paper), GAE (:func:`gae`), the clipped surrogate plus a value loss
(:func:`ppo_loss`), several epochs over minibatches, and optionally PPO-ptx (the pretraining loss mixed
back in). Opt-in, as the field runs PPO: a clipped value loss (:func:`clipped_value_loss`), separate
gradient clipping for the policy and the value model, and an adaptive KL coefficient
(:func:`adaptive_kl_beta`, Ziegler et al. 2019); clip fraction and approximate KL
(:func:`ppo_diagnostics`) are logged on every run.

The reference versions here are what notebook 09's checks compare learners' code against; the trainer
takes the learner's functions as arguments. ``course.rlhf`` re-exports every name, so
``rlhf.train_ppo`` keeps working.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

import torch
from torch import nn

from . import data, runtime
from .data import CharTokenizer, Example
from .models.tinygpt import TinyGPT
from .rl import PAD, STOP, completion_mask, encode_prompts, left_padding_mask, sample_completions, token_logprobs

if TYPE_CHECKING:
    from .rlhf import ScalarHeadGPT


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


def value_predictions(value_model: ScalarHeadGPT, prompt_ids: torch.Tensor, completions: torch.Tensor, *,
                      prompt_mask: torch.Tensor | None = None) -> torch.Tensor:
    """V(prompt + completion[:t]) for every completion position t: (B, T), aligned with token_logprobs.

    ``prompt_mask`` (B, P) bool hides the prompt's left padding (as in :func:`course.rl.token_logprobs`)."""
    p = prompt_ids.shape[1]
    seq = torch.cat([prompt_ids, completions], dim=1)
    return value_model(seq[:, :-1], *_seen(prompt_mask, completions))[:, p - 1:]


def _seen(prompt_mask: torch.Tensor | None, completions: torch.Tensor) -> tuple:
    """``(attention mask over prompt + completion[:-1],)`` for a model call, or () without a prompt mask."""
    if prompt_mask is None:
        return ()
    return (torch.cat([prompt_mask, torch.ones_like(completions[:, :-1], dtype=torch.bool)], dim=1),)


@torch.no_grad()
def sequence_kl(policy: TinyGPT, ref: TinyGPT, prompt_ids: torch.Tensor, completions: torch.Tensor,
                mask: torch.Tensor, *, prompt_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sequence KL(pi || pi_ref) in nats (B,), exact over the vocabulary at each sampled prefix.

    sum_t sum_v pi(v|s_t) (log pi(v|s_t) - log pi_ref(v|s_t)): non-negative, 0 when the models agree.
    ``prompt_mask`` as in :func:`value_predictions`.
    """
    p = prompt_ids.shape[1]
    seq = torch.cat([prompt_ids, completions], dim=1)[:, :-1]
    seen = {"attention_mask": _seen(prompt_mask, completions)[0]} if prompt_mask is not None else {}
    lp = torch.log_softmax(policy(seq, **seen)[:, p - 1:].float(), -1)
    lq = torch.log_softmax(ref(seq, **seen)[:, p - 1:].float(), -1)
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
              kl_update_fn: Callable = adaptive_kl_beta, mask_padding: bool = True) -> PPOHistory:
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

    ``mask_padding`` (default) hides the prompts' left padding from the policy, the reference and the
    value model (sampling, log-probs, values, KL), as notebooks 09 and 10 run it; False attends to it.

    ``value_model`` defaults to a :class:`course.rlhf.ScalarHeadGPT` on a copy of ``ref``. ``policy`` is trained in
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
    if value_model is None:
        from .rlhf import ScalarHeadGPT  # rlhf imports this module, so not at the top

        value_model = ScalarHeadGPT(copy.deepcopy(ref))
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
        seen = left_padding_mask(ids, tok.stoi[PAD]) if mask_padding else None
        comps, _ = sample_completions(policy, ids, max_new_tokens, generator=g, prompt_mask=seen)
        texts = [tok.decode(row) for row in comps]
        scores = torch.as_tensor(reward_fn(batch, texts), dtype=torch.float32).reshape(-1)
        mask = completion_mask(comps, stop_id)
        with torch.no_grad():
            old_logp = token_logprobs(policy, ids, comps, prompt_mask=seen)  # recomputed, not the sampler's
            ref_logp = token_logprobs(ref, ids, comps, prompt_mask=seen)
            old_values = value_predictions(value_model, ids, comps, prompt_mask=seen)
            rewards = rewards_fn(scores, old_logp, ref_logp, mask, beta)
            adv, returns = advantages_fn(rewards, old_values, mask, gamma=gamma, lam=lam)
            adv = whiten(adv, mask)
            kl = sequence_kl(policy, ref, ids, comps, mask, prompt_mask=seen).mean().item()
        policy.train()
        value_model.train()
        logs = {k: [] for k in ("pl", "vl", "px", "clipfrac", "approx_kl", "vclip", "pgn", "vgn")}
        for _ in range(ppo_epochs):
            order = torch.randperm(batch_size, generator=g)
            for lo in range(0, batch_size, minibatch_size):
                mb = order[lo:lo + minibatch_size]
                mb_seen = None if seen is None else seen[mb]
                logp = token_logprobs(policy, ids[mb], comps[mb], prompt_mask=mb_seen)
                values = value_predictions(value_model, ids[mb], comps[mb], prompt_mask=mb_seen)
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
