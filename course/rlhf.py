"""InstructGPT on a TinyGPT (notebook 09): a preference world, a reward model, PPO with a KL penalty.

* **The world.** Instructions on short letter strings (``copy:cab|``, ``rev:cab|``, ``sort:cab|``)
  with a hidden *true* reward that gives partial credit (:func:`true_reward`). "Labelers" rank K
  completions of a prompt by Plackett-Luce sampling from that reward (:func:`plackett_luce_rankings`),
  whose pairwise marginals are exactly Bradley-Terry: P(i above j) = sigmoid((r_i - r_j) / temperature).
* **The reward model** (:class:`ScalarHeadGPT`): a TinyGPT body with a scalar head whose outputs are
  summed over the response tokens (:func:`reward_scores`; InstructGPT reads one scalar at the last token,
  which a 2-layer model learns less easily), trained on every one of the K choose 2 pairs of each
  ranking (:func:`rm_pairwise_loss`).
* **PPO** (:func:`train_ppo` and its pieces) lives in :mod:`course.ppo` and is re-exported here.
* **Padding.** Prompts are left-padded with spaces (:func:`course.rl.encode_prompts`). Every function
  here that runs a model takes ``mask_padding`` (or, on raw ids, an ``attention_mask``): True, the
  default, hides that padding from the model (:func:`course.rl.left_padding_mask`), so a prompt's
  samples, scores and log-probs do not depend on how far it was padded (issue 19 item 4); False attends
  to it, as notebook 09's runs did before they were re-run with the mask. Notebook 10's loops hide it too.

The reference versions here are what the notebook's checks compare learners' code against; the
trainer takes the learner's functions as arguments. Everything is seeded and CPU-sized.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import data
from .data import CharTokenizer, Example
from .models.tinygpt import TinyGPT
from .ppo import (  # noqa: F401  (PPO lives in course/ppo.py; re-exported: rlhf.train_ppo & co. keep working)
    PPOHistory, adaptive_kl_beta, clipped_value_loss, gae, grad_norm, kl_penalized_rewards, masked_mean,
    ppo_diagnostics, ppo_loss, sequence_kl, train_ppo, value_predictions, whiten,
)
from .rl import (
    PAD, STOP, completion_mask, encode_prompts, greedy_completions, left_padding_mask, padding_mask,
    sample_completions,
)

TASKS = ("copy", "rev", "sort")
ALPHABET = "abcdef"
PAD_ID = CharTokenizer.alphabet.index(PAD)  # one fixed alphabet: the padding's id for functions without a tokenizer


def response_attention(ids: torch.Tensor, mask_padding: bool) -> torch.Tensor | None:
    """The ``attention_mask`` for sequences from :func:`response_ids`: False on the prompt's left padding
    (:func:`course.rl.left_padding_mask`) with ``mask_padding``, else None (the model attends to it)."""
    return left_padding_mask(ids, PAD_ID) if mask_padding else None


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

    def forward(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) scalars: the head applied to the features at every position (``attention_mask``: see
        :meth:`course.models.tinygpt.TinyGPT.features`; None attends to every token)."""
        if attention_mask is None:
            return self.head(hidden_states(self.body, idx)).squeeze(-1)
        return self.head(self.body.features(idx, attention_mask=attention_mask)).squeeze(-1)


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


def reward_scores(rm: ScalarHeadGPT, ids: torch.Tensor, width: int, stop_id: int = 0, *,
                  attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The reward model's score (B,) of each sequence from :func:`response_ids`: the scalar head summed
    over the response tokens (after the ``width`` prompt positions, up to and including the first stop).
    ``attention_mask`` (B, L) bool (:func:`response_attention`) hides the prompt's left padding; None
    attends to it.

    (InstructGPT reads one scalar at the last token. A 2-layer model learns the partial-credit reward
    much more easily as a sum of per-token judgements; it is still one number per response.)
    """
    if not isinstance(rm, ScalarHeadGPT):
        raise TypeError(f"rm must be a ScalarHeadGPT, got {type(rm).__name__}")
    if not 0 < width < ids.shape[1]:
        raise ValueError(f"width must be in (0, {ids.shape[1]}) for ids of shape {tuple(ids.shape)}, got {width}")
    mask = completion_mask(ids[:, width:], stop_id)
    return (rm(ids, attention_mask)[:, width:] * mask).sum(1)


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
                        label_temperature: float = 0.1, seed: int = 0, mask_padding: bool = True) -> ComparisonData:
    """Sample ``k`` responses per prompt from ``policy`` (``mask_padding``: with the prompts' left padding
    hidden from it) and have noisy labelers rank them."""
    if k < 2:
        raise ValueError(f"k must be >= 2 to make comparisons, got {k}")
    g = torch.Generator().manual_seed(seed)
    ids = encode_prompts(tok, [e.prompt for e in examples], width).repeat_interleave(k, 0)
    seen = left_padding_mask(ids, tok.stoi[PAD]) if mask_padding else None
    comps, _ = sample_completions(policy, ids, max_new_tokens, temperature=temperature, generator=g,
                                  prompt_mask=seen)
    texts = [tok.decode(row) for row in comps]
    prompts = [e.prompt for e in examples for _ in range(k)]
    seqs = response_ids(tok, prompts, texts, width=width, length=max_new_tokens + 1)
    rep = [e for e in examples for _ in range(k)]
    true = true_rewards(rep, texts).view(len(examples), k)
    rankings = plackett_luce_rankings(true, temperature=label_temperature, generator=g)
    return ComparisonData(list(examples), [texts[i * k:(i + 1) * k] for i in range(len(examples))],
                          seqs.view(len(examples), k, -1), true, rankings, width)


@torch.no_grad()
def pairwise_accuracy(rm: ScalarHeadGPT, comparisons: ComparisonData, *, against: str = "true",
                      mask_padding: bool = True) -> float:
    """Fraction of pairs the reward model orders like the true reward (``against='true'``; pairs the
    true reward ties are skipped) or like the noisy labels (``against='labels'``; every pair).
    ``mask_padding`` scores with the prompts' left padding hidden (as the reward model was trained)."""
    if against not in ("true", "labels"):
        raise ValueError(f"against must be 'true' or 'labels', got {against!r}")
    k = comparisons.ids.shape[1]
    rm.eval()
    s = comparison_scores(rm, comparisons, mask_padding=mask_padding)
    win, lose = torch.triu_indices(k, k, offset=1)
    if against == "labels":  # equal scores (often identical responses) count one half
        ranked = s.gather(1, comparisons.rankings)
        d = ranked[:, win] - ranked[:, lose]
        return ((d > 0).float() + 0.5 * (d == 0).float()).mean().item()
    dt = comparisons.true[:, win] - comparisons.true[:, lose]
    ds = s[:, win] - s[:, lose]
    keep = dt != 0
    return ((dt[keep] > 0) == (ds[keep] > 0)).float().mean().item()


def comparison_scores(rm: ScalarHeadGPT, comparisons: ComparisonData, *, mask_padding: bool = True) -> torch.Tensor:
    """The reward model's scores (P, K) of every compared response (``mask_padding``: padding hidden)."""
    p, k, length = comparisons.ids.shape
    flat = comparisons.ids.view(p * k, length)
    return reward_scores(rm, flat, comparisons.width, attention_mask=response_attention(flat, mask_padding)).view(p, k)


def train_reward_model(rm: ScalarHeadGPT, comparisons: ComparisonData, *, steps: int, batch_prompts: int = 32,
                       lr: float = 1e-3, seed: int = 0, loss: Callable = rm_pairwise_loss,
                       mask_padding: bool = True) -> list[float]:
    """AdamW on ``loss(scores (P, K), rankings (P, K))`` over random batches of prompts; loss per step.

    All K responses of a prompt go in one batch, so each forward pass serves K choose 2 comparisons
    (the paper's reason for ranking K at once rather than labelling pairs). ``mask_padding`` hides the
    prompts' left padding from the reward model.
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
        flat = comparisons.ids[pick].view(-1, length)
        scores = reward_scores(rm, flat, comparisons.width,
                               attention_mask=response_attention(flat, mask_padding)).view(batch_prompts, k)
        value = loss(scores, comparisons.rankings[pick])
        opt.zero_grad()
        value.backward()
        opt.step()
        losses.append(value.item())
    rm.eval()
    return losses


def rm_reward_fn(rm: ScalarHeadGPT, tok: CharTokenizer, *, width: int, length: int, offset: float = 0.0,
                 mask_padding: bool = True) -> Callable:
    """A batched reward function ``(examples, texts) -> tensor (B,)`` that asks the reward model.

    ``offset`` is subtracted from every score: InstructGPT normalises its reward model so that the
    reference responses score 0 on average (pass the mean score of SFT samples). ``mask_padding``
    hides the prompts' left padding from the reward model (use what it was trained with).
    """

    @torch.no_grad()
    def reward(examples: Sequence[Example], texts: Sequence[str]) -> torch.Tensor:
        rm.eval()
        ids = response_ids(tok, [e.prompt for e in examples], texts, width=width, length=length)
        seen = response_attention(ids, mask_padding)
        return reward_scores(rm, ids, width, tok.stoi[STOP], attention_mask=seen) - offset

    return reward


@dataclass
class PreferenceWorld:
    """One seed of notebook 09's setup: the SFT policy, its ranked comparisons (train and held-out), the
    reward model trained on them, its held-out pairwise accuracy, and the proxy reward PPO optimises."""
    sft: TinyGPT
    comparisons: ComparisonData
    held_comparisons: ComparisonData
    rm: ScalarHeadGPT
    rm_heldout_accuracy: float
    proxy: Callable
    mask_padding: bool = True  # whether every step above hid the prompts' left padding


def build_preference_world(base: TinyGPT, tok: CharTokenizer, *, sft_prompts: Sequence[Example],
                           rm_prompts: Sequence[Example], heldout: Sequence[Example], width: int,
                           max_new_tokens: int, seed: int, sft_steps: int = 150, rm_steps: int = 250,
                           k: int = 4, label_temperature: float = 0.05,
                           mask_padding: bool = True) -> PreferenceWorld:
    """Notebook 09's recipe, shared by its scripts (sweep_ppo_kl.py, dpo_vs_ppo.py): SFT of ``base`` (in
    place) on the demonstrations, ``k`` sampled responses per prompt ranked by noisy labelers, a reward
    model (a copy of the SFT model with a scalar head) trained on all k choose 2 pairs, normalised so
    that the SFT responses score 0 on average (InstructGPT's offset).

    ``mask_padding`` hides the prompts' left padding from every model at every step (SFT, sampling the
    comparisons, the reward model's training, accuracy, offset and proxy), as notebook 09 and its scripts
    run it; False attends to it at every step (see the module docstring).
    """
    from .rl import train_sft

    train_sft(base, tok, sft_prompts, width=width, steps=sft_steps, batch_size=32, lr=3e-3, seed=seed,
              mask_padding=mask_padding)
    sft = base
    comparisons = collect_comparisons(sft, tok, rm_prompts, k=k, width=width, max_new_tokens=max_new_tokens,
                                      seed=3 + 100 * seed, label_temperature=label_temperature,
                                      mask_padding=mask_padding)
    held = collect_comparisons(sft, tok, heldout, k=k, width=width, max_new_tokens=max_new_tokens,
                               seed=4 + 100 * seed, label_temperature=label_temperature, mask_padding=mask_padding)
    rm = ScalarHeadGPT(copy.deepcopy(sft))
    train_reward_model(rm, comparisons, steps=rm_steps, batch_prompts=32, lr=1e-3, seed=seed, mask_padding=mask_padding)
    accuracy = pairwise_accuracy(rm, held, mask_padding=mask_padding)
    with torch.no_grad():
        offset = comparison_scores(rm, comparisons, mask_padding=mask_padding).mean().item()
    proxy = rm_reward_fn(rm, tok, width=width, length=max_new_tokens + 1, offset=offset, mask_padding=mask_padding)
    return PreferenceWorld(sft, comparisons, held, rm, accuracy, proxy, mask_padding)


def per_example(fn: Callable[[Example, str], float]) -> Callable:
    """Lift a per-example reward ``fn(example, text) -> float`` to the batched form train_ppo takes."""
    return lambda examples, texts: torch.tensor([float(fn(e, t)) for e, t in zip(examples, texts, strict=True)])


# --- evaluation -------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_policy(policy: TinyGPT, ref: TinyGPT, tok: CharTokenizer, examples: Sequence[Example], *,
                    width: int, max_new_tokens: int, reward_fn: Callable | None = None, samples: int = 1,
                    seed: int = 1234, mask_padding: bool = True) -> dict:
    """Mean true reward, proxy reward (if ``reward_fn``) and KL(pi || ref) per sequence on ``examples``,
    from ``samples`` sampled completions per prompt (temperature 1, the distribution RL optimises),
    plus the true reward of the greedy completion. ``mask_padding`` hides the prompts' left padding from
    ``policy`` and ``ref`` (``reward_fn`` decides for itself: :func:`rm_reward_fn`)."""
    g = torch.Generator().manual_seed(seed)
    rep = [e for e in examples for _ in range(samples)]
    ids, seen = _prompts(tok, rep, width, mask_padding)
    comps, _ = sample_completions(policy, ids, max_new_tokens, generator=g, prompt_mask=seen)
    texts = [tok.decode(row) for row in comps]
    mask = completion_mask(comps, tok.stoi[STOP])
    out = {"true": true_rewards(rep, texts).mean().item(),
           "kl": sequence_kl(policy, ref, ids, comps, mask, prompt_mask=seen).mean().item()}
    if reward_fn is not None:
        out["proxy"] = torch.as_tensor(reward_fn(rep, texts)).float().mean().item()
    gids, gseen = _prompts(tok, examples, width, mask_padding)
    greedy = greedy_completions(policy, gids, max_new_tokens, prompt_mask=gseen)  # unmasked: model.generate's tokens
    out["true_greedy"] = true_rewards(list(examples), [tok.decode(r) for r in greedy]).mean().item()
    return out


def _prompts(tok: CharTokenizer, examples: Sequence[Example], width: int,
             mask_padding: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The examples' left-padded prompt ids (B, width) and, with ``mask_padding``, their padding mask."""
    prompts = [e.prompt for e in examples]
    return encode_prompts(tok, prompts, width), padding_mask(prompts, width) if mask_padding else None


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
             width: int, max_new_tokens: int, greedy: bool = False, seed: int = 99,
             mask_padding: bool = True) -> float:
    """How often A's response beats B's by the true reward (ties count one half); sampled at
    temperature 1, or greedy with ``greedy=True``; ``mask_padding`` hides the prompts' left padding."""
    out = []
    ids, seen = _prompts(tok, examples, width, mask_padding)
    for m in (model_a, model_b):
        g = torch.Generator().manual_seed(seed)
        if greedy:
            comps = greedy_completions(m, ids, max_new_tokens, prompt_mask=seen)
        else:
            comps, _ = sample_completions(m, ids, max_new_tokens, generator=g, prompt_mask=seen)
        out.append(true_rewards(list(examples), [tok.decode(r) for r in comps]))
    a, b = out
    return ((a > b).float() + 0.5 * (a == b).float()).mean().item()
