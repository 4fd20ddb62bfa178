"""Offline text and synthetic tasks. Nothing here downloads anything.

* :func:`corpus`: ~465k characters of real English prose about Python: the help topics of
  CPython's ``pydoc_data.topics``, snapshotted into the package so every Python version reads the
  same text (``scripts/snapshot_corpus.py`` made the snapshot).
* :class:`CharTokenizer`: a fixed vocabulary of printable ASCII plus newline, so weights trained
  once fit every learner's machine.
* :class:`BPETokenizer`: a small byte-pair encoder trained on the corpus in seconds.
* Synthetic tasks with verifiable answers (arithmetic, copy, sort) for later notebooks.
"""

from __future__ import annotations

import functools
import gzip
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

ASSETS = Path(__file__).resolve().parent / "assets"

# Typographic characters in the corpus mapped to ASCII, so the vocabulary stays fixed.
_ASCII_FOLD = {"–": "-", "—": "-", "‘": "'", "’": "'", "“": '"', "”": '"', "…": "...", "°": " degrees",
               "ß": "ss"}


@functools.lru_cache(maxsize=1)
def corpus() -> str:
    """The course corpus: CPython's help topics as plain ASCII text (465k characters)."""
    with gzip.open(ASSETS / "pydoc_topics.txt.gz", "rt", encoding="utf-8") as f:
        text = f.read()
    for fancy, plain in _ASCII_FOLD.items():
        text = text.replace(fancy, plain)
    return text


def train_val_split(tokens: torch.Tensor, val_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a 1-D token tensor into a training head and a validation tail."""
    if tokens.dim() != 1:
        raise ValueError(f"tokens must be 1-D, got shape {tuple(tokens.shape)}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    cut = int(len(tokens) * (1 - val_fraction))
    return tokens[:cut], tokens[cut:]


def lm_batch(tokens: torch.Tensor, block_size: int, batch_size: int,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of ``block_size`` tokens: inputs ``x`` and next-token targets ``y``."""
    if tokens.dim() != 1:
        raise ValueError(f"tokens must be 1-D, got shape {tuple(tokens.shape)}")
    if block_size < 1 or batch_size < 1:
        raise ValueError(f"block_size and batch_size must be >= 1, got {block_size}, {batch_size}")
    if len(tokens) <= block_size:
        raise ValueError(f"need more than block_size={block_size} tokens, got {len(tokens)}")
    starts = torch.randint(len(tokens) - block_size, (batch_size,), generator=generator)
    x = torch.stack([tokens[s:s + block_size] for s in starts.tolist()])
    y = torch.stack([tokens[s + 1:s + 1 + block_size] for s in starts.tolist()])
    return x, y


class CharTokenizer:
    """One token per character, over a fixed alphabet: newline and printable ASCII (96 tokens).

    Characters outside the alphabet raise a clear error rather than silently vanishing; fold
    them first (``corpus()`` already does).
    """

    alphabet = "\n" + "".join(chr(c) for c in range(32, 127))

    def __init__(self) -> None:
        self.stoi = {ch: i for i, ch in enumerate(self.alphabet)}
        self.itos = dict(enumerate(self.alphabet))

    @property
    def vocab_size(self) -> int:
        return len(self.alphabet)

    def encode(self, text: str) -> torch.Tensor:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        unknown = sorted(set(text) - self.stoi.keys())
        if unknown:
            raise ValueError(f"characters outside the tokenizer's ASCII alphabet: {unknown[:10]}")
        return torch.tensor([self.stoi[ch] for ch in text], dtype=torch.long)

    def decode(self, ids) -> str:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        bad = [i for i in ids if i not in self.itos]
        if bad:
            raise ValueError(f"token ids outside [0, {self.vocab_size}): {bad[:10]}")
        return "".join(self.itos[i] for i in ids)


_WORD = re.compile(r" ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+")


class BPETokenizer:
    """Byte-level byte-pair encoding, trained GPT-2 style on word frequencies.

    Training repeatedly merges the most frequent adjacent pair of symbols inside words (a word
    never merges with its neighbour), which is what makes it fast enough to train in a notebook.
    """

    def __init__(self, merges: list[tuple[int, int]]) -> None:
        self.merges = [tuple(m) for m in merges]
        self.ranks = {pair: 256 + i for i, pair in enumerate(self.merges)}
        self.vocab = {i: bytes([i]) for i in range(256)}
        for pair, new_id in self.ranks.items():
            self.vocab[new_id] = self.vocab[pair[0]] + self.vocab[pair[1]]

    @property
    def vocab_size(self) -> int:
        return 256 + len(self.merges)

    @classmethod
    def train(cls, text: str, vocab_size: int) -> "BPETokenizer":
        if vocab_size < 256:
            raise ValueError(f"vocab_size must be >= 256 (the byte alphabet), got {vocab_size}")
        words = Counter(_WORD.findall(text))
        pieces = {w: list(w.encode("utf-8")) for w in words}
        merges: list[tuple[int, int]] = []
        for new_id in range(256, vocab_size):
            pairs: Counter = Counter()
            for w, count in words.items():
                seq = pieces[w]
                for a, b in zip(seq, seq[1:]):
                    pairs[a, b] += count
            if not pairs:
                break
            best = max(pairs, key=lambda p: (pairs[p], -p[0], -p[1]))  # ties broken deterministically
            merges.append(best)
            for w in words:
                pieces[w] = _merge(pieces[w], best, new_id)
        return cls(merges)

    def _encode_word(self, word: str) -> list[int]:
        seq = list(word.encode("utf-8"))
        while len(seq) > 1:
            pair = min(zip(seq, seq[1:]), key=lambda p: self.ranks.get(p, 1 << 30))
            if pair not in self.ranks:
                break
            seq = _merge(seq, pair, self.ranks[pair])
        return seq

    def encode(self, text: str) -> torch.Tensor:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        ids: list[int] = []
        for word in _WORD.findall(text):
            ids.extend(self._encode_word(word))
        return torch.tensor(ids, dtype=torch.long)

    def decode(self, ids) -> str:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        bad = [i for i in ids if i not in self.vocab]
        if bad:
            raise ValueError(f"token ids outside [0, {self.vocab_size}): {bad[:10]}")
        return b"".join(self.vocab[i] for i in ids).decode("utf-8", errors="replace")


def _merge(seq: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    out, i = [], 0
    while i < len(seq):
        if i + 1 < len(seq) and seq[i] == pair[0] and seq[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(seq[i])
            i += 1
    return out


# --- synthetic tasks with verifiable answers -----------------------------------------------


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str


def _check_count(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")


def arithmetic_problems(n: int, *, seed: int, max_operand: int = 99, ops: str = "+-") -> list[Example]:
    """``n`` problems like ``'37+45='`` with answers like ``'82'``; deterministic given ``seed``."""
    _check_count(n)
    if max_operand < 1:
        raise ValueError(f"max_operand must be >= 1, got {max_operand}")
    if not ops or set(ops) - set("+-*"):
        raise ValueError(f"ops must be a non-empty string drawn from '+-*', got {ops!r}")
    rng = random.Random(seed)
    problems = []
    for _ in range(n):
        a, b, op = rng.randint(0, max_operand), rng.randint(0, max_operand), rng.choice(ops)
        value = a + b if op == "+" else a - b if op == "-" else a * b
        problems.append(Example(f"{a}{op}{b}=", str(value)))
    return problems


def copy_task(n: int, *, seed: int, length: int = 8, alphabet: str = "abcdefgh") -> list[Example]:
    """Prompts ``'copy:abc|'`` whose answer repeats the string."""
    _check_count(n)
    rng = random.Random(seed)
    items = ["".join(rng.choice(alphabet) for _ in range(length)) for _ in range(n)]
    return [Example(f"copy:{s}|", s) for s in items]


def sort_task(n: int, *, seed: int, length: int = 8, alphabet: str = "abcdefgh") -> list[Example]:
    """Prompts ``'sort:cab|'`` whose answer is the sorted string ``'abc'``."""
    _check_count(n)
    rng = random.Random(seed)
    items = ["".join(rng.choice(alphabet) for _ in range(length)) for _ in range(n)]
    return [Example(f"sort:{s}|", "".join(sorted(s))) for s in items]


def is_correct(example: Example, completion: str) -> bool:
    """Exact-match verifier: the completion's first line, stripped, equals the answer."""
    first_line = completion.split("\n", 1)[0].strip()
    return first_line == example.answer
