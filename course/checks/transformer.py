"""Checks for notebook 01: Attention Is All You Need.

Tolerances: the references are computed in float32 by different but equivalent arithmetic
(another summation order, a fused kernel), so they agree to a few float32 ulps times the
reduction length; 1e-5 absolute on O(1) values leaves room for that and nothing else: a missing
scale, a wrong mask or a transposed head is off by 1e-2 or more.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..models import tinygpt
from .core import CheckFailed, assert_close, assert_equal, assert_tensor, check, grading_seed, require

ATOL, RTOL = 1e-5, 1e-4  # float32 results of equivalent computations (see module docstring)


def _reference_positions(n: int, d: int) -> torch.Tensor:
    return tinygpt.sinusoidal_positions(n, d)


@check
def positional_encoding(fn):
    """fn(n_positions, d_model) -> (n_positions, d_model) sinusoidal encodings."""
    for n, d in [(1, 2), (4, 8), (50, 16), (128, 64)]:
        out = fn(n, d)
        assert_tensor(out, f"positional_encoding({n}, {d})", shape=(n, d), dtype=torch.float32)
        want = _reference_positions(n, d)
        swapped = torch.stack([want[:, 1::2], want[:, 0::2]], dim=-1).reshape(n, d)
        hint = None
        if torch.allclose(out, swapped, atol=1e-5):
            hint = "sin goes in the even columns (2i), cos in the odd columns (2i+1)"
        # Positions up to 128 make sin arguments up to 128 rad: float32 keeps ~1e-5 there.
        assert_close(out, want, atol=ATOL * 10, rtol=RTOL, name=f"positional_encoding({n}, {d})",
                     hint=hint or "PE[pos, 2i] = sin(pos / 10000^(2i/d)); both columns of a pair share one frequency")
    return "4 sizes, up to 128 positions x 64 dims"


def _attention_reference(q, k, v, mask=None):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _attention_cases(batched: bool):
    gen = torch.Generator().manual_seed(grading_seed(1))  # new inputs at every grading
    shapes = [(1, 1, 1), (2, 3, 4), (5, 5, 8), (7, 9, 16)]  # (T_q, T_k, d) smallest first
    for t_q, t_k, d in shapes:
        lead = (2, 3) if batched else ()
        q = torch.randn(*lead, t_q, d, generator=gen)
        k = torch.randn(*lead, t_k, d, generator=gen)
        v = torch.randn(*lead, t_k, d + 1, generator=gen)  # d_v != d_k on purpose
        yield q, k, v, None, "no mask"
        if t_q == t_k:
            yield q, k, v, torch.ones(t_q, t_k, dtype=torch.bool).tril(), "causal mask"
        padding = torch.ones(t_q, t_k, dtype=torch.bool)
        padding[:, max(1, t_k - 2):] = False  # the last keys are padding; every query keeps >= 1 key
        yield q, k, v, padding, "padding mask"


def _attention_hint(out, q, k, v, mask):
    unscaled = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)
    if out.shape == unscaled.shape and torch.allclose(out, unscaled, atol=1e-4):
        return "this is softmax(q k^T) v: divide the scores by sqrt(d_k)"
    if mask is not None:
        inverted = F.scaled_dot_product_attention(q, k, v, attn_mask=~mask) if (~mask).any(-1).all() else None
        if inverted is not None and out.shape == inverted.shape and torch.allclose(out, inverted, atol=1e-4):
            return "mask == True means 'may attend'; you excluded those positions instead"
        ignored = F.scaled_dot_product_attention(q, k, v)
        if out.shape == ignored.shape and torch.allclose(out, ignored, atol=1e-4):
            return "the mask was ignored: set masked scores to -inf before the softmax"
    return "softmax over the keys (the last dimension of the scores), then multiply by v"


def _check_attention(fn, batched: bool) -> str:
    count = 0
    for q, k, v, mask, label in _attention_cases(batched):
        out = fn(q, k, v) if mask is None else fn(q, k, v, mask)
        want = _attention_reference(q, k, v, mask)
        try:
            assert_close(out, want, atol=ATOL, rtol=RTOL, name=f"attention ({label})",
                         inputs={"q": q, "k": k, "v": v, "mask": mask})
        except CheckFailed as failure:
            raise CheckFailed(f"{failure}\n  hint: {_attention_hint(out, q, k, v, mask)}") from None
        count += 1
    return count


@check
def attention_loop(fn):
    """fn(q, k, v, mask=None) for single sequences: q (T_q, d), k (T_k, d), v (T_k, d_v)."""
    count = _check_attention(fn, batched=False)
    return f"{count} cases against torch's scaled_dot_product_attention"


@check
def scaled_dot_product_attention(fn):
    """Batched attention over any leading dimensions, with optional boolean mask."""
    count = _check_attention(fn, batched=True)
    q = torch.randn(2, 3, 5, 8, dtype=torch.float64)
    out = fn(q, q, q)
    assert_tensor(out, "attention on float64 inputs", dtype=torch.float64)
    return f"{count} batched cases (causal and padding masks), dtype preserved"


def _copy_weights(source: torch.nn.Module, target: torch.nn.Module, what: str) -> None:
    src, dst = source.state_dict(), target.state_dict()
    missing = sorted(set(src) - set(dst))
    require(not missing, f"{what} is missing parameters named {missing}; expected names {sorted(src)} "
                         f"(got {sorted(dst)})")
    for name, tensor in src.items():
        require(dst[name].shape == tensor.shape,
                f"{what}.{name} has shape {tuple(dst[name].shape)}, expected {tuple(tensor.shape)}")
    target.load_state_dict(src, strict=False)


@check
def multi_head_attention(cls):
    """cls(d_model, n_head) with q_proj/k_proj/v_proj/out_proj, causal self-attention on (B, T, D)."""
    for d_model, n_head, t in [(8, 1, 3), (16, 4, 5), (32, 8, 11)]:
        torch.manual_seed(d_model)
        reference = tinygpt.MultiHeadAttention(d_model, n_head).eval()
        mine = cls(d_model, n_head).eval()
        _copy_weights(reference, mine, "your MultiHeadAttention")
        x = torch.randn(2, t, d_model)
        with torch.no_grad():
            want = reference(x)
            got = mine(x)
            single_head = torch.nn.functional.scaled_dot_product_attention(
                reference.q_proj(x), reference.k_proj(x), reference.v_proj(x), is_causal=True)
            single = reference.out_proj(single_head)
        hint = "each head must see only its own d_model/n_head slice of q, k and v"
        if n_head > 1 and got.shape == single.shape and torch.allclose(got, single, atol=1e-4):
            hint = "that is one big head: split d_model into n_head heads before attention"
        assert_close(got, want, atol=ATOL, rtol=RTOL, name=f"MultiHeadAttention(d_model={d_model}, n_head={n_head})",
                     inputs={"x": x}, hint=hint + "; and the attention must be causal")
    return "3 sizes, weights shared with course.models.MultiHeadAttention"


@check
def transformer_block(cls):
    """cls(d_model, n_head, d_ff, pre_ln) matching course.models.Block for both LayerNorm placements."""
    for pre_ln in (False, True):
        torch.manual_seed(3)
        reference = tinygpt.Block(16, 4, 32, pre_ln=pre_ln).eval()
        mine = cls(16, 4, 32, pre_ln=pre_ln).eval()
        _copy_weights(reference, mine, "your TransformerBlock")
        with torch.no_grad():  # random LayerNorm affine parameters so that misplaced norms show
            for name, p in mine.named_parameters():
                if "ln" in name:
                    p.copy_(torch.randn_like(p))
            reference.load_state_dict(mine.state_dict(), strict=False)
            x = torch.randn(2, 6, 16) * 3
            got, want = mine(x), reference(x)
        kind = "pre-LN: x + Sublayer(LN(x))" if pre_ln else "post-LN: LN(x + Sublayer(x))"
        assert_close(got, want, atol=1e-4, rtol=RTOL, name=f"TransformerBlock(pre_ln={pre_ln})",
                     inputs={"x": x}, hint=f"{kind}, attention first (ln1), feed-forward second (ln2)")
    return "post-LN and pre-LN"


def _noam(step: int, d_model: int, warmup: int) -> float:
    return d_model ** -0.5 * min(step ** -0.5, step * warmup ** -1.5)


@check
def noam_schedule(fn):
    """fn(step, d_model, warmup) -> learning rate of the paper's equation (3)."""
    for d_model, warmup in [(512, 4000), (128, 100)]:
        for step in [1, 2, warmup // 2, warmup - 1, warmup, warmup + 1, 10 * warmup]:
            got = fn(step, d_model, warmup)
            want = _noam(step, d_model, warmup)
            require(isinstance(got, (float, int)) or (isinstance(got, torch.Tensor) and got.numel() == 1),
                    f"noam_lr({step}, {d_model}, {warmup}) should return a number, got {type(got).__name__}")
            require(math.isclose(float(got), want, rel_tol=1e-9),
                    f"noam_lr(step={step}, d_model={d_model}, warmup={warmup}) = {float(got):.6g}, expected {want:.6g}"
                    "\n  hint: lrate = d_model^-0.5 * min(step^-0.5, step * warmup^-1.5)")
    peak = max(range(1, 8001), key=lambda s: fn(s, 512, 4000))
    assert_equal(peak, 4000, name="step with the highest learning rate (d_model=512, warmup=4000)")
    return "14 values; the peak is at the end of warm-up"


class _CountingModel(torch.nn.Module):
    """Wraps a TinyGPT and records how many new positions each forward call processed."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config, self.calls = model, model.config, []

    def forward(self, idx, targets=None, cache=None):
        self.calls.append((idx.shape[1], cache is not None))
        return self.model(idx, targets, cache)


@check
def kv_cache_decoding(fn):
    """fn(model, prompt_ids (1, T), n_new) -> (1, T + n_new) greedy tokens, feeding one token per step."""
    from ..data import CharTokenizer
    from ..models import load_pretrained

    model = load_pretrained("tinygpt-char")
    prompt = CharTokenizer().encode("The\nfor")[None]
    for n_new in (1, 2, 20):
        counting = _CountingModel(model)
        got = fn(counting, prompt, n_new)
        want = model.generate(prompt, n_new, temperature=0, use_cache=False)
        assert_equal(got, want, name=f"tokens after {n_new} greedy step(s)",
                     hint="greedy = argmax of the last position's logits; append it and feed only it next")
        sizes = [t for t, _ in counting.calls]
        require(all(uses_cache for _, uses_cache in counting.calls),
                f"the model was called without a cache (calls: {counting.calls})")
        require(sizes[0] == prompt.shape[1] and all(t == 1 for t in sizes[1:]),
                f"with a KV cache the prompt is processed once, then one token per step; the model saw "
                f"{sizes} new positions per call")
        require(len(sizes) == n_new, f"{n_new} new tokens need {n_new} forward calls, you made {len(sizes)}")
    return "same tokens as recomputing the prefix, one position per step"
