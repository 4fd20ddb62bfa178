"""FlashAttention in Triton: the reference kernels, their launchers, and the autograd wrapper.

Notebook 02 has the learner write the key pieces (online softmax, a tiled forward and backward in
PyTorch, a Triton forward kernel and a one-kernel Triton backward). This module holds what the
notebook's benchmark and ``scripts/bench_flash_attention.py`` both run:

* :func:`flash_attention` (and :class:`FlashAttentionFunction`): validated inputs, a forward kernel
  and a two-pass backward (dK/dV, then dQ; no atomics), with autotuned block sizes on a GPU;
* :func:`launch_forward`: launches *any* forward kernel with the signature below, so the learner's
  kernel and the reference one go through the same validation, strides and grid;
* :func:`launch_atomic_backward`: launches a one-kernel backward that adds dQ with atomics (the
  design the notebook's exercise uses), also with validated inputs;
* :func:`naive_attention` (the standard algorithm that materialises S and P), :func:`attention_flops`.

The rest lives beside it and is re-exported here, so ``fa.<name>`` keeps working:
:mod:`course.flash_kernels` (the ``@triton.jit`` kernels), :mod:`course.flash_configs` (block
sizes, the per-arch autotune lists and their pruning) and :mod:`course.flash_bench` (benchmark
helpers: ``make_qkv``, ``benchmark_case``, ``perf_bar_summary``, ``plot_benchmark``, ...).

The reference forward kernel differs from the notebook's exercise on purpose: it works in base 2
(``exp2`` with ``log2(e)`` folded into the scale) and splits the key loop into blocks that need no
mask and blocks on the diagonal or the ragged tail that do, so the common case runs unmasked.

Layout and conventions (the same as ``torch.nn.functional.scaled_dot_product_attention``):

* ``q``: (batch, heads, N_q, d), ``k`` and ``v``: (batch, heads, N_k, d); any strides as long as the
  last dimension has stride 1; head dim d in :data:`SUPPORTED_HEAD_DIMS`;
* ``causal=True`` masks key j for query i when j > i (top-left aligned, as SDPA's ``is_causal``);
* the forward also returns ``lse`` (batch, heads, N_q) in float32: the natural-log
  log-sum-exp of each row of the scaled scores, all the backward needs besides Q, K, V and O;
* dtypes: float16, bfloat16 and float32 (fp32 accumulation); float64 only under the Triton CPU
  interpreter (for ``torch.autograd.gradcheck``); bfloat16 only on a GPU (the interpreter computes
  bf16 ``tl.dot`` wrongly, see :func:`course.runtime.require_floating_point_dtype`).

Forward kernel signature (both the reference and the notebook's)::

    kernel(Q, K, V, O, L, sm_scale,
           stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
           stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_om,
           H, N_Q, N_K,
           HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr)

launched on the grid ``(cdiv(N_Q, BLOCK_M), batch * heads)``; ``L`` is float32 (batch*heads, N_Q).
"""

from __future__ import annotations

import importlib
import math

import torch
import triton

from . import flash_configs as _flash_configs
from . import flash_kernels as _flash_kernels
from . import runtime

# Triton builds a @triton.jit function as interpreted or compilable by TRITON_INTERPRET at definition.
# Code that flips the switch and reloads this module (a test compiles the kernels for sm_90 that way)
# must get kernels built under the new setting, as when they were defined in this file. (Without Triton,
# on macOS and Windows, course._no_triton's stand-in has no interpreter switch to follow.)
if runtime.triton_available() and (isinstance(_flash_kernels._fwd_kernel, triton.JITFunction)
                                   == bool(triton.knobs.runtime.interpret)):
    importlib.reload(_flash_kernels)
    importlib.reload(_flash_configs)

from .flash_configs import (DEFAULT_CONFIG, DKDV_GPU_CONFIGS, DQ_GPU_CONFIGS, FWD_GPU_CONFIGS,  # noqa: F401,E402
                            GPU_CONFIGS, BlockConfig, _dkdv_tuned, _dq_tuned, _fwd_tuned, _pruner,
                            _triton_configs, kept_configs, spills_on_sm90)
from .flash_kernels import (_bwd_delta_kernel, _bwd_dkdv_kernel, _bwd_dq_kernel, _fwd_kernel,  # noqa: F401,E402
                            _fwd_ladder_kernel, _key_range)

SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)
LOG2E = 1.4426950408889634  # log2(e): exp(x) = exp2(x * log2(e))
LN2 = 0.6931471805599453  # ln(2): log(x) = log2(x) * ln(2)




# --- input validation ---------------------------------------------------------------------------


def _allowed_dtypes() -> tuple[torch.dtype, ...]:
    base = (torch.float16, torch.bfloat16, torch.float32)
    return base + (torch.float64,) if runtime.triton_mode() == "interpreter" else base


def validate_attention_inputs(q, k, v, *, causal: bool = False, sm_scale: float | None = None) -> float:
    """Check what the kernels can take and return the softmax scale (1/sqrt(d) unless given).

    Raises ``TypeError``/``ValueError`` naming the argument and what was expected, instead of letting
    a kernel read out of bounds or return garbage.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D (batch, heads, seq_len, head_dim), got shape {tuple(t.shape)}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if q.device.type == "cpu" and runtime.triton_mode() != "interpreter":
        raise ValueError("tensors are on the CPU but Triton is compiling for the GPU: move them to cuda, "
                         "or import course before triton so the CPU interpreter is used")
    if q.device.type not in ("cpu", "cuda"):
        raise ValueError(f"q, k, v must be on cpu (Triton interpreter) or cuda, got {q.device}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    runtime.require_floating_point_dtype("q", q, allowed=_allowed_dtypes())
    if q.shape[:2] != k.shape[:2] or k.shape[:2] != v.shape[:2]:
        raise ValueError("q, k, v must have the same (batch, heads), got "
                         f"{tuple(q.shape[:2])}, {tuple(k.shape[:2])}, {tuple(v.shape[:2])}")
    if k.shape[2] != v.shape[2]:
        raise ValueError(f"k and v must have the same number of keys (dim 2), got {k.shape[2]} and {v.shape[2]}")
    d = q.shape[3]
    if k.shape[3] != d or v.shape[3] != d:
        raise ValueError(f"head dims differ: q has d={d}, k has d={k.shape[3]}, v has d={v.shape[3]}; "
                         "they must match")
    if d not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head dim d={d} is not supported; the kernels take d in {SUPPORTED_HEAD_DIMS}")
    if q.numel() == 0 or k.numel() == 0:
        raise ValueError(f"q and k must be non-empty, got shapes {tuple(q.shape)} and {tuple(k.shape)}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name} has stride {t.stride(-1)} in its last (head_dim) dimension; the kernels "
                             f"read rows of d contiguous elements: pass {name}.contiguous()")
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if sm_scale is None:
        return 1.0 / math.sqrt(d)
    if isinstance(sm_scale, bool) or not isinstance(sm_scale, (int, float)) or not math.isfinite(sm_scale) \
            or sm_scale <= 0:
        raise ValueError(f"sm_scale must be a finite number > 0, got {sm_scale!r}")
    return float(sm_scale)


# --- the standard algorithm -----------------------------------------------------------------------


def causal_mask(n_q: int, n_k: int, device=None) -> torch.Tensor:
    """Boolean (n_q, n_k) mask, True where query i may attend key j (j <= i, top-left aligned)."""
    for name, n in (("n_q", n_q), ("n_k", n_k)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{name} must be an int >= 1, got {n!r}")
    return torch.ones(n_q, n_k, dtype=torch.bool, device=device).tril()


def naive_attention(q, k, v, causal: bool = False, sm_scale: float | None = None) -> torch.Tensor:
    """Standard attention: S = q k^T * scale, P = softmax(S) (in fp32), O = P v; S and P are N_q x N_k.

    Takes any (..., N, d) shapes, so it is also the reference the checks compare against (in fp64).
    """
    if not all(isinstance(t, torch.Tensor) for t in (q, k, v)):
        raise TypeError("q, k, v must be torch.Tensors")
    if q.dim() < 2 or q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"expected q (..., N_q, d), k (..., N_k, d), v (..., N_k, d_v), got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if sm_scale is None else sm_scale
    s = (q @ k.transpose(-1, -2)) * scale
    if causal:
        s = s.masked_fill(~causal_mask(q.shape[-2], k.shape[-2], q.device), float("-inf"))
    p = torch.softmax(s, dim=-1, dtype=torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype)
    return p.to(v.dtype) @ v


def attention_flops(batch_heads: int, n_q: int, n_k: int, d: int, *, causal: bool = False,
                    mode: str = "fwd") -> float:
    """FLOPs by the usual convention: 4*N_q*N_k*d a head forward (two matmuls), half of it when
    causal, 2.5x that for the backward (five matmuls), so 3.5x for forward+backward."""
    for name, n in (("batch_heads", batch_heads), ("n_q", n_q), ("n_k", n_k), ("d", d)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{name} must be an int >= 1, got {n!r}")
    factor = {"fwd": 1.0, "bwd": 2.5, "fwd_bwd": 3.5}
    if mode not in factor:
        raise ValueError(f"mode must be one of {list(factor)}, got {mode!r}")
    flops = 4.0 * batch_heads * n_q * n_k * d * factor[mode]
    return flops / 2 if causal else flops




def _use_autotune(config: BlockConfig | None) -> bool:
    return config is None and runtime.triton_mode() == "compiled"


def _config(config: BlockConfig | None) -> BlockConfig:
    if config is None:
        return DEFAULT_CONFIG
    if not isinstance(config, BlockConfig):
        raise TypeError(f"config must be a BlockConfig or None, got {type(config).__name__}")
    return config


# --- launchers ----------------------------------------------------------------------------------


def launch_forward(kernel, q, k, v, *, causal: bool = False, sm_scale: float | None = None,
                   config: BlockConfig | None = None, constexprs: dict | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a forward kernel with the signature in the module docstring; return ``(o, lse)``.

    ``kernel`` is a ``@triton.jit`` function (the notebook's or :data:`_fwd_kernel`) or the autotuned
    reference; ``config`` gives the block sizes (default: :data:`DEFAULT_CONFIG`, or autotuned
    on a GPU when ``kernel`` is the reference). ``constexprs`` passes further constexpr arguments
    (the reference's ``USE_EXP2``, ``SKIP_FUTURE_BLOCKS``, ``SPLIT_MASKED`` switches, used by
    :mod:`course.flash_ladder`).
    """
    scale = validate_attention_inputs(q, k, v, causal=causal, sm_scale=sm_scale)
    if not callable(getattr(kernel, "__getitem__", None)):
        raise TypeError(f"kernel must be a @triton.jit function, got {type(kernel).__name__}")
    extra = dict(constexprs or {})
    taken = {"HEAD_DIM", "BLOCK_M", "BLOCK_N", "CAUSAL"} & set(extra)
    if taken or not all(isinstance(n, str) and isinstance(val, (bool, int)) for n, val in extra.items()):
        raise ValueError(f"constexprs must map other constexpr names to bools or ints (not {sorted(taken)}: "
                         f"those come from q's shape, config and causal), got {constexprs!r}")
    batch, heads, n_q, d = q.shape
    n_k = k.shape[2]
    o = torch.empty((batch, heads, n_q, d), dtype=q.dtype, device=q.device)
    lse = torch.empty((batch, heads, n_q), dtype=torch.float32 if q.dtype != torch.float64 else q.dtype,
                      device=q.device)
    args = (q, k, v, o, lse, scale, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2), heads, n_q, n_k)
    if kernel is _fwd_kernel and _use_autotune(config):
        grid = lambda meta: (triton.cdiv(n_q, meta["BLOCK_M"]), batch * heads)
        _fwd_tuned[grid](*args, HEAD_DIM=d, CAUSAL=causal, **extra)
    else:
        c = _config(config)
        kernel[(triton.cdiv(n_q, c.block_m), batch * heads)](*args, HEAD_DIM=d, BLOCK_M=c.block_m,
                                                             BLOCK_N=c.block_n, CAUSAL=causal,
                                                             num_warps=c.num_warps, num_stages=c.num_stages,
                                                             **extra)
    return o, lse


def _validate_backward_inputs(q, k, v, o, lse, do, causal, sm_scale) -> float:
    scale = validate_attention_inputs(q, k, v, causal=causal, sm_scale=sm_scale)
    for name, t, shape in (("o", o, q.shape), ("do", do, q.shape), ("lse", lse, q.shape[:3])):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.shape != shape:
            raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
        if t.device != q.device:
            raise ValueError(f"{name} must be on {q.device}, got {t.device}")
    if o.dtype != q.dtype or do.dtype != q.dtype:
        raise TypeError(f"o and do must have q's dtype {q.dtype}, got {o.dtype} and {do.dtype}")
    return scale


def flash_backward(q, k, v, o, lse, do, *, causal: bool = False, sm_scale: float | None = None,
                   dkdv_config: BlockConfig | None = None, dq_config: BlockConfig | None = None):
    """The reference backward: ``(dq, dk, dv)`` from Q, K, V, O, the lse and dO, recomputing P.

    Three launches: delta = rowsum(dO * O); dK, dV with one program per key block looping over query
    blocks; dQ with one program per query block looping over key blocks. No atomics, so the result
    is deterministic, at the price of computing Q K^T twice.
    """
    scale = _validate_backward_inputs(q, k, v, o, lse, do, causal, sm_scale)
    batch, heads, n_q, d = q.shape
    n_k = k.shape[2]
    bh = batch * heads
    q_, k_, v_, o_, do_ = (t.contiguous() for t in (q, k, v, o, do))
    lse_ = lse.contiguous().to(torch.float64 if q.dtype == torch.float64 else torch.float32)
    delta = torch.empty((batch, heads, n_q), dtype=lse_.dtype, device=q.device)
    _bwd_delta_kernel[(triton.cdiv(n_q, 64), bh)](o_, do_, delta, n_q, HEAD_DIM=d, BLOCK_M=64)
    dq = torch.empty_like(q_)
    dk = torch.empty_like(k_)
    dv = torch.empty_like(v_)
    if _use_autotune(dkdv_config) and _use_autotune(dq_config):
        _dkdv_tuned[lambda meta: (triton.cdiv(n_k, meta["BLOCK_N"]), bh)](
            q_, k_, v_, do_, lse_, delta, dk, dv, scale, n_q, n_k, HEAD_DIM=d, CAUSAL=causal)
        _dq_tuned[lambda meta: (triton.cdiv(n_q, meta["BLOCK_M"]), bh)](
            q_, k_, v_, do_, lse_, delta, dq, scale, n_q, n_k, HEAD_DIM=d, CAUSAL=causal)
    else:
        c1, c2 = _config(dkdv_config), _config(dq_config)
        _bwd_dkdv_kernel[(triton.cdiv(n_k, c1.block_n), bh)](
            q_, k_, v_, do_, lse_, delta, dk, dv, scale, n_q, n_k, HEAD_DIM=d, BLOCK_M=c1.block_m,
            BLOCK_N=c1.block_n, CAUSAL=causal, num_warps=c1.num_warps, num_stages=c1.num_stages)
        _bwd_dq_kernel[(triton.cdiv(n_q, c2.block_m), bh)](
            q_, k_, v_, do_, lse_, delta, dq, scale, n_q, n_k, HEAD_DIM=d, BLOCK_M=c2.block_m,
            BLOCK_N=c2.block_n, CAUSAL=causal, num_warps=c2.num_warps, num_stages=c2.num_stages)
    return dq, dk, dv


def launch_atomic_backward(kernel, q, k, v, o, lse, do, *, causal: bool = False, sm_scale: float | None = None,
                           config: BlockConfig | None = None):
    """Run a one-kernel backward that adds dQ with ``tl.atomic_add``; return ``(dq, dk, dv)``.

    Kernel signature (one program per (key block, batch*head); all tensors contiguous
    (batch*heads, N, d); ``DQ`` is a float32 buffer of zeros; ``Delta`` = rowsum(dO * O))::

        kernel(Q, K, V, DO, L, Delta, DQ, DK, DV, sm_scale, N_Q, N_K,
               HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr)
    """
    scale = _validate_backward_inputs(q, k, v, o, lse, do, causal, sm_scale)
    if not callable(getattr(kernel, "__getitem__", None)):
        raise TypeError(f"kernel must be a @triton.jit function, got {type(kernel).__name__}")
    batch, heads, n_q, d = q.shape
    n_k = k.shape[2]
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    q_, k_, v_, do_ = (t.contiguous() for t in (q, k, v, do))
    lse_ = lse.contiguous().to(acc)
    delta = (do.to(acc) * o.to(acc)).sum(-1).contiguous()
    dq = torch.zeros(q.shape, dtype=acc, device=q.device)
    dk = torch.empty_like(k_)
    dv = torch.empty_like(v_)
    c = _config(config)
    kernel[(triton.cdiv(n_k, c.block_n), batch * heads)](
        q_, k_, v_, do_, lse_, delta, dq, dk, dv, scale, n_q, n_k, HEAD_DIM=d, BLOCK_M=c.block_m,
        BLOCK_N=c.block_n, CAUSAL=causal, num_warps=c.num_warps, num_stages=c.num_stages)
    return dq.to(q.dtype), dk, dv


# --- the autograd wrapper ---------------------------------------------------------------------------


def flash_forward(q, k, v, *, causal: bool = False, sm_scale: float | None = None,
                  config: BlockConfig | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference forward: ``(o, lse)``; autotuned on a GPU unless ``config`` is given."""
    return launch_forward(_fwd_kernel, q, k, v, causal=causal, sm_scale=sm_scale, config=config)


class FlashAttentionFunction(torch.autograd.Function):
    """Saves Q, K, V, O and the lse (O(N d) memory), never the N_q x N_k matrices."""

    @staticmethod
    def forward(ctx, q, k, v, causal, sm_scale, fwd_config, dkdv_config, dq_config):
        o, lse = flash_forward(q, k, v, causal=causal, sm_scale=sm_scale, config=fwd_config)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal, ctx.sm_scale = causal, sm_scale
        ctx.configs = (dkdv_config, dq_config)
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = flash_backward(q, k, v, o, lse, do.contiguous(), causal=ctx.causal, sm_scale=ctx.sm_scale,
                                    dkdv_config=ctx.configs[0], dq_config=ctx.configs[1])
        return dq, dk, dv, None, None, None, None, None


def flash_attention(q, k, v, causal: bool = False, sm_scale: float | None = None, *,
                    fwd_config: BlockConfig | None = None, dkdv_config: BlockConfig | None = None,
                    dq_config: BlockConfig | None = None) -> torch.Tensor:
    """softmax(q k^T * sm_scale [causal mask]) v with the reference kernels, differentiable.

    Inputs are validated first (see :func:`validate_attention_inputs`), so a wrong rank, a head-dim
    mismatch, a strided last dimension or an unsupported dtype raises a clear error.
    """
    scale = validate_attention_inputs(q, k, v, causal=causal, sm_scale=sm_scale)
    for name, c in (("fwd_config", fwd_config), ("dkdv_config", dkdv_config), ("dq_config", dq_config)):
        if c is not None and not isinstance(c, BlockConfig):
            raise TypeError(f"{name} must be a BlockConfig or None, got {type(c).__name__}")
    return FlashAttentionFunction.apply(q, k, v, causal, scale, fwd_config, dkdv_config, dq_config)


# --- benchmark helpers, in course.flash_bench: re-exported lazily (importing them needs this module) --

_BENCH_NAMES = ("RESULTS_CSV", "PERF_BAR_SHAPE", "PERF_BAR", "make_qkv", "sdpa_flash", "IMPLEMENTATIONS",
                "benchmark_case", "saved_tensor_bytes", "perf_bar_summary", "plot_benchmark")


def __getattr__(name):
    if name in _BENCH_NAMES:
        from . import flash_bench

        return getattr(flash_bench, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
