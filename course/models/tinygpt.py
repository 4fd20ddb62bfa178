"""TinyGPT: the decoder-only Transformer that notebook 01 builds, as a reusable module.

It follows "Attention Is All You Need" (sinusoidal positions, embeddings scaled by sqrt(d_model),
multi-head attention, position-wise feed-forward, residual + LayerNorm) in its decoder-only form,
with the choice of post-LN (the paper) or pre-LN (what models use today).

Separate ``q_proj``/``k_proj``/``v_proj``/``out_proj`` linears (rather than one fused qkv) keep
the code readable and let later notebooks swap single projections (LoRA on q and v, BitLinear).

The KV cache holds keys and values for positions already seen, so decoding a token costs one
position's work instead of the whole prefix; :meth:`KVCache.truncate` rolls it back (speculative
decoding rejects drafted tokens).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class GPTConfig:
    vocab_size: int = 96
    block_size: int = 128
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 128
    d_ff: int | None = None  # default 4 * d_model, as in the paper
    dropout: float = 0.0
    pre_ln: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "d_model"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive int, got {value!r}")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_head={self.n_head}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model

    def to_dict(self) -> dict:
        return asdict(self)


def sinusoidal_positions(n_positions: int, d_model: int, offset: int = 0) -> torch.Tensor:
    """PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(pos / 10000^(2i/d))."""
    if d_model % 2:
        raise ValueError(f"d_model must be even for sinusoidal positions, got {d_model}")
    pos = torch.arange(offset, offset + n_positions, dtype=torch.float32)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, d_model, 2, dtype=torch.float32) / d_model)
    pe = torch.zeros(n_positions, d_model)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)
    return pe


class KVCache:
    """Keys and values of every layer for the positions decoded so far.

    Storage is preallocated for ``max_len`` positions; ``length`` says how many are valid. A
    forward pass over T new tokens writes positions [length, length + T) in every layer, then the
    model calls :meth:`advance`.
    """

    def __init__(self, n_layer: int, batch: int, n_head: int, head_dim: int, max_len: int,
                 *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        shape = (batch, n_head, max_len, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.length = 0
        self.max_len = max_len

    @classmethod
    def for_model(cls, model: "TinyGPT", batch: int, max_len: int | None = None) -> "KVCache":
        cfg = model.config
        p = next(model.parameters())
        return cls(cfg.n_layer, batch, cfg.n_head, cfg.d_model // cfg.n_head, max_len or cfg.block_size,
                   dtype=p.dtype, device=p.device)

    def update(self, layer: int, k_new: torch.Tensor, v_new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new positions' keys/values; return keys/values of all positions so far."""
        t = k_new.shape[2]
        end = self.length + t
        if end > self.max_len:
            raise ValueError(f"KV cache is full: {self.length} + {t} positions > max_len={self.max_len}")
        self.k[layer][:, :, self.length:end] = k_new
        self.v[layer][:, :, self.length:end] = v_new
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, t: int) -> None:
        self.length += t

    def truncate(self, length: int) -> None:
        """Forget every position from ``length`` on (keep the first ``length``)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"can only truncate to 0..{self.length} positions, got {length}")
        self.length = length


class MultiHeadAttention(nn.Module):
    """Causal multi-head self-attention: h heads of size d_model/h, concatenated and projected."""

    def __init__(self, d_model: int, n_head: int, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"d_model={d_model} must be divisible by n_head={n_head}")
        self.n_head, self.head_dim = n_head, d_model // n_head
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)
        self.dropout = dropout

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, H, T, Dh)
        b, t, _ = x.shape
        return x.view(b, t, self.n_head, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``key_mask`` (B, past + T) bool, optional: keys marked False (padding) are not attended to,
        except by their own query, which keeps a padding row's softmax finite."""
        b, t, d = x.shape
        q, k, v = (self.split_heads(p(x)) for p in (self.q_proj, self.k_proj, self.v_proj))
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.update(layer, k, v)
        dropout = self.dropout if self.training else 0.0
        if key_mask is not None:
            causal = torch.ones(t, past + t, dtype=torch.bool, device=x.device).tril(diagonal=past)
            keys = torch.arange(past + t, device=x.device)
            itself = keys[None, :] == (past + torch.arange(t, device=x.device))[:, None]
            allowed = (causal & key_mask[:, None, None, :]) | itself  # (B, 1, T, past + T)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout)
        elif past == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        else:
            # New queries sit at positions past..past+t-1 and may see every key up to their own.
            allowed = torch.ones(t, past + t, dtype=torch.bool, device=x.device).tril(diagonal=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout)
        return self.out_proj(y.transpose(1, 2).reshape(b, t, d))


class FeedForward(nn.Module):
    """FFN(x) = max(0, x W1 + b1) W2 + b2, applied to each position separately."""

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.up = nn.Linear(d_model, d_ff)
        self.down = nn.Linear(d_ff, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.down(F.relu(self.up(x))))


class Block(nn.Module):
    """Attention then feed-forward, each wrapped in a residual connection and LayerNorm.

    post-LN (the paper): x = LN(x + Sublayer(x)).  pre-LN (today): x = x + Sublayer(LN(x)).
    """

    def __init__(self, d_model: int, n_head: int, d_ff: int, dropout: float = 0.0, pre_ln: bool = True) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(d_model, n_head, dropout)
        self.ffn = FeedForward(d_model, d_ff, dropout)
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)
        self.pre_ln = pre_ln

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                key_mask: torch.Tensor | None = None) -> torch.Tensor:
        masked = () if key_mask is None else (key_mask,)  # attention modules swapped in may not take one
        if self.pre_ln:
            x = x + self.drop(self.attn(self.ln1(x), cache, layer, *masked))
            return x + self.ffn(self.ln2(x))
        x = self.ln1(x + self.drop(self.attn(x, cache, layer, *masked)))
        return self.ln2(x + self.ffn(x))


class TinyGPT(nn.Module):
    """A small decoder-only Transformer language model with a KV cache and ``generate()``."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
        self.config = config
        c = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.blocks = nn.ModuleList(Block(c.d_model, c.n_head, c.d_ff, c.dropout, c.pre_ln)
                                    for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.d_model) if c.pre_ln else nn.Identity()
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.lm_head.weight = self.embed.weight  # tied input and output embeddings, as in the paper
        self.drop = nn.Dropout(c.dropout)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def features(self, idx: torch.Tensor, cache: KVCache | None = None,
                 attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The final (B, T, d_model) features, what the language-model head reads.

        A reward or value model puts its own head on these (notebook 09). With a ``cache``, ``idx``
        holds only the new tokens; their positions continue after the cached ones, and the cache
        advances by T.

        ``attention_mask`` (optional, B x (cached + T) bool, covering the cached positions too) marks
        real tokens True and padding False: no token attends to padding, and a token's position is
        the number of real tokens before it, so left padding changes nothing for the real tokens.
        Without it every token is real (the behaviour notebooks 01-05 use).
        """
        if idx.dim() != 2 or idx.dtype != torch.long:
            raise ValueError(f"idx must be a (batch, time) tensor of token ids (long), got shape "
                             f"{tuple(idx.shape)} dtype {idx.dtype}")
        b, t = idx.shape
        past = cache.length if cache is not None else 0
        if past + t > self.config.block_size:
            raise ValueError(f"sequence of {past + t} positions exceeds block_size={self.config.block_size}")
        d = self.config.d_model
        if attention_mask is None:
            pos = sinusoidal_positions(t, d, offset=past).to(idx.device, self.embed.weight.dtype)
            masked = ()
        else:
            if attention_mask.shape != (b, past + t) or attention_mask.dtype != torch.bool:
                raise ValueError(f"attention_mask must be bool of shape (batch, cached + new) = {(b, past + t)}, "
                                 f"got {attention_mask.dtype} {tuple(attention_mask.shape)}")
            index = (attention_mask.long().cumsum(1) - 1).clamp_min(0)[:, past:]  # real tokens count from 0
            table = sinusoidal_positions(self.config.block_size, d).to(idx.device, self.embed.weight.dtype)
            pos = table[index]
            masked = (attention_mask,)
        x = self.drop(self.embed(idx) * math.sqrt(d) + pos)
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i, *masked)
        if cache is not None:
            cache.advance(t)
        return self.ln_f(x)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                cache: KVCache | None = None, attention_mask: torch.Tensor | None = None):
        """Logits (B, T, vocab); with ``targets`` also the mean cross-entropy loss.

        With a ``cache``, ``idx`` holds only the new tokens; their positions continue after the
        cached ones, and the cache advances by T. ``attention_mask``: see :meth:`features`.
        """
        feats = self.features(idx, cache) if attention_mask is None else self.features(idx, cache, attention_mask)
        logits = self.lm_head(feats)
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0,
                 top_k: int | None = None, use_cache: bool = True,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Append ``max_new_tokens`` sampled tokens (greedy when ``temperature == 0``).

        With ``use_cache`` the prompt is processed once and each step feeds a single token; without
        it every step recomputes the whole (cropped) prefix. Both give the same tokens as long as
        the sequence fits in ``block_size``; past that the cache is rebuilt from the last half block.
        """
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 means greedy), got {temperature}")
        self.eval()
        block = self.config.block_size
        cache = KVCache.for_model(self, idx.shape[0]) if use_cache else None
        pending = idx[:, -block:]  # tokens not yet seen by the model
        for _ in range(max_new_tokens):
            if cache is not None and cache.length + pending.shape[1] > block:
                cache.truncate(0)  # window full: re-read the last half block from scratch
                pending = idx[:, -(block // 2):]
            context = pending if cache is not None else idx[:, -block:]
            logits = self(context, cache=cache)[:, -1, :]
            next_token = sample_from_logits(logits, temperature=temperature, top_k=top_k, generator=generator)
            idx = torch.cat([idx, next_token], dim=1)
            pending = next_token
        return idx


def sample_from_logits(logits: torch.Tensor, *, temperature: float = 1.0, top_k: int | None = None,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row: argmax when ``temperature == 0``, else a sample from softmax(logits / T)."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)
