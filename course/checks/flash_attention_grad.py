"""Gradient checks for notebook 02 (FlashAttention): Exercises 2.7-2.9, the backward pass in PyTorch
and in Triton and the ``torch.autograd.Function`` that joins forward and backward.

Split from :mod:`course.checks.flash_attention`, which re-exports every check here, so notebook 02
keeps calling ``check.tiled_backward`` etc. The float64 references, the seeded inputs and the
tolerances (with their derivations) stay there; they are read through that module at call time, so
one patch of, say, ``course.checks.flash_attention.reference_forward`` reaches every check.
"""

from __future__ import annotations

import torch

from .. import flash_attention as fa
from .. import runtime
from . import flash_attention as base
from .core import assert_close, assert_tensor, check, observation, require

# --- Exercise 2.7: tiled backward in PyTorch ---------------------------------------------------------


class _TiledWithBackward(torch.autograd.Function):
    """Reference (o, lse) forward with the learner's backward, for gradcheck."""

    @staticmethod
    def forward(ctx, q, k, v, backward, causal):
        o, lse = base.reference_forward(q, k, v, causal)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.backward_fn, ctx.causal = backward, causal
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = ctx.backward_fn(q, k, v, o, lse, do, causal=ctx.causal, block_m=2, block_n=3)
        return dq, dk, dv, None, None


@check
def tiled_backward(fn):
    """``fn(q, k, v, o, lse, do, causal, block_m, block_n)`` returns (dq, dk, dv) of attention."""
    require(callable(fn), f"pass your function, got {type(fn).__name__}")
    cases = [  # (b, h, n_q, n_k, d, causal, block_m, block_n)
        (1, 1, 4, 4, 2, False, 4, 4),
        (1, 1, 10, 10, 4, False, 4, 4),
        (1, 1, 10, 10, 4, True, 4, 4),
        (1, 2, 13, 29, 8, False, 8, 16),
        (2, 1, 29, 13, 8, True, 16, 8),
        (1, 1, 37, 37, 16, True, 16, 16),
    ]
    for b, h, n_q, n_k, d, causal, bm, bn in cases:
        q, k, v = base._qkv(b, h, n_q, n_k, d, dtype=torch.float64)
        do = base._randn(b, h, n_q, d, dtype=torch.float64, seed=9)
        o, lse = base.reference_forward(q, k, v, causal)
        label = base._case(shape=(b, h, n_q, n_k, d), causal=causal, block_m=bm, block_n=bn)
        got = fn(q, k, v, o, lse, do, causal=causal, block_m=bm, block_n=bn)
        require(isinstance(got, tuple) and len(got) == 3, f"tiled_backward should return (dq, dk, dv), got {type(got)}")
        for name, g, want, hint in zip(
                ("dq", "dk", "dv"), got, base.reference_grads(q, k, v, do, causal),
                ("dQ_i += dS_ij K_j * scale, with dS = P * (dP - rowsum(dO * O))",
                 "dK_j += dS_ij^T Q_i * scale: the softmax scale appears in dQ and dK",
                 "dV_j += P_ij^T dO_i, with P_ij = exp(S_ij - lse_i)" + ("; zero P where j > i" if causal else ""))):
            # float64 throughout: only summation order differs from autograd's, ~1e-15; 1e-9 is loose.
            assert_close(g, want, atol=1e-9, rtol=1e-9, name=f"{name} ({label})", hint=hint)
    q, k, v = (t.requires_grad_() for t in base._qkv(2, 1, 5, 7, 3, dtype=torch.float64, seed=11))
    for causal in (False, True):
        ok = torch.autograd.gradcheck(lambda q, k, v, c=causal: _TiledWithBackward.apply(q, k, v, fn, c), (q, k, v),
                                      eps=1e-6, atol=1e-6, rtol=1e-4, raise_exception=False)
        require(ok, f"torch.autograd.gradcheck (float64, causal={causal}) disagrees with finite differences")
    return f"{len(cases)} cases against autograd, and gradcheck in float64 (causal and not)"


# --- Exercise 2.8: Triton backward kernel -------------------------------------------------------------


@check
def triton_backward(kernel):
    """``kernel`` has the signature of ``launch_atomic_backward``; dQ, dK, dV must match autograd."""
    require(hasattr(kernel, "__getitem__"), f"pass your @triton.jit kernel, got {type(kernel).__name__}")
    cfg = fa.BlockConfig
    f32, f16 = torch.float32, torch.float16
    cases = [  # (b, h, n_q, n_k, d, causal, config, dtype)
        (1, 1, 16, 16, 16, False, cfg(16, 16), f32),
        (1, 1, 40, 40, 16, False, cfg(16, 16), f32),
        (1, 1, 40, 40, 32, True, cfg(16, 16), f32),
        (1, 2, 50, 77, 64, True, cfg(32, 16), f32),
        (2, 1, 77, 50, 64, False, cfg(16, 32), f32),
        (1, 1, 33, 33, 128, True, cfg(32, 32), f32),
        (4, 4, 20, 20, 16, True, cfg(16, 16), f32),
        (1, 2, 45, 45, 64, True, cfg(32, 32), f16),
    ]
    if runtime.triton_mode() == "compiled":
        cases.append((1, 2, 45, 61, 128, True, cfg(32, 32), torch.bfloat16))
    device = runtime.device()
    for b, h, n_q, n_k, d, causal, c, dtype in cases:
        q, k, v = base._qkv(b, h, n_q, n_k, d, dtype=dtype, device=device)
        do = base._randn(b, h, n_q, d, dtype=dtype, seed=9, device=device)
        o, lse = base.reference_forward(q, k, v, causal)
        label = base._case(shape=(b, h, n_q, n_k, d), causal=causal, BLOCK_M=c.block_m, BLOCK_N=c.block_n,
                      dtype=str(dtype)[6:])
        got = fa.launch_atomic_backward(kernel, q, k, v, o.to(device, dtype), lse.to(device, torch.float32),
                          do, causal=causal, config=c)
        want = base.reference_grads(q, k, v, do, causal)
        # fp32: _fp32_grad_tol (course.checks.flash_attention). fp16, both modes: P and dS are rounded to
        # 2^-11 before each matmul, 2e-2 on values of ~1-10; bf16 (GPU only, 2^-8): 5x the bf16 output tolerance.
        tol = {f32: base._fp32_grad_tol(max(d, n_q, n_k)), f16: 2e-2}.get(dtype, 5 * base.BF16_TOL)
        for name, g, w, hint in zip(("dQ", "dK", "dV"), got, want, (
                "dQ_i += dS_ij K_j (times sm_scale), added to DQ with tl.atomic_add for rows < N_Q",
                "dK_j += dS_ij^T Q_i times sm_scale, with dS = P * (dP - Delta)",
                "dV_j += P_ij^T dO_i; P_ij = exp(S_ij * sm_scale - L_i)" + ("; zero P where j > i" if causal else ""))):
            assert_close(g, w, atol=tol, rtol=tol, name=f"{name} ({label})", hint=hint)
    return f"{len(cases)} cases: ragged N, N_q != N_k, d 16-128, batch*heads 1-16, fp32/fp16, causal"


# --- Exercise 2.9: the autograd.Function ----------------------------------------------------------


@observation
def run_autograd_function(function, q, k, v, causal, do) -> dict:
    """Next to the learner's code: ``function.apply`` with the sizes of the tensors it saves for
    backward recorded, then ``backward(do)``. Returns what it saw; the check judges it."""
    if not (isinstance(function, type) and issubclass(function, torch.autograd.Function)):
        return {"function": False, "what": repr(function)[:200]}
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t, s=saved: s.append(t.numel()) or t, lambda t: t):
        out = function.apply(q, k, v, causal)
    has_graph = isinstance(out, torch.Tensor) and out.grad_fn is not None
    if has_graph:
        out.backward(do)
    return {"function": True, "out": out.detach() if isinstance(out, torch.Tensor) else out, "saved": saved,
            "has_graph": has_graph, "grads": [t.grad for t in (q, k, v)] if has_graph else None}


@check
def autograd_function(function):
    """``function.apply(q, k, v, causal)`` is differentiable attention that saves O(N d) memory."""
    cases = [(1, 1, 16, 16, 16, False), (1, 2, 40, 40, 32, True), (2, 1, 50, 30, 16, True),
             (1, 1, 64, 64, 16, False)]
    device = runtime.device()
    for b, h, n_q, n_k, d, causal in cases:
        q, k, v = base._qkv(b, h, n_q, n_k, d, device=device)
        do = base._randn(b, h, n_q, d, seed=9, device=device)
        label = base._case(shape=(b, h, n_q, n_k, d), causal=causal)
        seen = run_autograd_function(function, q, k, v, causal, do)
        require(seen["function"], f"pass your torch.autograd.Function subclass, got {seen.get('what')}")
        out, saved = seen["out"], seen["saved"]
        assert_tensor(out, f"output ({label})", shape=q.shape, dtype=q.dtype)
        want_o, _ = base.reference_forward(q, k, v, causal)
        tol = base._fp32_tol(max(d, n_k))
        assert_close(out, want_o, atol=tol, rtol=tol, name=f"output ({label})")
        largest_input = max(q.numel(), k.numel(), v.numel())
        require(max(saved, default=0) <= largest_input,
                f"the forward saved a tensor of {max(saved)} elements for backward ({label}); the inputs have "
                f"at most {largest_input}. Save q, k, v, o and the lse (O(N d)), never S or P (O(N_q N_k)).")
        require(seen["has_graph"], "the output has no grad_fn: return it from forward, don't detach it")
        for name, g, w in zip(("dq", "dk", "dv"), seen["grads"], base.reference_grads(q, k, v, do, causal)):
            require(g is not None, f"{name} is None ({label}): backward must return (dq, dk, dv, None)")
            grad_tol = base._fp32_grad_tol(max(d, n_q, n_k))
            assert_close(g, w, atol=grad_tol, rtol=grad_tol, name=f"{name} ({label})",
                         hint="backward returns one gradient per forward input: (dq, dk, dv, None for causal)")
    return f"{len(cases)} cases: values, gradients, and nothing of size N_q x N_k saved for backward"
