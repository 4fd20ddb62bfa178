"""The reference FlashAttention kernels (``@triton.jit``), split from :mod:`course.flash_attention`.

Launch them through :mod:`course.flash_attention` (validated inputs, strides, grid, autotuning); this
module holds only device code:

* :func:`_fwd_kernel`: the forward, in base 2 (``exp2`` with ``log2(e)`` folded into the scale), key
  blocks past the diagonal skipped (causal), and the key loop split into blocks that need no mask and
  blocks on the diagonal or the ragged tail that do, so the common case runs unmasked. It calls
  :func:`_fwd_ladder_kernel`, whose constexpr switches (``USE_EXP2``, ``SKIP_FUTURE_BLOCKS``,
  ``SPLIT_MASKED``) turn each of these off, so :mod:`course.flash_ladder` can compile and time the
  kernel one optimisation at a time; with all three True the code is the reference's;
* :func:`_bwd_delta_kernel`, :func:`_bwd_dkdv_kernel`, :func:`_bwd_dq_kernel`: the two-pass backward
  (delta, then dK/dV per key block, then dQ per query block; no atomics).

The forward's signature is the one in :mod:`course.flash_attention`'s docstring; ``L`` is float32
(batch*heads, N_Q) holding the natural-log log-sum-exp of each row of the scaled scores.
"""

from __future__ import annotations

import triton
import triton.language as tl

# --- the reference forward kernel -------------------------------------------------------------


@triton.jit
def _key_range(start_m, N_K, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Which keys query block ``start_m`` visits, as (full_end, hi).

    Keys [0, full_end) need no mask: all are real keys, and (causal) all precede the block's first
    query. Keys [full_end, hi) hold the diagonal and/or the ragged tail; keys >= hi are fully masked
    for every query of the block and are never loaded. The forward and the dQ kernels share it.
    """
    if CAUSAL:
        hi = tl.minimum((start_m + 1) * BLOCK_M, N_K)
        full_end = (tl.minimum(start_m * BLOCK_M, N_K) // BLOCK_N) * BLOCK_N
    else:
        hi = N_K
        full_end = (N_K // BLOCK_N) * BLOCK_N
    return full_end, hi


@triton.jit
def _fwd_steps(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, start, end, offs_m, offs_n, offs_d,
               N_K, qk_scale, ACC: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
               MASKED: tl.constexpr, USE_EXP2: tl.constexpr = True):
    """Stream key/value blocks [start, end) through the online softmax, in base 2 (base e without USE_EXP2)."""
    for start_n in range(start, end, BLOCK_N):
        cols = start_n + offs_n
        if MASKED:
            kt = tl.load(k_base + cols[None, :] * stride_kn + offs_d[:, None], mask=cols[None, :] < N_K, other=0.0)
        else:
            kt = tl.load(k_base + cols[None, :] * stride_kn + offs_d[:, None])
        s = tl.dot(q, kt, out_dtype=ACC) * qk_scale  # (BLOCK_M, BLOCK_N) scores, log2 units with USE_EXP2
        if MASKED:
            keep = cols[None, :] < N_K
            if CAUSAL:
                keep = keep & (offs_m[:, None] >= cols[None, :])
            s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        if USE_EXP2:  # exp2 is one MUFU instruction; exp is exp2 after a multiply by log2(e)
            p = tl.math.exp2(s - m_new[:, None])
            alpha = tl.math.exp2(m_i - m_new)
        else:
            p = tl.exp(s - m_new[:, None])
            alpha = tl.exp(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        if MASKED:
            v = tl.load(v_base + cols[:, None] * stride_vn + offs_d[None, :], mask=cols[:, None] < N_K, other=0.0)
        else:
            v = tl.load(v_base + cols[:, None] * stride_vn + offs_d[None, :])
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], out_dtype=ACC)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _fwd_kernel(Q, K, V, O, L, sm_scale,  # noqa: E741 (the paper's names)
                stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_om,
                H, N_Q, N_K,
                HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr):
    """The reference forward: :func:`_fwd_ladder_kernel` with every optimisation on (inlined by Triton)."""
    _fwd_ladder_kernel(Q, K, V, O, L, sm_scale, stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                       stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_om, H, N_Q, N_K,
                       HEAD_DIM, BLOCK_M, BLOCK_N, CAUSAL, True, True, True)


@triton.jit
def _fwd_ladder_kernel(Q, K, V, O, L, sm_scale,  # noqa: E741
                       stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                       stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_om,
                       H, N_Q, N_K,
                       HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
                       USE_EXP2: tl.constexpr, SKIP_FUTURE_BLOCKS: tl.constexpr, SPLIT_MASKED: tl.constexpr):
    """The forward with each optimisation behind a switch (all True: the reference's code)."""
    ACC: tl.constexpr = tl.float64 if Q.dtype.element_ty == tl.float64 else tl.float32
    start_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    q_base = Q + b * stride_qb + h * stride_qh
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m[:, None] < N_Q
    q = tl.load(q_base + offs_m[:, None] * stride_qm + offs_d[None, :], mask=row_ok, other=0.0)
    if USE_EXP2:
        qk_scale = sm_scale * 1.4426950408889634  # fold log2(e) in: exp(x) = exp2(x * log2 e)
    else:
        qk_scale = sm_scale
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=ACC)
    l_i = tl.zeros([BLOCK_M], dtype=ACC)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=ACC)
    full_end, hi = _key_range(start_m, N_K, CAUSAL, BLOCK_M, BLOCK_N)
    if not SKIP_FUTURE_BLOCKS:  # the ladder's baseline: also visit (and mask) key blocks past the diagonal
        hi = N_K
    if not SPLIT_MASKED:  # the ladder's baseline: every block through the masked path
        full_end = 0
    acc, l_i, m_i = _fwd_steps(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, 0, full_end, offs_m,
                               offs_n, offs_d, N_K, qk_scale, ACC, BLOCK_N, CAUSAL, False, USE_EXP2)
    acc, l_i, m_i = _fwd_steps(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, full_end, hi, offs_m,
                               offs_n, offs_d, N_K, qk_scale, ACC, BLOCK_N, CAUSAL, True, USE_EXP2)
    acc = acc / l_i[:, None]
    if USE_EXP2:
        lse = (m_i + tl.math.log2(l_i)) * 0.6931471805599453  # back to natural log
    else:
        lse = m_i + tl.log(l_i)
    o_base = O + b * stride_ob + h * stride_oh
    tl.store(o_base + offs_m[:, None] * stride_om + offs_d[None, :], acc.to(O.dtype.element_ty), mask=row_ok)
    tl.store(L + bh.to(tl.int64) * N_Q + offs_m, lse.to(L.dtype.element_ty), mask=offs_m < N_Q)


# --- the reference backward: delta, then dK/dV per key block, then dQ per query block ---------------


@triton.jit
def _bwd_delta_kernel(O, DO, Delta, N_Q, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):  # noqa: E741
    """delta_i = sum_d dO_id * O_id (= rowsum(P * dP)); O and dO contiguous (batch*heads, N_Q, d)."""
    ACC: tl.constexpr = tl.float64 if O.dtype.element_ty == tl.float64 else tl.float32
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    bh = tl.program_id(1).to(tl.int64)
    offs_d = tl.arange(0, HEAD_DIM)
    ptrs = bh * N_Q * HEAD_DIM + offs_m[:, None] * HEAD_DIM + offs_d[None, :]
    ok = offs_m[:, None] < N_Q
    o = tl.load(O + ptrs, mask=ok, other=0.0).to(ACC)
    do = tl.load(DO + ptrs, mask=ok, other=0.0).to(ACC)
    tl.store(Delta + bh * N_Q + offs_m, tl.sum(o * do, 1), mask=offs_m < N_Q)


@triton.jit
def _bwd_dkdv_steps(dk, dv, k, v, q_base, do_base, L_base, D_base, start, end, offs_n, offs_d, N_Q, qk_scale,
                    ACC: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, CAUSAL: tl.constexpr,
                    MASKED: tl.constexpr):
    """Accumulate dV += P^T dO and dK += dS^T Q over query blocks [start, end), P^T recomputed."""
    offs_mb = tl.arange(0, BLOCK_M)
    for start_m in range(start, end, BLOCK_M):
        rows = start_m + offs_mb
        if MASKED:
            row_ok = rows < N_Q
            qt = tl.load(q_base + rows[None, :] * HEAD_DIM + offs_d[:, None], mask=row_ok[None, :], other=0.0)
            do = tl.load(do_base + rows[:, None] * HEAD_DIM + offs_d[None, :], mask=row_ok[:, None], other=0.0)
            lse = tl.load(L_base + rows, mask=row_ok, other=0.0)
            delta = tl.load(D_base + rows, mask=row_ok, other=0.0)
        else:
            qt = tl.load(q_base + rows[None, :] * HEAD_DIM + offs_d[:, None])
            do = tl.load(do_base + rows[:, None] * HEAD_DIM + offs_d[None, :])
            lse = tl.load(L_base + rows)
            delta = tl.load(D_base + rows)
        st = tl.dot(k, qt, out_dtype=ACC) * qk_scale  # S^T (BLOCK_N, BLOCK_M) in log2 units
        pt = tl.math.exp2(st - (lse * 1.4426950408889634)[None, :])
        if MASKED:
            keep = row_ok[None, :]
            if CAUSAL:
                keep = keep & (rows[None, :] >= offs_n[:, None])
            pt = tl.where(keep, pt, 0.0)
        dv = tl.dot(pt.to(do.dtype), do, dv, out_dtype=ACC)
        dpt = tl.dot(v, tl.trans(do), out_dtype=ACC)  # dP^T = V dO^T
        dst = pt * (dpt - delta[None, :])  # dS^T, without the softmax scale (applied once at the end)
        dk = tl.dot(dst.to(qt.dtype), tl.trans(qt), dk, out_dtype=ACC)
    return dk, dv


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, L, Delta, DK, DV, sm_scale, N_Q, N_K,
                     HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     CAUSAL: tl.constexpr):
    """One program per (key block, batch*head); Q, K, V, dO contiguous (batch*heads, N, d)."""
    ACC: tl.constexpr = tl.float64 if Q.dtype.element_ty == tl.float64 else tl.float32
    start_n = tl.program_id(0) * BLOCK_N
    bh = tl.program_id(1).to(tl.int64)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    kv_ptrs = bh * N_K * HEAD_DIM + offs_n[:, None] * HEAD_DIM + offs_d[None, :]
    col_ok = offs_n[:, None] < N_K
    k = tl.load(K + kv_ptrs, mask=col_ok, other=0.0)
    v = tl.load(V + kv_ptrs, mask=col_ok, other=0.0)
    q_base = Q + bh * N_Q * HEAD_DIM
    do_base = DO + bh * N_Q * HEAD_DIM
    L_base = L + bh * N_Q
    D_base = Delta + bh * N_Q
    qk_scale = sm_scale * 1.4426950408889634
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=ACC)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=ACC)
    full_end = (N_Q // BLOCK_M) * BLOCK_M
    if CAUSAL:
        # queries before start_n see none of these keys; blocks starting at or after mid see all
        lo = (start_n // BLOCK_M) * BLOCK_M
        mid = tl.minimum(tl.cdiv(start_n + BLOCK_N, BLOCK_M) * BLOCK_M, N_Q)
    else:
        lo = 0
        mid = 0
    dk, dv = _bwd_dkdv_steps(dk, dv, k, v, q_base, do_base, L_base, D_base, lo, mid, offs_n, offs_d, N_Q,
                             qk_scale, ACC, HEAD_DIM, BLOCK_M, CAUSAL, True)
    dk, dv = _bwd_dkdv_steps(dk, dv, k, v, q_base, do_base, L_base, D_base, mid, full_end, offs_n, offs_d,
                             N_Q, qk_scale, ACC, HEAD_DIM, BLOCK_M, CAUSAL, False)
    dk, dv = _bwd_dkdv_steps(dk, dv, k, v, q_base, do_base, L_base, D_base, tl.maximum(mid, full_end), N_Q,
                             offs_n, offs_d, N_Q, qk_scale, ACC, HEAD_DIM, BLOCK_M, CAUSAL, True)
    tl.store(DK + kv_ptrs, (dk * sm_scale).to(DK.dtype.element_ty), mask=col_ok)
    tl.store(DV + kv_ptrs, dv.to(DV.dtype.element_ty), mask=col_ok)


@triton.jit
def _bwd_dq_steps(dq, q, do, lse2, delta, k_base, v_base, start, end, offs_m, offs_d, N_K, qk_scale,
                  ACC: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
                  MASKED: tl.constexpr):
    """Accumulate dQ += dS K over key blocks [start, end), P recomputed from Q, K and the lse."""
    offs_nb = tl.arange(0, BLOCK_N)
    for start_n in range(start, end, BLOCK_N):
        cols = start_n + offs_nb
        if MASKED:
            col_ok = cols < N_K
            kt = tl.load(k_base + cols[None, :] * HEAD_DIM + offs_d[:, None], mask=col_ok[None, :], other=0.0)
            vt = tl.load(v_base + cols[None, :] * HEAD_DIM + offs_d[:, None], mask=col_ok[None, :], other=0.0)
        else:
            kt = tl.load(k_base + cols[None, :] * HEAD_DIM + offs_d[:, None])
            vt = tl.load(v_base + cols[None, :] * HEAD_DIM + offs_d[:, None])
        s = tl.dot(q, kt, out_dtype=ACC) * qk_scale
        p = tl.math.exp2(s - lse2[:, None])
        if MASKED:
            keep = col_ok[None, :]
            if CAUSAL:
                keep = keep & (offs_m[:, None] >= cols[None, :])
            p = tl.where(keep, p, 0.0)
        dp = tl.dot(do, vt, out_dtype=ACC)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(kt.dtype), tl.trans(kt), dq, out_dtype=ACC)
    return dq


@triton.jit
def _bwd_dq_kernel(Q, K, V, DO, L, Delta, DQ, sm_scale, N_Q, N_K,
                   HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr):
    """One program per (query block, batch*head); same block split as the forward."""
    ACC: tl.constexpr = tl.float64 if Q.dtype.element_ty == tl.float64 else tl.float32
    start_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    ptrs = bh * N_Q * HEAD_DIM + offs_m[:, None] * HEAD_DIM + offs_d[None, :]
    row_ok = offs_m < N_Q
    q = tl.load(Q + ptrs, mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + ptrs, mask=row_ok[:, None], other=0.0)
    lse2 = tl.load(L + bh * N_Q + offs_m, mask=row_ok, other=0.0) * 1.4426950408889634
    delta = tl.load(Delta + bh * N_Q + offs_m, mask=row_ok, other=0.0)
    k_base = K + bh * N_K * HEAD_DIM
    v_base = V + bh * N_K * HEAD_DIM
    qk_scale = sm_scale * 1.4426950408889634
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=ACC)
    full_end, hi = _key_range(start_m, N_K, CAUSAL, BLOCK_M, BLOCK_N)
    dq = _bwd_dq_steps(dq, q, do, lse2, delta, k_base, v_base, 0, full_end, offs_m, offs_d, N_K, qk_scale,
                       ACC, HEAD_DIM, BLOCK_N, CAUSAL, False)
    dq = _bwd_dq_steps(dq, q, do, lse2, delta, k_base, v_base, full_end, hi, offs_m, offs_d, N_K, qk_scale,
                       ACC, HEAD_DIM, BLOCK_N, CAUSAL, True)
    tl.store(DQ + ptrs, (dq * sm_scale).to(DQ.dtype.element_ty), mask=row_ok[:, None])
