"""Reinforcement learning on a TinyGPT: the pieces notebooks 09 (InstructGPT) and 10 (GRPO) share.

* the verifiable task (:func:`addition_task`) and a policy sized for it (:func:`tiny_policy`);
* prompts are left-padded to one width so a batch generates in lock step (:func:`encode_prompts`);
* :func:`sample_completions` draws completions and records the sampling log-probs;
* :func:`completion_mask` keeps the tokens up to and including the first stop token;
* :func:`token_logprobs` recomputes log pi(token) for completions, with gradients;
* :func:`sft_loss` / :func:`train_sft`: next-token loss on the response only (prompt masked);
* evaluation: :func:`greedy_accuracy`, :func:`pass_at_k` (unbiased), :func:`majority_correct`, :func:`pass_and_maj`;
* the GRPO reference pieces (:func:`group_advantages`, :func:`process_advantages`, :func:`kl_k3`,
  :func:`grpo_loss`, :func:`prefix_step_rewards`, :func:`rft_examples`) and the training loop
  :func:`train_grpo`, which takes the learner's versions as arguments.

Everything is seeded and CPU-sized: a 2-layer, 64-wide TinyGPT trains here in seconds.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from . import runtime
from .data import CharTokenizer, Example, is_correct
from .models.tinygpt import TinyGPT

PAD = " "  # prompts are left-padded with spaces (the model sees them in SFT too)
STOP = "\n"  # a completion ends at the first newline


def _require_model(model) -> None:
    if not isinstance(model, TinyGPT):
        raise TypeError(f"model must be a TinyGPT, got {type(model).__name__}")


def encode_prompts(tok: CharTokenizer, prompts: Sequence[str], width: int) -> torch.Tensor:
    """(B, width) token ids: each prompt left-padded with spaces to ``width`` characters."""
    if not prompts:
        raise ValueError("prompts must be a non-empty sequence of strings")
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be a positive int, got {width!r}")
    too_long = [p for p in prompts if len(p) > width]
    if too_long:
        raise ValueError(f"width={width} is shorter than prompt {too_long[0]!r}")
    return torch.stack([tok.encode(p.rjust(width, PAD)) for p in prompts])


def padding_mask(prompts: Sequence[str], width: int) -> torch.Tensor:
    """(B, width) bool: False on the left padding :func:`encode_prompts` adds, True on the prompt itself.

    Given to the model as ``attention_mask`` (with True for every generated token after it), the
    padding is neither attended to nor counted in the positions, so a prompt's outputs do not
    depend on how far it was padded.
    """
    if not prompts or any(len(p) > width for p in prompts):
        raise ValueError(f"need a non-empty list of prompts no longer than width={width}")
    return torch.arange(width) >= torch.tensor([width - len(p) for p in prompts]).unsqueeze(1)


def completion_mask(completions: torch.Tensor, stop_id: int) -> torch.Tensor:
    """Float mask (B, T): 1 for tokens up to and including the first ``stop_id``, 0 after it."""
    if completions.dim() != 2:
        raise ValueError(f"completions must be (batch, time), got shape {tuple(completions.shape)}")
    is_stop = (completions == stop_id).long()
    stops_before = torch.cumsum(is_stop, dim=1) - is_stop  # stop tokens strictly before t
    return (stops_before == 0).float()


@torch.no_grad()
def sample_completions(model: TinyGPT, prompt_ids: torch.Tensor, max_new_tokens: int, *,
                       temperature: float = 1.0, generator: torch.Generator | None = None,
                       prompt_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``max_new_tokens`` per prompt: ``(completions (B, T) long, logprobs (B, T) float)``.

    ``logprobs[b, t]`` is log pi(completions[b, t] | prefix) under softmax(logits / temperature),
    the distribution that was sampled from (what PPO/GRPO call pi_old). ``prompt_mask`` (B, P) bool
    (:func:`padding_mask`) hides the left padding from the model; None attends to it, as training does.
    """
    _require_model(model)
    if prompt_ids.dim() != 2 or prompt_ids.dtype != torch.long:
        raise ValueError(f"prompt_ids must be (batch, time) long, got {tuple(prompt_ids.shape)} {prompt_ids.dtype}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (sampling), got {temperature}")
    if prompt_ids.shape[1] + max_new_tokens > model.config.block_size:
        raise ValueError(f"prompt ({prompt_ids.shape[1]}) + max_new_tokens ({max_new_tokens}) exceeds "
                         f"block_size={model.config.block_size}")
    from .models.tinygpt import KVCache

    seen = _check_prompt_mask(prompt_mask, prompt_ids)  # attention mask over every position so far
    was_training = model.training
    model.eval()
    cache = KVCache.for_model(model, prompt_ids.shape[0])
    logits = model(prompt_ids, cache=cache, attention_mask=seen)[:, -1, :]
    tokens, logps = [], []
    for t in range(max_new_tokens):
        logp = torch.log_softmax(logits.float() / temperature, dim=-1)
        nxt = torch.multinomial(logp.exp(), 1, generator=generator)
        tokens.append(nxt)
        logps.append(logp.gather(1, nxt))
        if t + 1 < max_new_tokens:
            if seen is not None:
                seen = torch.cat([seen, torch.ones_like(nxt, dtype=torch.bool)], dim=1)
            logits = model(nxt, cache=cache, attention_mask=seen)[:, -1, :]
    model.train(was_training)
    return torch.cat(tokens, 1), torch.cat(logps, 1)


def _check_prompt_mask(prompt_mask: torch.Tensor | None, prompt_ids: torch.Tensor) -> torch.Tensor | None:
    if prompt_mask is None:
        return None
    if prompt_mask.shape != prompt_ids.shape or prompt_mask.dtype != torch.bool:
        raise ValueError(f"prompt_mask must be bool with the shape of prompt_ids {tuple(prompt_ids.shape)}, got "
                         f"{prompt_mask.dtype} {tuple(prompt_mask.shape)} (see rl.padding_mask)")
    return prompt_mask


def token_logprobs(model: TinyGPT, prompt_ids: torch.Tensor, completions: torch.Tensor, *,
                   temperature: float = 1.0, prompt_mask: torch.Tensor | None = None) -> torch.Tensor:
    """log pi(completions[b, t] | prompt, completions[b, :t]) for every t: (B, T), with gradients.

    ``prompt_mask`` as in :func:`sample_completions`."""
    _require_model(model)
    if prompt_ids.dim() != 2 or completions.dim() != 2 or prompt_ids.shape[0] != completions.shape[0]:
        raise ValueError(f"prompt_ids (B, P) and completions (B, T) must share B; got "
                         f"{tuple(prompt_ids.shape)} and {tuple(completions.shape)}")
    p = prompt_ids.shape[1]
    if p < 1 or completions.shape[1] < 1:
        raise ValueError(f"need at least one prompt token and one completion token, got {p} and {completions.shape[1]}")
    seq = torch.cat([prompt_ids, completions], dim=1)
    seen = _check_prompt_mask(prompt_mask, prompt_ids)
    if seen is not None:
        seen = torch.cat([seen, torch.ones_like(completions[:, :-1], dtype=torch.bool)], dim=1)
    logits = model(seq[:, :-1], attention_mask=seen)[:, p - 1:, :].float() / temperature  # completion tokens
    return torch.log_softmax(logits, dim=-1).gather(2, completions.unsqueeze(-1)).squeeze(-1)


def decode_completions(tok: CharTokenizer, completions: torch.Tensor) -> list[str]:
    """Text of each completion, cut after the first stop token (kept)."""
    if completions.dim() != 2:
        raise ValueError(f"completions must be (batch, time), got shape {tuple(completions.shape)}")
    texts = []
    for row in completions:
        text = tok.decode(row)
        texts.append(text[:text.index(STOP) + 1] if STOP in text else text)
    return texts


# --- the plumbing on whole sequences (notebook 10's exercises: prompt + completion in one row) ----


def response_mask(seq: torch.Tensor, prompt_width: int, stop_id: int) -> torch.Tensor:
    """Float (B, L) over ``seq = left-padded prompt (prompt_width tokens) + completion``: 1 on the
    completion's tokens up to and including its first ``stop_id``, 0 on the prompt (padding
    included) and on whatever follows the stop."""
    if seq.dim() != 2 or not 1 <= prompt_width < seq.shape[1]:
        raise ValueError(f"seq must be (B, L) with 1 <= prompt_width < L, got {tuple(seq.shape)}, {prompt_width}")
    prompt = torch.zeros(seq.shape[0], prompt_width)
    return torch.cat([prompt, completion_mask(seq[:, prompt_width:], stop_id)], dim=1)


def response_logprobs(model: TinyGPT, seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, L) with gradients: ``log pi(seq[b, t] | seq[b, :t])`` where ``mask[b, t]`` is 1, 0 elsewhere.

    The logits at position t predict token t + 1, so token t is scored by the logits at t - 1 (and
    position 0, which nothing predicts, is 0). A row's sum is log pi(response | prompt).
    """
    _require_model(model)
    if seq.dim() != 2 or mask.shape != seq.shape:
        raise ValueError(f"seq (B, L) and mask must share one shape, got {tuple(seq.shape)} and {tuple(mask.shape)}")
    logp = torch.log_softmax(model(seq[:, :-1]).float(), dim=-1).gather(2, seq[:, 1:].unsqueeze(-1)).squeeze(-1)
    return F.pad(logp, (1, 0)) * mask


# --- the verifiable task and the policy notebooks 09 and 10 train -------------------------------


@dataclass(frozen=True)
class Task:
    """Problems with exact answers, split into train and held-out, and the widths to encode them."""
    train: list[Example]
    heldout: list[Example]
    width: int  # prompt width after left padding
    max_new_tokens: int  # longest answer plus the stop token


def addition_task(max_operand: int = 19, n_heldout: int = 100, seed: int = 0) -> Task:
    """All distinct problems ``a+b=`` with ``0 <= a, b <= max_operand`` drawn by
    :func:`course.data.arithmetic_problems`, the first ``n_heldout`` held out."""
    from .data import arithmetic_problems

    if isinstance(max_operand, bool) or not isinstance(max_operand, int) or max_operand < 1:
        raise ValueError(f"max_operand must be a positive int, got {max_operand!r}")
    draws = 8 * (max_operand + 1) ** 2  # enough draws to see (almost) every pair
    problems = list(dict.fromkeys(arithmetic_problems(draws, seed=seed, max_operand=max_operand, ops="+")))
    if not 1 <= n_heldout < len(problems):
        raise ValueError(f"n_heldout must be in [1, {len(problems)}) for max_operand={max_operand}, got {n_heldout}")
    return Task(train=problems[n_heldout:], heldout=problems[:n_heldout],
                width=len(f"{max_operand}+{max_operand}="), max_new_tokens=len(str(2 * max_operand)) + 1)


def tiny_policy(task: Task, seed: int = 0, *, n_layer: int = 2, d_model: int = 64) -> TinyGPT:
    """A freshly initialised TinyGPT just long enough for ``task`` (prompt + answer + stop)."""
    from .models.tinygpt import GPTConfig

    torch.manual_seed(seed)
    block = task.width + task.max_new_tokens
    return TinyGPT(GPTConfig(vocab_size=96, block_size=block, n_layer=n_layer, n_head=4, d_model=d_model))


# --- supervised fine-tuning with the prompt masked -------------------------------------------


def sft_batch(tok: CharTokenizer, examples: Sequence[Example], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (B, L) of ``padded prompt + answer + STOP`` and a loss mask (B, L-1) on targets.

    ``mask[b, t]`` is 1 where target ``ids[b, t+1]`` belongs to the response (answer or stop), 0 on
    the prompt and on right padding.
    """
    if not examples:
        raise ValueError("examples must be non-empty")
    prompts = encode_prompts(tok, [e.prompt for e in examples], width)
    answers = [tok.encode(e.answer + STOP) for e in examples]
    longest = max(len(a) for a in answers)
    ids = torch.full((len(examples), width + longest), tok.stoi[STOP], dtype=torch.long)
    mask = torch.zeros(len(examples), width + longest - 1)
    ids[:, :width] = prompts
    for i, a in enumerate(answers):
        ids[i, width:width + len(a)] = a
        mask[i, width - 1:width - 1 + len(a)] = 1.0
    return ids, mask


def sft_loss(model: TinyGPT, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the response tokens only (``mask`` from :func:`sft_batch`)."""
    _require_model(model)
    if mask.shape != (ids.shape[0], ids.shape[1] - 1):
        raise ValueError(f"mask must have shape (B, L-1) = {(ids.shape[0], ids.shape[1] - 1)}, got {tuple(mask.shape)}")
    logits = model(ids[:, :-1])
    nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1), reduction="none")
    return (nll * mask.reshape(-1)).sum() / mask.sum().clamp_min(1.0)


def train_sft(model: TinyGPT, tok: CharTokenizer, examples: Sequence[Example], *, width: int, steps: int,
              batch_size: int = 64, lr: float = 3e-3, seed: int = 0) -> list[float]:
    """AdamW on :func:`sft_loss` for ``steps`` random minibatches; returns the loss per step."""
    _require_model(model)
    if steps < 0 or batch_size < 1:
        raise ValueError(f"steps must be >= 0 and batch_size >= 1, got {steps}, {batch_size}")
    if not examples:
        raise ValueError("examples must be a non-empty sequence of Examples")
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    losses = []
    for _ in range(steps):
        pick = torch.randint(len(examples), (batch_size,), generator=g).tolist()
        ids, mask = sft_batch(tok, [examples[i] for i in pick], width)
        loss = sft_loss(model, ids, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses


# --- evaluation: accuracy, pass@k, maj@k ------------------------------------------------------


def first_line(text: str) -> str:
    return text.split(STOP, 1)[0].strip()


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k) (Chen et al. 2021)."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def majority_correct(example: Example, completions: Sequence[str]) -> bool:
    """maj@k for one prompt: the most frequent answer (ties: first seen) is correct."""
    if not completions:
        raise ValueError("completions must be non-empty")
    answers = [first_line(c) for c in completions]
    counts = Counter(answers)
    best = max(counts.values())
    winner = next(a for a in answers if counts[a] == best)
    return winner == example.answer


@torch.no_grad()
def greedy_accuracy(model: TinyGPT, tok: CharTokenizer, examples: Sequence[Example], *, width: int,
                    max_new_tokens: int) -> float:
    """Fraction of ``examples`` whose greedy completion is exactly right."""
    ids = encode_prompts(tok, [e.prompt for e in examples], width)
    out = model.generate(ids, max_new_tokens, temperature=0.0)[:, width:]
    texts = [tok.decode(row) for row in out]
    return sum(is_correct(e, t) for e, t in zip(examples, texts, strict=True)) / len(examples)


@torch.no_grad()
def sample_texts(model: TinyGPT, tok: CharTokenizer, examples: Sequence[Example], k: int, *, width: int,
                 max_new_tokens: int, temperature: float = 1.0, seed: int = 0) -> list[list[str]]:
    """``k`` sampled completions (text) for each example."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    g = torch.Generator().manual_seed(seed)
    ids = encode_prompts(tok, [e.prompt for e in examples], width).repeat_interleave(k, 0)
    comps, _ = sample_completions(model, ids, max_new_tokens, temperature=temperature, generator=g)
    texts = [tok.decode(row) for row in comps]
    return [texts[i * k:(i + 1) * k] for i in range(len(examples))]


def pass_and_maj(samples: Sequence[Sequence[str]], examples: Sequence[Example], k: int) -> tuple[float, float]:
    """Mean pass@k (unbiased, from all samples) and maj@k (first k samples) over the examples."""
    p = m = 0.0
    for e, texts in zip(examples, samples, strict=True):
        c = sum(is_correct(e, t) for t in texts)
        p += pass_at_k(len(texts), c, k)
        m += majority_correct(e, texts[:k])
    return p / len(examples), m / len(examples)


# --- GRPO reference pieces ---------------------------------------------------------------------


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


def accumulate_gradients(model: TinyGPT, seq: torch.Tensor, mask: torch.Tensor, old_logp: torch.Tensor,
                         advantages: torch.Tensor, microbatch_size: int, *, aggregation: str = "sequence-mean",
                         clip_eps: float = 0.2) -> float:
    """Add to ``.grad`` the gradient of the full batch's :func:`grpo_loss` (beta 0, ``old_logp`` as
    pi_old, tensors (B, L) as in :func:`response_logprobs`), computed ``microbatch_size`` rows at a
    time; return the full batch's loss. Does not zero ``.grad`` and takes no optimiser step.

    Each microbatch's loss is a mean over its own rows (or tokens), so it is weighted by its share of
    the batch's rows (sequence-mean, constant) or of its tokens (token-mean); the sum is then exactly
    the full batch's loss and gradient.
    """
    if isinstance(microbatch_size, bool) or not isinstance(microbatch_size, int) or microbatch_size < 1:
        raise ValueError(f"microbatch_size must be a positive int, got {microbatch_size!r}")
    total = 0.0
    for rows in torch.arange(seq.shape[0]).split(microbatch_size):
        logp = response_logprobs(model, seq[rows], mask[rows])
        loss = grpo_loss(logp, old_logp[rows], old_logp[rows], advantages[rows], mask[rows], clip_eps=clip_eps,
                         beta=0.0, aggregation=aggregation)
        share = mask[rows].sum() / mask.sum() if aggregation == "token-mean" else len(rows) / seq.shape[0]
        (loss * share).backward()
        total += float(loss.detach() * share)
    return total


def prefix_step_rewards(tok: CharTokenizer, examples: Sequence[Example], completions: torch.Tensor) -> torch.Tensor:
    """Per-token "process" rewards (B, T): 1.0 while the completion so far is a prefix of
    ``answer + STOP`` (every step up to and including t is right), 0.0 from the first wrong token on.

    Each generated character is one step; this plays the role of the paper's process reward model,
    computed exactly because the task is verifiable.
    """
    if completions.dim() != 2 or len(examples) != completions.shape[0]:
        raise ValueError(f"need one example per completion row, got {len(examples)} and {tuple(completions.shape)}")
    n = completions.shape[1]
    target = torch.full_like(completions, -1)
    for i, e in enumerate(examples):
        ids = tok.encode(e.answer + STOP)[:n]
        target[i, :len(ids)] = ids
    return torch.cumprod((completions == target).float(), dim=1)


def rft_examples(examples: Sequence[Example], samples: Sequence[Sequence[str]]) -> list[Example]:
    """Rejection-sampling fine-tuning data: one ``Example(prompt, first line)`` per correct sample."""
    if len(examples) != len(samples):
        raise ValueError(f"need one list of samples per example, got {len(examples)} and {len(samples)}")
    return [Example(e.prompt, first_line(text)) for e, texts in zip(examples, samples, strict=True)
            for text in texts if is_correct(e, text)]


@dataclass
class GRPOHistory:
    step: list[int] = field(default_factory=list)
    heldout_accuracy: list[float] = field(default_factory=list)
    train_reward: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


def train_grpo(policy: TinyGPT, ref: TinyGPT, tok: CharTokenizer, train: Sequence[Example],
               heldout: Sequence[Example], *, width: int, max_new_tokens: int, steps: int,
               prompts_per_step: int = 16, group_size: int = 8, lr: float = 3e-4, clip_eps: float = 0.2,
               beta: float = 0.04, inner_epochs: int = 1, eval_every: int = 10, seed: int = 0,
               supervision: str = "outcome", advantages: Callable = group_advantages,
               process: Callable = process_advantages, loss: Callable = grpo_loss,
               reward: Callable[[Example, str], float] | None = None,
               time_budget_s: float | None = None,
               on_log: Callable[[GRPOHistory], None] | None = None) -> GRPOHistory:
    """GRPO (iterative=False: ``ref`` stays the SFT model): sample ``group_size`` completions per
    prompt, score them, and take ``inner_epochs`` steps on the clipped objective with a KL penalty
    to ``ref`` added to the loss. No value network.

    ``supervision="outcome"`` scores whole completions with ``reward`` (default: exact match) and
    normalises within the group with ``advantages``; ``"process"`` scores every token with
    :func:`prefix_step_rewards` and turns them into per-token advantages with ``process``. Held-out
    greedy accuracy is logged every ``eval_every`` steps (then ``on_log(history)`` is called);
    ``time_budget_s`` stops once that many training seconds (evaluation excluded) are spent.
    """
    _require_model(policy)
    _require_model(ref)
    if steps < 0 or group_size < 2 or prompts_per_step < 1 or inner_epochs < 1 or eval_every < 1:
        raise ValueError(f"need steps >= 0, group_size >= 2, prompts_per_step >= 1, inner_epochs >= 1, "
                         f"eval_every >= 1; got {steps}, {group_size}, {prompts_per_step}, {inner_epochs}, {eval_every}")
    if supervision not in ("outcome", "process"):
        raise ValueError(f"supervision must be 'outcome' or 'process', got {supervision!r}")
    if not train or not heldout:
        raise ValueError("train and heldout must be non-empty")
    reward = reward or (lambda e, text: float(is_correct(e, text)))
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(policy.parameters(), lr=lr, weight_decay=0.0)
    stop_id = tok.stoi[STOP]
    hist = GRPOHistory()
    spent = 0.0  # training seconds, evaluation excluded

    def log(step, r, kl):
        hist.step.append(step)
        hist.heldout_accuracy.append(greedy_accuracy(policy, tok, heldout, width=width,
                                                     max_new_tokens=max_new_tokens))
        hist.train_reward.append(r)
        hist.kl.append(kl)
        hist.seconds.append(spent)
        if on_log is not None:
            on_log(hist)

    log(0, float("nan"), 0.0)
    for step in runtime.progress(range(1, steps + 1), desc="GRPO"):
        start = time.perf_counter()
        batch = [train[i] for i in torch.randint(len(train), (prompts_per_step,), generator=g).tolist()]
        rows = [e for e in batch for _ in range(group_size)]
        ids = encode_prompts(tok, [e.prompt for e in batch], width).repeat_interleave(group_size, 0)
        comps, old_logp = sample_completions(policy, ids, max_new_tokens, generator=g)
        mask = completion_mask(comps, stop_id)
        texts = [tok.decode(row) for row in comps]
        r = torch.tensor([reward(e, t) for e, t in zip(rows, texts, strict=True)], dtype=torch.float32)
        if supervision == "outcome":
            adv = advantages(r.view(prompts_per_step, group_size)).reshape(-1, 1).expand_as(old_logp)
        else:
            steps_r = prefix_step_rewards(tok, rows, comps)
            shape = (prompts_per_step, group_size, comps.shape[1])
            ends = torch.arange(comps.shape[1]).expand(shape)
            adv = process(steps_r.view(shape), ends, mask.bool().view(shape), comps.shape[1]).reshape(comps.shape)
        with torch.no_grad():
            ref_logp = token_logprobs(ref, ids, comps)
        policy.train()
        for _ in range(inner_epochs):
            logp = token_logprobs(policy, ids, comps)
            value = loss(logp, old_logp, ref_logp, adv, mask, clip_eps=clip_eps, beta=beta)
            opt.zero_grad()
            value.backward()
            opt.step()
        policy.eval()
        spent += time.perf_counter() - start
        out_of_time = time_budget_s is not None and spent >= time_budget_s
        if step % eval_every == 0 or step == steps or out_of_time:
            with torch.no_grad():
                kl = ((kl_k3(token_logprobs(policy, ids, comps), ref_logp) * mask).sum() / mask.sum()).item()
            log(step, r.mean().item(), kl)
        if out_of_time:
            break
    return hist
