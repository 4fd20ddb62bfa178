"""Reinforcement learning on a TinyGPT: the pieces notebooks 09 (InstructGPT) and 10 (GRPO) share.

* the verifiable task (:func:`addition_task`) and a policy sized for it (:func:`tiny_policy`);
* prompts are left-padded to one width so a batch generates in lock step (:func:`encode_prompts`); the
  training and evaluation loops hide that padding from the model (:func:`left_padding_mask`, TinyGPT's
  ``attention_mask``), so a prompt's log-probs, samples and rewards do not depend on how far it was padded;
* :func:`sample_completions` draws completions and records the sampling log-probs;
* :func:`completion_mask` keeps the tokens up to and including the first stop token;
* :func:`token_logprobs` recomputes log pi(token) for completions, with gradients;
* :func:`sft_loss` / :func:`train_sft`: next-token loss on the response only (prompt masked);
* evaluation: :func:`greedy_accuracy`, :func:`pass_at_k` (unbiased), :func:`majority_correct`, :func:`pass_and_maj`;
* the GRPO reference pieces (:func:`group_advantages`, :func:`process_advantages`, :func:`kl_k3`,
  :func:`aggregate`, :func:`grpo_loss`, all in :mod:`course.grpo_objectives` and re-exported here;
  :func:`prefix_step_rewards`, :func:`rft_examples`) and the training loop :func:`train_grpo`, which
  takes the learner's versions as arguments.

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
from .grpo_objectives import (  # noqa: F401  (re-exported: notebooks and checks call rl.grpo_loss & co.)
    AGGREGATIONS, aggregate, group_advantages, grpo_loss, kl_k3, process_advantages,
)
from .models.tinygpt import TinyGPT

PAD = " "  # prompts are left-padded with spaces; training and evaluation hide them (left_padding_mask)
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


def left_padding_mask(ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """(B, L) bool: False on each row's leading ``pad_id`` tokens, True from its first other token on.

    For rows that start with a left-padded prompt (:func:`encode_prompts`; no course prompt starts with
    a space) this equals :func:`padding_mask` over the prompt, then True on whatever follows it (the
    completion, an answer, right padding), so it can be read off any sequence the loops build.
    """
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype != torch.long:
        raise ValueError(f"ids must be a (batch, time) long tensor, got {getattr(ids, 'shape', ids)!r:.60}")
    return torch.cumsum((ids != pad_id).long(), dim=1) > 0


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
    (:func:`padding_mask` or :func:`left_padding_mask`) hides the left padding from the model, as the
    training loops here do; None lets the model attend to it (notebook 10, section 2.2, shows the difference).
    """
    _require_model(model)
    if prompt_ids.dim() != 2 or prompt_ids.dtype != torch.long:
        raise ValueError(f"prompt_ids must be (batch, time) long, got {tuple(prompt_ids.shape)} {prompt_ids.dtype}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (sampling), got {temperature}")

    def draw(logits):
        logp = torch.log_softmax(logits.float() / temperature, dim=-1)
        nxt = torch.multinomial(logp.exp(), 1, generator=generator)
        return nxt, logp.gather(1, nxt)

    return _decode(model, prompt_ids, max_new_tokens, draw, prompt_mask)


@torch.no_grad()
def greedy_completions(model: TinyGPT, prompt_ids: torch.Tensor, max_new_tokens: int, *,
                       prompt_mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, max_new_tokens) greedy tokens (argmax at every step); ``prompt_mask`` as in :func:`sample_completions`.

    Without a mask it gives the tokens of ``model.generate(prompt_ids, n, temperature=0)[:, P:]``."""
    _require_model(model)
    if prompt_ids.dim() != 2 or prompt_ids.dtype != torch.long:
        raise ValueError(f"prompt_ids must be (batch, time) long, got {tuple(prompt_ids.shape)} {prompt_ids.dtype}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")

    def argmax(logits):
        nxt = logits.argmax(dim=-1, keepdim=True)
        return nxt, torch.zeros(nxt.shape)

    return _decode(model, prompt_ids, max_new_tokens, argmax, prompt_mask)[0]


def _decode(model: TinyGPT, prompt_ids: torch.Tensor, max_new_tokens: int, pick: Callable,
            prompt_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per step with a KV cache: ``pick(logits (B, V)) -> (token (B, 1), log-prob (B, 1))``."""
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
        nxt, logp = pick(logits)
        tokens.append(nxt)
        logps.append(logp)
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

    ``prompt_mask`` as in :func:`sample_completions` (the training loops pass one)."""
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


def response_logprobs(model: TinyGPT, seq: torch.Tensor, mask: torch.Tensor, *,
                      attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, L) with gradients: ``log pi(seq[b, t] | seq[b, :t])`` where ``mask[b, t]`` is 1, 0 elsewhere.

    The logits at position t predict token t + 1, so token t is scored by the logits at t - 1 (and
    position 0, which nothing predicts, is 0). A row's sum is log pi(response | prompt).
    ``attention_mask`` (B, L) bool (:func:`left_padding_mask`) hides the prompt's padding.
    """
    _require_model(model)
    if seq.dim() != 2 or mask.shape != seq.shape:
        raise ValueError(f"seq (B, L) and mask must share one shape, got {tuple(seq.shape)} and {tuple(mask.shape)}")
    seen = None if attention_mask is None else _check_prompt_mask(attention_mask, seq)[:, :-1]
    logits = model(seq[:, :-1], attention_mask=seen).float()
    logp = torch.log_softmax(logits, dim=-1).gather(2, seq[:, 1:].unsqueeze(-1)).squeeze(-1)
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


def sft_loss(model: TinyGPT, ids: torch.Tensor, mask: torch.Tensor, *,
             attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy over the response tokens only (``mask`` from :func:`sft_batch`).

    ``attention_mask`` (B, L) bool (:func:`left_padding_mask` of ``ids``) hides the prompt's left
    padding, as :func:`train_sft` and notebook 09's exercise do; None lets the model attend to it."""
    _require_model(model)
    if mask.shape != (ids.shape[0], ids.shape[1] - 1):
        raise ValueError(f"mask must have shape (B, L-1) = {(ids.shape[0], ids.shape[1] - 1)}, got {tuple(mask.shape)}")
    seen = None if attention_mask is None else _check_prompt_mask(attention_mask, ids)[:, :-1]
    logits = model(ids[:, :-1], attention_mask=seen)
    nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1), reduction="none")
    return (nll * mask.reshape(-1)).sum() / mask.sum().clamp_min(1.0)


def train_sft(model: TinyGPT, tok: CharTokenizer, examples: Sequence[Example], *, width: int, steps: int,
              batch_size: int = 64, lr: float = 3e-3, seed: int = 0, mask_padding: bool = True,
              eval_every: int | None = None,
              on_eval: Callable[[int, TinyGPT, float], None] | None = None) -> list[float]:
    """AdamW on :func:`sft_loss` for ``steps`` random minibatches; returns the loss per step.

    ``mask_padding`` (default) hides the prompts' left padding from the model; False attends to it.
    With ``eval_every``, ``on_eval(step, model, training_seconds)`` is called every that many steps and
    after the last, in eval mode; the one optimiser carries on across evaluations (the scripts of
    notebook 10 compare methods this way).
    """
    _require_model(model)
    if steps < 0 or batch_size < 1:
        raise ValueError(f"steps must be >= 0 and batch_size >= 1, got {steps}, {batch_size}")
    if not examples:
        raise ValueError("examples must be a non-empty sequence of Examples")
    if (eval_every is None) != (on_eval is None) or (eval_every is not None and eval_every < 1):
        raise ValueError(f"give both eval_every (>= 1) and on_eval, or neither; got {eval_every}, {on_eval}")
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    losses, spent = [], 0.0
    for step in range(1, steps + 1):
        start = time.perf_counter()
        model.train()
        pick = torch.randint(len(examples), (batch_size,), generator=g).tolist()
        ids, mask = sft_batch(tok, [examples[i] for i in pick], width)
        seen = left_padding_mask(ids, tok.stoi[PAD]) if mask_padding else None
        loss = sft_loss(model, ids, mask, attention_mask=seen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        model.eval()
        spent += time.perf_counter() - start
        if on_eval is not None and (step % eval_every == 0 or step == steps):
            on_eval(step, model, spent)
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
                    max_new_tokens: int, mask_padding: bool = True) -> float:
    """Fraction of ``examples`` whose greedy completion is exactly right (padding hidden unless
    ``mask_padding=False``)."""
    prompts = [e.prompt for e in examples]
    ids = encode_prompts(tok, prompts, width)
    out = greedy_completions(model, ids, max_new_tokens,
                             prompt_mask=padding_mask(prompts, width) if mask_padding else None)
    texts = [tok.decode(row) for row in out]
    return sum(is_correct(e, t) for e, t in zip(examples, texts, strict=True)) / len(examples)


@torch.no_grad()
def sample_texts(model: TinyGPT, tok: CharTokenizer, examples: Sequence[Example], k: int, *, width: int,
                 max_new_tokens: int, temperature: float = 1.0, seed: int = 0,
                 mask_padding: bool = True) -> list[list[str]]:
    """``k`` sampled completions (text) for each example (padding hidden unless ``mask_padding=False``)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    g = torch.Generator().manual_seed(seed)
    prompts = [e.prompt for e in examples for _ in range(k)]
    ids = encode_prompts(tok, prompts, width)
    comps, _ = sample_completions(model, ids, max_new_tokens, temperature=temperature, generator=g,
                                  prompt_mask=padding_mask(prompts, width) if mask_padding else None)
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
               time_budget_s: float | None = None, mask_padding: bool = True,
               on_log: Callable[[GRPOHistory], None] | None = None) -> GRPOHistory:
    """GRPO (iterative=False: ``ref`` stays the SFT model): sample ``group_size`` completions per
    prompt, score them, and take ``inner_epochs`` steps on the clipped objective with a KL penalty
    to ``ref`` added to the loss. No value network.

    ``supervision="outcome"`` scores whole completions with ``reward`` (default: exact match) and
    normalises within the group with ``advantages``; ``"process"`` scores every token with
    :func:`prefix_step_rewards` and turns them into per-token advantages with ``process``. Held-out
    greedy accuracy is logged every ``eval_every`` steps (then ``on_log(history)`` is called);
    ``time_budget_s`` stops once that many training seconds (evaluation excluded) are spent.
    ``mask_padding`` (default) hides the prompts' left padding from both models when sampling, scoring
    log-probs and evaluating; False attends to it.
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
                                                     max_new_tokens=max_new_tokens, mask_padding=mask_padding))
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
        seen = left_padding_mask(ids, tok.stoi[PAD]) if mask_padding else None
        comps, old_logp = sample_completions(policy, ids, max_new_tokens, generator=g, prompt_mask=seen)
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
            ref_logp = token_logprobs(ref, ids, comps, prompt_mask=seen)
        policy.train()
        for _ in range(inner_epochs):
            logp = token_logprobs(policy, ids, comps, prompt_mask=seen)
            value = loss(logp, old_logp, ref_logp, adv, mask, clip_eps=clip_eps, beta=beta)
            opt.zero_grad()
            value.backward()
            opt.step()
        policy.eval()
        spent += time.perf_counter() - start
        out_of_time = time_budget_s is not None and spent >= time_budget_s
        if step % eval_every == 0 or step == steps or out_of_time:
            with torch.no_grad():
                logp = token_logprobs(policy, ids, comps, prompt_mask=seen)
                kl = ((kl_k3(logp, ref_logp) * mask).sum() / mask.sum()).item()
            log(step, r.mean().item(), kl)
        if out_of_time:
            break
    return hist
